"""The migration plan model: the single source of truth for the DAG builder, CLI, linter and docs.

Steps are a discriminated union on ``kind`` so later step kinds (backfill, verify, dual_write,
cutover) slot in beside ``schema`` without touching the rest of the model. ``kind`` defaults to
``schema`` so the common case stays short in YAML.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

IDENTIFIER = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")
CONN_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,250}$")


class StrictModel(BaseModel):
    """Base for every plan object: unknown keys are errors, values are not coerced across types."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


SqlList = Annotated[
    list[Annotated[str, Field(min_length=1)]],
    Field(description="One SQL text or a list of them; each may hold several statements."),
]


def _identifier(error_type: str, value: str) -> str:
    """Ids become Airflow task/dag ids and ledger keys: keep them plain."""
    if not IDENTIFIER.match(value):
        raise PydanticCustomError(
            error_type, "{what} '{value}' must start with a letter and use only letters, digits and _ "
            "(max 63 characters)", {"what": error_type.replace("_", " "), "value": value}
        )
    return value


def _sql_list(value: Any) -> Any:
    """Accept a single SQL string where a list of SQL strings is expected."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise PydanticCustomError("sql_list", "must be SQL text or a list of SQL texts")
    return value


class Connections(StrictModel):
    """Which Airflow connections the plan migrates between."""

    target: str = Field(description="Airflow connection id of the database being migrated.")
    source: str | None = Field(
        default=None,
        description="Airflow connection id of the source database (backfill and verify steps). "
        "Defaults to the target.",
    )

    @field_validator("target", "source")
    @classmethod
    def _conn_id_shape(cls, v: str | None) -> str | None:
        if v is not None and not CONN_ID.match(v):
            raise PydanticCustomError(
                "conn_id", "'{value}' is not a valid Airflow connection id (letters, digits, _ . -)", {"value": v}
            )
        return v

    @property
    def source_or_target(self) -> str:
        return self.source or self.target

    @property
    def separate_source(self) -> str | None:
        """The source connection id when it is not the target's (the only case needing its own checks)."""
        return self.source if self.source not in (None, self.target) else None


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


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("kind", "schema")
        return kind if isinstance(kind, str) else None
    return getattr(value, "kind", None)


# Add new step kinds here as `Annotated[BackfillStep, Tag("backfill")]`, ...
Step = Annotated[Union[Annotated[SchemaStep, Tag("schema")]], Discriminator(_step_kind)]  # noqa: UP007


class Plan(StrictModel):
    """A migration plan: what to migrate, where, in which ordered steps."""

    id: str = Field(description="Plan id; also the Airflow dag_id. Letters, digits and _ (max 63).")
    description: str = Field(default="", description="What the migration is for; shown in the DAG docs.")
    connections: Connections = Field(description="Airflow connection ids of the target (and source).")
    steps: list[Step] = Field(min_length=1, description="Ordered steps; applied first to last.")
    tags: list[str] = Field(default_factory=list, description="Airflow DAG tags.")
    lock_ttl_seconds: int = Field(
        default=600, ge=30, le=86_400,
        description="How long the run lock stays valid without renewal; a dead run's lock expires after it.",
    )
    retries: int = Field(
        default=1, ge=0, le=10,
        description="Airflow retries per task, used only for transient errors (connection lost, lock timeout).",
    )
    retry_delay_seconds: int = Field(default=30, ge=0, le=3600, description="Delay between those retries.")

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        return _identifier("plan_id", v)

    @model_validator(mode="after")
    def _unique_step_ids(self) -> Plan:
        duplicates = duplicate_step_ids([s.model_dump() for s in self.steps])
        if duplicates:
            index, step_id, first = duplicates[0]
            raise PydanticCustomError(
                DUPLICATE_STEP_ID,
                "duplicate step id '{step}' (steps[{index}] repeats steps[{first}])",
                {"step": step_id, "index": index, "first": first},
            )
        return self

    def step(self, step_id: str) -> SchemaStep:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(f"plan '{self.id}' has no step '{step_id}'")


DUPLICATE_STEP_ID = "duplicate_step_id"
STEP_KINDS = frozenset({"schema"})


def duplicate_step_ids(raw_steps: Any) -> list[tuple[int, str, int]]:
    """(index, id, index of first occurrence) for every repeated step id in raw step dicts."""
    if not isinstance(raw_steps, list):
        return []
    seen: dict[str, int] = {}
    found = []
    for index, raw in enumerate(raw_steps):
        step_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(step_id, str):
            continue
        if step_id in seen:
            found.append((index, step_id, seen[step_id]))
        else:
            seen[step_id] = index
    return found
