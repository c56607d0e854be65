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


class CompareSide(StrictModel):
    """One side of a verification: a table (optionally filtered) or a SELECT."""

    table: str | None = Field(default=None, description="Table name, optionally schema-qualified.")
    query: str | None = Field(default=None, description="A SELECT to compare instead of a table (row checks only).")
    filter: str | None = Field(default=None, description="SQL condition: only matching rows are compared.")

    @model_validator(mode="after")
    def _table_or_query(self) -> CompareSide:
        if (self.table is None) == (self.query is None):
            raise PydanticCustomError("side_shape", "give exactly one of `table` or `query`")
        if self.table is not None and not QUALIFIED_NAME.match(self.table):
            raise PydanticCustomError("table_name", "'{name}' is not a table name (name or schema.name)",
                                      {"name": self.table})
        return self


class ColumnTolerance(StrictModel):
    """How one column's values are normalized before source and target are compared."""

    numeric_scale: int | None = Field(default=None, ge=0, le=38, description="Round numbers to this many "
                                      "decimal places (12.5 = 12.50 = 12.499 at scale 2).")
    float_epsilon: float | None = Field(default=None, gt=0, description="Numbers this close are equal.")
    timestamp_precision: Literal["s", "ms", "us"] | None = Field(
        default=None, description="Truncate timestamps to seconds, milliseconds or microseconds.")
    time_zone: str | None = Field(default=None, description="Compare timestamps as instants; naive values are "
                                  "taken to be in this zone (e.g. `UTC`, `Europe/Paris`).")
    trim: bool = Field(default=False, description="Ignore trailing spaces.")
    case_insensitive: bool = Field(default=False, description="Compare text without regard to case.")
    as_json: bool = Field(default=False, description="Compare as JSON: key order and whitespace do not matter.")


VerifyCheck = Literal["row_counts", "schemas", "indexes", "constraints", "data_sample", "checksums"]
ALL_CHECKS: tuple[str, ...] = ("row_counts", "schemas", "indexes", "constraints", "data_sample", "checksums")


class ExpectedDifferences(StrictModel):
    """Intended structural changes, by the ids the report prints (e.g. `column preferences: only in target`)."""

    schemas: list[str] = Field(default_factory=list, description="Accepted schema differences.")
    indexes: list[str] = Field(default_factory=list, description="Accepted index differences.")
    constraints: list[str] = Field(default_factory=list, description="Accepted constraint differences.")


class ExpectationSuite(StrictModel):
    """A Great Expectations 1.x suite run on the target table; a failed expectation fails the step."""

    table: str | None = Field(default=None, description="Table to validate; defaults to the target table.")
    suite: list[dict[str, Any]] | None = Field(
        default=None, description="Inline expectations, GX's shape: `{type: expect_column_values_to_not_be_null, "
        "kwargs: {column: email}}`.")
    path: str | None = Field(default=None, description="A suite JSON file as GX writes it (relative paths are "
                             "taken from the plan file's folder).")

    @model_validator(mode="after")
    def _suite_or_path(self) -> ExpectationSuite:
        if (self.suite is None) == (self.path is None):
            raise PydanticCustomError("suite_shape", "give exactly one of `suite` or `path`")
        return self


class BenchmarkQuerySpec(StrictModel):
    """A query timed on the source and on the target."""

    name: str = Field(description="Shown in the report.")
    sql: str = Field(min_length=1, description="The query (run on both sides unless `target_sql` is given).")
    target_sql: str | None = Field(default=None, description="The target's version of the query, if it differs.")


class PerformanceSpec(StrictModel):
    """Benchmark queries run on source and target; the medians are compared."""

    queries: list[BenchmarkQuerySpec] = Field(min_length=1, description="Queries to time.")
    runs: int = Field(default=5, ge=1, le=1000, description="Timed runs per query and side (after warm-up).")
    warmup: int = Field(default=1, ge=0, le=100, description="Untimed runs first.")
    tolerance_pct: float = Field(default=10.0, ge=0, description="Allowed slowdown of the target's median, in %.")
    on_degradation: Literal["fail", "warn"] = Field(default="fail", description="Fail the step, or only warn.")


