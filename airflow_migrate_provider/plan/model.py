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
QUALIFIED_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
COLUMN_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
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


class BackfillSource(StrictModel):
    """Where a backfill reads: a table (fastest, may transform with `columns`) or any SELECT."""

    table: str | None = Field(default=None, description="Source table, optionally schema-qualified "
                              "(`app.users`).")
    query: str | None = Field(default=None, description="A SELECT whose output columns are named like the "
                              "target's columns; used as a subquery. Use `table` where you can: it is faster.")
    filter: str | None = Field(default=None, description="SQL condition on source rows: only matching rows "
                               "are copied and counted (e.g. `deleted_at IS NULL`).")
    lock_tables: list[str] = Field(
        default_factory=list,
        description="Tables locked against writes during the final sync. Defaults to `table`; required "
        "with `query` when the final sync is enabled.",
    )

    @model_validator(mode="after")
    def _table_or_query(self) -> BackfillSource:
        if (self.table is None) == (self.query is None):
            raise PydanticCustomError("source_shape", "give exactly one of `table` or `query`")
        for name in [self.table, *self.lock_tables]:
            if name is not None and not QUALIFIED_NAME.match(name):
                raise PydanticCustomError("table_name", "'{name}' is not a table name (name or schema.name)",
                                          {"name": name})
        return self


class BatchSize(StrictModel):
    """How much one batch copies: one target transaction that writes the rows and the checkpoint."""

    rows: int = Field(default=50_000, ge=1, le=10_000_000,
                      description="Rows in the first batch, and the most any batch holds when `seconds` "
                      "is not set.")
    seconds: float | None = Field(
        default=2.0, gt=0, le=600,
        description="Grow or shrink batches so each takes about this long (the per-batch commit and "
        "checkpoint then cost little). `null` keeps every batch at `rows`.",
    )
    max_rows: int = Field(default=1_000_000, ge=1, le=100_000_000,
                          description="Upper bound for a batch grown by `seconds` (bounds memory on the "
                          "generic path and the work lost to a crash).")


class ThrottleRule(StrictModel):
    """A metric checked before every batch; the copy pauses while it is over `max`."""

    name: str = Field(description="Shown in log lines about pauses.")
    query: str = Field(min_length=1, description="SQL returning one number (e.g. replica lag in seconds, "
                       "active connections).")
    max: float = Field(description="Pause while the query returns more than this.")
    database: Literal["source", "target"] = Field(
        default="source", description="Which database runs the query (the source, or the target)."
    )
    pause_seconds: float = Field(default=1.0, gt=0, le=600,
                                 description="First pause; doubles while still over, up to "
                                 "`max_pause_seconds`.")
    max_pause_seconds: float = Field(default=60.0, gt=0, le=3600, description="Longest single pause.")
    give_up_after_seconds: float = Field(
        default=3600.0, gt=0, le=7 * 86_400,
        description="Fail the task (it can be cleared later) after pausing this long in total for one "
        "batch.",
    )
    defer_after_seconds: float | None = Field(
        default=None, gt=0,
        description="Under Airflow, once a pause has lasted this long, free the worker slot: the task "
        "defers until the metric is back under `max`, then resumes from its checkpoint.",
    )


class BackfillPhases(StrictModel):
    """Which of the three phases run; the historical phase always does."""

    recent: bool = Field(default=True, description="Phase 2: rows inserted or changed since phase 1 began, "
                         "in smaller batches, while the source stays live.")
    final_sync: bool = Field(default=True, description="Phase 3: the last delta under a brief write lock on "
                             "the source, then row counts source vs target.")


