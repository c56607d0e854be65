"""What every verification check shares: the two sides it compares, per-column comparison rules, and the
result it returns (a row of the report analysts read)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from typing import Any, Literal

from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.dialects import Dialect, dialect_of
from airflow_migrate_provider.errors import VerifySpecError as VerifySpecError  # re-exported: raised by checks

MAX_REPORTED = 100  # differences listed per check; totals are always exact


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a table (optionally filtered) or a query, on one database."""

    engine: Engine
    table: str | None = None
    query: str | None = None
    filter: str | None = None
    label: str = ""  # "source" / "target", for messages

    @cached_property
    def dialect(self) -> Dialect:
        """The side's database adapter: quoting, placeholders and everything else that differs."""
        return dialect_of(self.engine)

    @property
    def name(self) -> str:
        return self.table or "(query)"

    def from_clause(self) -> str:
        """``"schema"."table"`` or ``(<query>) AS q``, ready to follow FROM."""
        if self.table is not None:
            return self.dialect.ident(self.table)
        return f"({self.dialect.fragment(self.query or '')}) AS q"

    def where(self, *conditions: str | None) -> str:
        parts = [c for c in (*conditions, self.dialect.fragment(self.filter) if self.filter else None) if c]
        return f" WHERE {' AND '.join(f'({p})' for p in parts)}" if parts else ""


@dataclass(frozen=True)
class ColumnRule:
    """How values of one column are normalized before they are compared (declared per column in the plan)."""

    numeric_scale: int | None = None  # round decimals/floats to this many places
    float_epsilon: float | None = None  # numbers within this distance are equal
    timestamp_precision: Literal["s", "ms", "us"] | None = None  # truncate timestamps to this precision
    time_zone: str | None = None  # compare timestamps as instants; naive values are taken to be in this zone
    trim: bool = False  # ignore trailing spaces
    case_insensitive: bool = False
    json: bool = False  # compare as JSON (key order and whitespace do not matter)


@dataclass
class Difference:
    """One thing that differs: a key missing on one side, a changed value, a schema item."""

    kind: str  # missing_in_target | extra_in_target | changed | schema | index | constraint | count | ...
    key: Any = None
    column: str | None = None
    source: Any = None
    target: Any = None
    detail: str = ""

    def __str__(self) -> str:
        where = f" key {self.key!r}" if self.key is not None else ""
        col = f" column {self.column}" if self.column else ""
        values = (f": source {self.source!r}, target {self.target!r}"
                  if self.source is not None or self.target is not None else "")
        return f"{self.kind}{where}{col}{values}{(' — ' + self.detail) if self.detail else ''}"


@dataclass
class CheckResult:
    """The outcome of one check: one row of the report table, plus its differences (capped)."""

    check: str
    passed: bool
    source: str = ""  # short summary of what the source side showed (e.g. a row count)
    target: str = ""
    detail: str = ""
    seconds: float = 0.0
    differences: list[Difference] = field(default_factory=list)
    total_differences: int = 0
    warning: bool = False  # did not hold, but the plan says to warn rather than fail

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["differences"] = [{k: _plain(v) for k, v in asdict(d).items()} for d in self.differences]
        return data


def _plain(value: Any) -> Any:
    """Differences go to XCom/JSON: keep JSON types, show the rest as text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)
