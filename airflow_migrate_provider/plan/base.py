"""What every plan object shares: strict models, id and SQL-list validation."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError

# Use these with .fullmatch() only: `$` (and .match) would let a trailing newline through ("users\n").
IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")
QUALIFIED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*(?:\.[A-Za-z_][A-Za-z0-9_$]*)?")
COLUMN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
CONN_ID = re.compile(r"[A-Za-z0-9_.\-]{1,250}")
TAG_MAX_CHARS = 100  # Airflow's limit for a DAG tag (airflow.sdk.definitions.dag.TAG_MAX_LEN)


class StrictModel(BaseModel):
    """Base for every plan object: unknown keys are errors, values are not coerced across types, and numbers are
    finite (``.inf``/``.nan`` would not survive the plan's trip through JSON to the tasks)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, defer_build=True, allow_inf_nan=False)


SqlList = Annotated[
    list[Annotated[str, Field(min_length=1)]],
    Field(description="One SQL text or a list of them; each may hold several statements."),
]


def _identifier(error_type: str, value: str) -> str:
    """Ids become Airflow task/dag ids and ledger keys: keep them plain."""
    if not IDENTIFIER.fullmatch(value):
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


def table_name(value: str) -> str:
    """A table name as plans give it: ``name`` or ``schema.name`` (the whole text must match)."""
    if not QUALIFIED_NAME.fullmatch(value):
        raise PydanticCustomError("table_name", "'{name}' is not a table name (name or schema.name)", {"name": value})
    return value


def key_columns(value: list[str]) -> list[str]:
    """Key column names: plain names, none repeated."""
    for name in value:
        if not COLUMN_NAME.fullmatch(name):
            raise PydanticCustomError("column_name", "'{name}' is not a column name", {"name": name})
    if len(set(value)) != len(value):
        raise PydanticCustomError("key_repeats", "key columns repeat: {key}", {"key": value})
    return value


def one_or_many(value: Any) -> Any:
    """Accept a single name where a list of names is expected."""
    return [value] if isinstance(value, str) else value