class VerifyStep(StrictModel):
    """Compare the source with the target (and/or validate the target); any check that does not hold fails
    the step, which sends the run to its rollback."""

    kind: Literal["verify"] = Field(description="`verify`.")
    id: str = Field(description="Unique step id within the plan: letters, digits and _ (max 63).")
    description: str = Field(default="", description="What the step checks, shown in the task's docs.")
    source: CompareSide | None = Field(default=None, description="On the plan's source connection (the target "
                                       "when it has none). Required by every check except `expectations`.")
    target: CompareSide = Field(description="On the plan's target connection.")
    key: list[str] = Field(default_factory=list, description="Key column(s), needed by `data_sample` and "
                           "`checksums`. A single name is accepted.")
    checks: list[VerifyCheck] = Field(
        default_factory=lambda: list(ALL_CHECKS),
        description="Which source-vs-target checks run (default: all six; structure checks need tables).")
    columns: dict[str, str] = Field(default_factory=dict, description="Target column → the source column or "
                                    "expression it must equal (renames, transforms); others compare by name.")
    tolerances: dict[str, ColumnTolerance] = Field(default_factory=dict,
                                                   description="Per target column normalization.")
    expected_differences: ExpectedDifferences = Field(default_factory=ExpectedDifferences,
                                                      description="Intended structural changes.")
    sample_size: int = Field(default=100, ge=1, le=1_000_000, description="Keys compared by `data_sample`.")
    segments: int = Field(default=64, ge=1, le=100_000, description="Key segments hashed by `checksums`.")
    expectations: ExpectationSuite | None = Field(default=None, description="A GX suite for the target.")
    performance: PerformanceSpec | None = Field(default=None, description="Compare query speed.")
    tags: list[str] = Field(default_factory=list, description="Free-form labels.")

    _listify_key = field_validator("key", mode="before")(
        classmethod(lambda cls, v: [v] if isinstance(v, str) else v))

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        return _identifier("step_id", v)

    @model_validator(mode="after")
    def _checks_have_what_they_need(self) -> VerifyStep:
        if self.checks and self.source is None:
            raise PydanticCustomError(
                "source_required", "step '{step}' runs {checks} but has no `source` to compare with; add `source`, "
                "or set `checks: []` to run only expectations/performance", {"step": self.id, "checks": self.checks})
        keyed = [c for c in self.checks if c in ("data_sample", "checksums")]
        if keyed and not self.key:
            raise PydanticCustomError("key_required", "step '{step}' runs {checks}, which need `key`",
                                      {"step": self.id, "checks": keyed})
        structural = [c for c in self.checks if c in ("schemas", "indexes", "constraints")]
        if structural and (self.target.table is None or (self.source is not None and self.source.table is None)):
            raise PydanticCustomError("tables_required", "step '{step}' runs {checks}, which compare tables: use "
                                      "`table` on both sides (or drop these checks)",
                                      {"step": self.id, "checks": structural})
        if not self.checks and self.expectations is None and self.performance is None:
            raise PydanticCustomError("nothing_to_verify", "step '{step}' checks nothing: give `checks`, "
                                      "`expectations` or `performance`", {"step": self.id})
        return self


class HealthMetricSpec(StrictModel):
    """One health metric, read from SQL or from an HTTP JSON endpoint."""

    name: str = Field(description="Metric name, e.g. `error_rate`, `latency_p95`.")
    sql: str | None = Field(default=None, description="A query returning one number.")
    url: str | None = Field(default=None, description="An http(s) URL returning JSON.")
    json_path: str | None = Field(default=None, description="Dot path to the number in the JSON (`errors.rate`).")

    @model_validator(mode="after")
    def _sql_or_url(self) -> HealthMetricSpec:
        if (self.sql is None) == (self.url is None):
            raise PydanticCustomError("metric_shape", "metric '{name}': give exactly one of `sql` or `url`",
                                      {"name": self.name})
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise PydanticCustomError("metric_url", "metric '{name}': `url` must be http(s)", {"name": self.name})
        return self


