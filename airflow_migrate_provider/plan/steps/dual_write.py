"""The plan model of a `kind: dual_write` step: capture changes on the old table, copy its history, replay."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airflow_migrate_provider.plan.base import (
    COLUMN_NAME,
    StrictModel,
    _identifier,
    key_columns,
    one_or_many,
    table_name,
)
from airflow_migrate_provider.plan.steps.backfill import (
    BackfillPhases,
    BackfillSource,
    BackfillStep,
    BatchSize,
    ThrottleRule,
)


class DualWriteSource(StrictModel):
    """The old table the application keeps writing while the step runs."""

    table: str = Field(description="The old table, optionally schema-qualified (`app.users`). It must have a "
                       "primary key: captured changes name rows by it.")
    filter: str | None = Field(default=None, description="SQL condition on old rows: only matching rows live in "
                               "the new table (a row that stops matching is deleted there by the replay).")

    _table_shape = field_validator("table")(table_name)


class ReplaySettings(StrictModel):
    """How captured changes are replayed into the new table."""

    batch_changes: int = Field(default=5_000, ge=1, le=1_000_000,
                               description="Captured changes replayed per batch: one target transaction with its "
                               "checkpoint.")


class CatchUpSettings(StrictModel):
    """When the new table counts as caught up with the old one (the catch-up sensor's threshold)."""

    max_lag_changes: int = Field(default=100, ge=0, description="At most this many captured changes not yet "
                                 "replayed.")
    max_lag_seconds: float = Field(default=30.0, ge=0, description="The oldest change not yet replayed is at most "
                                   "this old.")
    poll_seconds: float = Field(default=5.0, gt=0, le=3600, description="Time between rounds while waiting "
                                "(deferred on the triggerer, no worker slot held).")
    timeout_minutes: float = Field(default=120.0, gt=0, le=7 * 24 * 60, description="Fail the step (and roll "
                                   "back) if the lag is still over the threshold after this long.")


class DualWriteStep(StrictModel):
    """Move a table to a new layout (or schema, or database) while the application keeps writing to it.

    Tasks: ``capture`` installs triggers on the old table that record every insert, update and delete in a
    change table; ``start`` / ``copy_chunk`` copy the history like a backfill; ``replay`` applies the captured
    changes to the new table; ``catch_up`` waits, deferred, replaying, until the lag is under the threshold.
    The ``cutover`` step that names this one switches the application over. Rolling back drops the capture
    and empties the new table."""

    kind: Literal["dual_write"] = Field(description="`dual_write`.")
    id: str = Field(description="Unique step id within the plan: letters, digits and _ (max 63).")
    description: str = Field(default="", description="What the step does, shown in the task's docs.")
    source: DualWriteSource = Field(description="The old table (on the plan's source connection).")
    target: str = Field(description="The new table (on the plan's target connection). It must exist, be empty "
                        "when the step starts, and have a primary key or unique index on `key`.")
    key: list[str] = Field(min_length=1, description="Key column(s) of the new table, unique in both tables. A "
                           "single name is accepted. Each must come from a plain old-table column.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="New-table column → SQL expression on the old table (the transform), as in a backfill. "
        "Columns not listed are copied from the old column of the same name.")
    reverse_columns: dict[str, str] = Field(
        default_factory=dict,
        description="Old-table column → SQL expression on the new table: how writes made on the new side after "
        "the cutover are replayed back when the run rolls back. Needed for every old column that `columns` "
        "transforms or renames (renamed key columns are inferred).")
    chunks: int = Field(default=1, ge=1, le=256, description="Split the history copy into this many key ranges, "
                        "one Airflow mapped task each (needs an integer first key column).")
    batch: BatchSize = Field(default_factory=BatchSize, description="History copy batch sizing.")
    throttle: list[ThrottleRule] = Field(default_factory=list, description="Checked before every history batch.")
    replay: ReplaySettings = Field(default_factory=ReplaySettings, description="Replay batching.")
    catch_up: CatchUpSettings = Field(default_factory=CatchUpSettings, description="The catch-up threshold.")
    tags: list[str] = Field(default_factory=list, description="Free-form labels.")

    _listify_key = field_validator("key", mode="before")(one_or_many)
    _target_shape = field_validator("target")(table_name)
    _key_shape = field_validator("key")(key_columns)

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        return _identifier("step_id", v)

    @field_validator("columns", "reverse_columns")
    @classmethod
    def _column_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            if not COLUMN_NAME.fullmatch(name):
                raise PydanticCustomError("column_name", "'{name}' is not a column name", {"name": name})
        return v

    @model_validator(mode="after")
    def _key_from_plain_columns(self) -> DualWriteStep:
        for name in self.key:
            expr = self.columns.get(name, name)
            if not COLUMN_NAME.fullmatch(expr.strip()):
                raise PydanticCustomError(
                    "capture_key", "step '{step}': key column '{key}' is computed (`{expr}`); captured changes name "
                    "rows by old-table columns, so each key column must come from one plain old column",
                    {"step": self.id, "key": name, "expr": expr})
        return self

    # -- derived steps ------------------------------------------------------------------------------
    def source_key(self) -> list[str]:
        """The old table's columns that feed the key, in key order."""
        return [self.columns.get(k, k).strip() for k in self.key]

    def history_step(self) -> BackfillStep:
        """The history copy, as the backfill engine runs it (changes after capture began are the replay's)."""
        return BackfillStep(kind="backfill", id=self.id, description=self.description,
                            source=BackfillSource(table=self.source.table, filter=self.source.filter),
                            target=self.target, columns=dict(self.columns), key=list(self.key),
                            append_only=True, batch=self.batch, chunks=self.chunks, throttle=list(self.throttle),
                            phases=BackfillPhases(recent=False, final_sync=False))

    def reverse_step(self) -> BackfillStep:
        """New table → old table: how writes made after the cutover go back on rollback."""
        columns = {src: tgt for tgt, src in zip(self.key, self.source_key(), strict=True) if src != tgt}
        columns.update(self.reverse_columns)
        return BackfillStep(kind="backfill", id=self.id, source=BackfillSource(table=self.target),
                            target=self.source.table, columns=columns, key=self.source_key(), append_only=True,
                            batch=BatchSize(rows=self.replay.batch_changes, seconds=None),
                            phases=BackfillPhases(recent=False, final_sync=False))