class BackfillStep(StrictModel):
    """Copy a large table from the source into a target table, in three phases, resumable per batch."""

    kind: Literal["backfill"] = Field(description="`backfill`.")
    id: str = Field(description="Unique step id within the plan: letters, digits and _ (max 63).")
    description: str = Field(default="", description="What the step does, shown in the task's docs.")
    source: BackfillSource = Field(description="The source table or SELECT (on the plan's source "
                                   "connection).")
    target: str = Field(description="Target table (on the plan's target connection). It must exist and be "
                        "empty when the step starts, and have a primary key or unique index on `key`.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Target column → source SQL expression, for renamed or transformed columns (e.g. "
        "`prefs: json_build_object('theme', theme)`). Target columns not listed are copied from the "
        "source column of the same name.",
    )
    key: list[str] = Field(min_length=1, description="Key column(s) (target names), unique in source and "
                           "target; batches are key ranges. A single name is accepted.")
    watermark: str | None = Field(
        default=None,
        description="Source column (or expression) that increases whenever a row is inserted or updated, "
        "e.g. `updated_at`. Phases 2 and 3 copy rows whose watermark moved. Required when those phases "
        "run, unless `append_only` is true.",
    )
    watermark_lag_seconds: int = Field(
        default=60, ge=0, le=86_400,
        description="Timestamp watermarks: also re-copy rows up to this much older than the cutoff, for "
        "transactions that stamped a row before the cutoff but committed after it.",
    )
    append_only: bool = Field(
        default=False,
        description="The source only gets inserts (no updates): phases 2 and 3 copy rows with keys above "
        "the previous high-water mark and need no watermark.",
    )
    batch: BatchSize = Field(default_factory=BatchSize, description="Batch sizing.")
    chunks: int = Field(default=1, ge=1, le=256,
                        description="Split phase 1 into this many key ranges, one Airflow mapped task each. "
                        "More than 1 needs an integer first key column.")
    throttle: list[ThrottleRule] = Field(default_factory=list, description="Checked before every batch.")
    phases: BackfillPhases = Field(default_factory=BackfillPhases, description="Which phases run.")
    max_lock_seconds: float = Field(
        default=10.0, gt=0, le=3600,
        description="Fail the step (and roll back) if the final sync holds the source lock longer.",
    )
    tags: list[str] = Field(default_factory=list, description="Free-form labels.")

    @field_validator("key", mode="before")
    @classmethod
    def _listify_key(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        return _identifier("step_id", v)

    @field_validator("target")
    @classmethod
    def _target_shape(cls, v: str) -> str:
        if not QUALIFIED_NAME.match(v):
            raise PydanticCustomError("table_name", "'{name}' is not a table name (name or schema.name)",
                                      {"name": v})
        return v

    @field_validator("key")
    @classmethod
    def _key_shape(cls, v: list[str]) -> list[str]:
        for name in v:
            if not COLUMN_NAME.match(name):
                raise PydanticCustomError("column_name", "'{name}' is not a column name", {"name": name})
        if len(set(v)) != len(v):
            raise PydanticCustomError("key_repeats", "key columns repeat: {key}", {"key": v})
        return v

    @model_validator(mode="after")
    def _phases_need_watermark(self) -> BackfillStep:
        live = self.phases.recent or self.phases.final_sync
        if live and self.watermark is None and not self.append_only:
            raise PydanticCustomError(
                "watermark_required",
                "step '{step}' runs the recent/final_sync phases but has no `watermark`: without one, rows "
                "updated after they were copied would be missed. Name a column that changes on every "
                "insert and update (e.g. `watermark: updated_at`), or declare `append_only: true` if the "
                "source never updates rows",
                {"step": self.id},
            )
        if self.phases.final_sync and self.source.query is not None and not self.source.lock_tables:
            raise PydanticCustomError(
                "lock_tables_required",
                "step '{step}' reads a `query` and runs the final sync: list the tables to lock against "
                "writes in `source.lock_tables`",
                {"step": self.id},
            )
        return self


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("kind", "schema")
        return kind if isinstance(kind, str) else None
    return getattr(value, "kind", None)


# Add new step kinds here as `Annotated[XStep, Tag("x")]` and to STEP_KINDS.
Step = Annotated[
    Union[Annotated[SchemaStep, Tag("schema")], Annotated[BackfillStep, Tag("backfill")]],  # noqa: UP007
    Discriminator(_step_kind),
]


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

    def step(self, step_id: str) -> SchemaStep | BackfillStep:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(f"plan '{self.id}' has no step '{step_id}'")


DUPLICATE_STEP_ID = "duplicate_step_id"
STEP_KINDS = frozenset({"schema", "backfill"})


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
