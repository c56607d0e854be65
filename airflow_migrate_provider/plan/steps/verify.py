"""The plan model of a `kind: verify` step."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airflow_migrate_provider.plan.base import QUALIFIED_NAME, StrictModel, _identifier


class CompareSide(StrictModel):
    """One side of a verification: a table (optionally filtered) or a SELECT."""

    table: str | None = Field(default=None, description="Table name, optionally schema-qualified.")
    query: str | None = Field(default=None, description="A SELECT to compare instead of a table (row checks only).")
    filter: str | None = Field(default=None, description="SQL condition: only matching rows are compared.")

    @model_validator(mode="after")
    def _table_or_query(self) -> CompareSide:
        if (self.table is None) == (self.query is None):
            raise PydanticCustomError("side_shape", "give exactly one of `table` or `query`")
        if self.table is not None and not QUALIFIED_NAME.fullmatch(self.table):
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
