"""The plan model of a `kind: backfill` step."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airflow_migrate_provider.plan.base import (
    QUALIFIED_NAME,
    StrictModel,
    _identifier,
    key_columns,
    one_or_many,
    table_name,
)


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
            if name is not None and not QUALIFIED_NAME.fullmatch(name):
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

    _listify_key = field_validator("key", mode="before")(one_or_many)
    _target_shape = field_validator("target")(table_name)
    _key_shape = field_validator("key")(key_columns)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        return _identifier("step_id", v)

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
