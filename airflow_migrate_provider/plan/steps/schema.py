"""The plan model of a `kind: schema` step."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airflow_migrate_provider.plan.base import SqlList, StrictModel, _identifier, _sql_list


class SchemaStep(StrictModel):
    """A schema (DDL/DML) step: ``up`` applies it, ``down`` reverts it, ``verify`` proves it held."""

    kind: Literal["schema"] = Field(default="schema", description="The step kind; `schema` may be omitted.")
    id: str = Field(description="Unique step id within the plan: letters, digits and _ (max 63).")
    description: str = Field(default="", description="What the step does, shown in the task's docs.")
    up: SqlList = Field(min_length=1, description="SQL that applies the step.")
    down: SqlList = Field(
        default_factory=list,
        description="SQL that reverts the step. Required unless the step is `irreversible`.",
    )
    verify: SqlList = Field(
        min_length=1,
        description="Queries run after `up`, in the same transaction where the database allows it. Each "
        "must return a row whose first column is truthy; otherwise the step fails and is rolled back.",
    )
    verify_down: SqlList = Field(
        default_factory=list,
        description="Queries run after `down` to prove the revert held (same truthiness rule as `verify`).",
    )
    transactional: bool | None = Field(
        default=None,
        description="Run up/verify (and down/verify_down) in one transaction. Defaults to true where the "
        "database has transactional DDL (PostgreSQL, SQLite) and false elsewhere (MySQL/MariaDB).",
    )
    irreversible: bool = Field(
        default=False,
        description="A point of no return: the step has no `down`, and automatic rollback stops here.",
    )
    tags: list[str] = Field(default_factory=list, description="Free-form labels.")

    _listify = field_validator("up", "down", "verify", "verify_down", mode="before")(_sql_list)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        return _identifier("step_id", v)

    @model_validator(mode="after")
    def _reversible_or_marked(self) -> SchemaStep:
        if not self.down and not self.irreversible:
            raise PydanticCustomError(
                "missing_down",
                "step '{step}' has no `down`: add the SQL that reverts it, or mark it `irreversible: true` "
                "(a point of no return; automatic rollback stops there)",
                {"step": self.id},
            )
        if self.down and self.irreversible:
            raise PydanticCustomError(
                "irreversible_with_down",
                "step '{step}' is marked `irreversible` but has a `down`: remove one of the two",
                {"step": self.id},
            )
        return self