class HealthThresholdSpec(StrictModel):
    """When a metric means "roll back"."""

    metric: str = Field(description="The metric's name.")
    max: float | None = Field(default=None, description="Roll back when the metric is above this.")
    max_ratio_to_baseline: float | None = Field(
        default=None, gt=0, description="Roll back when the metric is above this multiple of its baseline "
        "(captured in preflight, before anything changes).")


class HealthGateStep(StrictModel):
    """Watch application health for a window; a breach fails the step, which rolls the run back."""

    kind: Literal["health_gate"] = Field(description="`health_gate`.")
    id: str = Field(description="Unique step id within the plan: letters, digits and _ (max 63).")
    description: str = Field(default="", description="What the gate protects, shown in the task's docs.")
    metrics: list[HealthMetricSpec] = Field(min_length=1, description="What to sample.")
    database: Literal["source", "target"] = Field(default="target", description="Where `sql` metrics run.")
    thresholds: list[HealthThresholdSpec] | None = Field(
        default=None, description="Rollback triggers. Default (the seed's): `error_rate` above 0.01, `latency_p95` "
        "above 2x its baseline, for whichever of the two metrics exist.")
    window_seconds: float = Field(default=300, gt=0, le=86_400, description="How long to watch.")
    interval_seconds: float = Field(default=15, gt=0, le=3600, description="Time between samples; the task "
                                    "defers in between, freeing its worker slot.")
    baseline_samples: int = Field(default=3, ge=1, le=100, description="Samples (medians) taken in preflight.")
    tags: list[str] = Field(default_factory=list, description="Free-form labels.")

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        return _identifier("step_id", v)

    @model_validator(mode="after")
    def _thresholds_name_metrics(self) -> HealthGateStep:
        names = {m.name for m in self.metrics}
        unknown = [t.metric for t in self.thresholds or [] if t.metric not in names]
        if unknown:
            raise PydanticCustomError("unknown_metric", "thresholds name unknown metric(s) {unknown}; metrics: "
                                      "{names}", {"unknown": unknown, "names": sorted(names)})
        if not self.effective_thresholds():
            raise PydanticCustomError(
                "no_thresholds", "health gate '{step}' has no rollback trigger: name metrics `error_rate` / "
                "`latency_p95` (default thresholds) or give `thresholds`", {"step": self.id})
        return self

    def effective_thresholds(self) -> list[HealthThresholdSpec]:
        if self.thresholds is not None:
            return list(self.thresholds)
        names = {m.name for m in self.metrics}
        defaults = [HealthThresholdSpec(metric="error_rate", max=0.01),
                    HealthThresholdSpec(metric="latency_p95", max_ratio_to_baseline=2.0)]
        return [t for t in defaults if t.metric in names]


BACKUP_PREFIX = "airflow_migrate_"  # the engine's own tables (ledger, snapshots): never backed up or restored


class BackupSpec(StrictModel):
    """What to back up before the first step changes data, and how. Rollback restores from it where a
    step's down SQL fails or leaves a table different from its pre-run state."""

    strategy: Literal["snapshot", "pg_dump", "sqlite_backup"] = Field(
        description="`snapshot`: a copy of each table inside the database (every dialect). `pg_dump`: a "
        "custom-format file of the tables (PostgreSQL; needs `pg_dump`/`pg_restore` on the worker). "
        "`sqlite_backup`: a copy of the database file through SQLite's online backup API.")
    tables: list[str] | Literal["auto"] = Field(
        default="auto",
        description="Tables to back up, or `auto`: every table the steps write (found by parsing their `up` "
        "SQL and the backfill targets). Tables a step creates are recorded as absent: a restore drops them.")
    location: str | None = Field(
        default=None,
        description="Folder for `pg_dump`/`sqlite_backup` files. Default: `$AIRFLOW_MIGRATE_BACKUPS`, else "
        "`$AIRFLOW_HOME/migration_backups`. Checked for being writable, with free space for the tables, "
        "before anything is copied.")
    required: bool = Field(
        default=True,
        description="Refuse to run a data-changing step of the run unless this run's backup was made and "
        "verified.")
    lock_writes: bool = Field(
        default=False,
        description="Block writes to the tables while they are copied and checksummed, so a busy table "
        "backs up consistently. Without it, a table written meanwhile fails the backup's verification.")
    restore_on_difference: bool = Field(
        default=True,
        description="After the rollback's down SQL, restore every table whose content or definition still "
        "differs from the backup. `false`: report the differences and fail the rollback instead (for tables "
        "the application writes during the run, whose new rows a restore would drop).")
    keep_days_after_success: int | None = Field(
        default=None, ge=0, le=3650,
        description="Drop this plan's backups this many days after their run succeeded (at the next "
        "backup, or with `airflow-migrate backups prune`). Default: keep until pruned by hand.")

    @field_validator("tables")
    @classmethod
    def _table_names(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list):
            if not v:
                raise PydanticCustomError("backup_tables", "`tables` is empty: list tables or use `auto`")
            for name in v:
                if not QUALIFIED_NAME.match(name):
                    raise PydanticCustomError("table_name", "'{value}' is not a table name", {"value": name})
                if name.split(".")[-1].lower().startswith(BACKUP_PREFIX):
                    raise PydanticCustomError("backup_tables", "'{value}' is one of the engine's own tables; it "
                                              "is never backed up or restored", {"value": name})
        return v


class ApprovalSpec(StrictModel):
    """The approval hold before an irreversible step (Airflow's HITL `ApprovalOperator`)."""

    timeout_hours: float = Field(default=24, gt=0, le=24 * 30,
                                 description="How long to wait for an answer; no answer fails the run.")
    assigned_users: list[str] = Field(default_factory=list,
                                      description="Airflow user ids allowed to answer (default: anyone).")


class FaultInjection(StrictModel):
    """Test only: make one task fail right after it did its work, to prove the rollback restores."""

    task: str = Field(description="Task id to fail, e.g. `steps.move_preferences` or `backup.create`.")
    map_index: int | None = Field(default=None, description="For a mapped task: only this instance.")


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("kind", "schema")
        return kind if isinstance(kind, str) else None
    return getattr(value, "kind", None)


# Add new step kinds here as `Annotated[XStep, Tag("x")]` and to STEP_KINDS.
Step = Annotated[
    Union[  # noqa: UP007
        Annotated[SchemaStep, Tag("schema")],
        Annotated[BackfillStep, Tag("backfill")],
        Annotated[VerifyStep, Tag("verify")],
        Annotated[HealthGateStep, Tag("health_gate")],
    ],
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
    backup: BackupSpec | None = Field(
        default=None, description="Back up the tables the plan touches before any step changes data.")
    approval: ApprovalSpec = Field(
        default_factory=ApprovalSpec,
        description="The hold before each irreversible step: its verification gate passed, a person "
        "approves in the Airflow UI.")
    fault_injection: FaultInjection | None = Field(
        default=None, description="Test only: fail one task after its work, to exercise the rollback.")

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

    @property
    def irreversible_steps(self) -> list[str]:
        return [s.id for s in self.steps if isinstance(s, SchemaStep) and s.irreversible]

    def step(self, step_id: str) -> SchemaStep | BackfillStep | VerifyStep | HealthGateStep:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(f"plan '{self.id}' has no step '{step_id}'")


DUPLICATE_STEP_ID = "duplicate_step_id"
STEP_KINDS = frozenset({"schema", "backfill", "verify", "health_gate"})
READ_ONLY_KINDS = frozenset({"verify", "health_gate"})  # change nothing: nothing to revert or re-apply


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
