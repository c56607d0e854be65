"""The checksums check bound to the real tables: which columns are compared, how each side reads them, and
whether rows are hashed in SQL (both sides one database whose dialect hashes rows exactly) or in Python."""


from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import exc as sa_exc

from airflow_migrate_provider.core.verify.base import (
    ColumnRule,
    Difference,
    Side,
    VerifySpecError,  # raised here for input that does not fit the tables (re-exported)
)
from airflow_migrate_provider.core.verify.structure import describe_columns
from airflow_migrate_provider.errors import db_error_line

FANOUT = 64  # at most this many parts per differing range and drill-down level
BATCH = 5_000  # rows per fetch when streaming
RANGES_PER_QUERY = 200  # key ranges per statement (bound parameters stay well under SQLite's limit)
MAX_KEY_SEGMENTS = 1_024  # segments between quantile keys: their bounds are bound parameters of one statement
_KEY_CLASS = {"integer": "number", "number": "number", "text": "text", "datetime": "datetime"}
Sums = dict[int, tuple[int, Any]]  # bucket → (rows, sum of row hashes)


@dataclass(frozen=True)
class Column:
    """One compared column: its target name, the SQL reading it on each side, and what each side holds."""

    name: str
    exprs: tuple[str, str]  # (source SQL, target SQL)
    categories: tuple[str | None, str | None]
    pg_types: tuple[str | None, str | None]  # typname on PostgreSQL sides
    rule: ColumnRule = field(default_factory=ColumnRule)

    @property
    def kind(self) -> str | None:
        """How values are read: a boolean or JSON side decides (PostgreSQL bool vs MySQL tinyint(1), jsonb vs
        MariaDB's JSON text); otherwise the target's category."""
        return next((c for c in ("bool", "json") if c in self.categories), self.categories[1] or self.categories[0])


@dataclass
class KeyRange:
    """Keys ``lo <= k < hi`` (None: unbounded) as Python key tuples, with each side's row count."""

    lo: tuple[Any, ...] | None
    hi: tuple[Any, ...] | None
    counts: tuple[int, int] = (0, 0)


@dataclass
class Job:
    """The check bound to the real tables."""

    sides: tuple[Side, Side]
    keys: list[Column]
    columns: list[Column]
    key_classes: list[str]  # number | text | datetime, per key column
    integer_key: bool
    sql_hash: tuple[str, str] | None = None  # each side's SQL hashing one row; None: hashed in Python
    python_reason: str = ""
    params: dict[str, Any] = field(default_factory=dict)  # values bound by that SQL (time zones, epsilons)

    def key_sql(self, i: int) -> list[str]:
        """Key expressions as compared and ordered (text in byte order)."""
        out = []
        for col in self.keys:
            out.append(self.sides[i].dialect.bytewise(col.exprs[i], col.pg_types[i], col.categories[i]))
        return out

    def fetch_sql(self, i: int) -> list[str]:
        """Raw values (keys first); JSON as text where the database has it, so numbers never pass through a
        float."""
        dialect = self.sides[i].dialect
        return [dialect.read_json_as_text(c.exprs[i]) if c.categories[i] == "json" else c.exprs[i]
                for c in (*self.keys, *self.columns)]


@dataclass
class Found:
    """Differences found so far: exact totals, the first ``cap`` listed."""

    cap: int
    listed: list[Difference] = field(default_factory=list)
    changed_rows: int = 0
    changed_values: int = 0
    missing: int = 0
    extra: int = 0

    @property
    def total(self) -> int:
        return self.changed_values + self.missing + self.extra

    def add(self, difference: Difference) -> None:
        if len(self.listed) < self.cap:
            self.listed.append(difference)

    def summary(self) -> str:
        values = f" ({self.changed_values:,} values)" if self.changed_values != self.changed_rows else ""
        return (f"{self.changed_rows:,} changed{values}, {self.missing:,} missing in target, "
                f"{self.extra:,} extra in target")


# ------------------------------------------------------------------------------------------------------
# binding the check to the real tables
# ------------------------------------------------------------------------------------------------------
def _resolve(source: Side, target: Side, key: list[str], columns: dict[str, str],
             rules: dict[str, ColumnRule]) -> Job:
    if not key:
        raise VerifySpecError("key: at least one key column is needed")
    sides = (source, target)
    available = [_available(s) for s in sides]
    for name in columns:
        if name not in available[1]:
            raise VerifySpecError(f"columns.{name}: {_where(target)} has no column '{name}' "
                                  f"(its columns: {', '.join(available[1])})")
    for k in key:
        for i, side in enumerate(sides):
            if k not in available[i] and not (i == 0 and k in columns):
                raise VerifySpecError(f"key: column '{k}' is not in {_where(side)}")
    names = key + [n for n in available[1] if n not in key and (n in columns or n in available[0])]
    for name, rule in rules.items():
        if name not in names or name in key:
            raise VerifySpecError(f"rules.{name}: " + ("keys are compared exactly" if name in key else
                                  f"not a compared column (not in {_where(target)}, or not in the source)"))
        if rule.time_zone and rule.time_zone.upper() != "UTC":
            try:
                ZoneInfo(rule.time_zone)
            except (ValueError, KeyError, OSError):
                raise VerifySpecError(f"rules.{name}.time_zone: unknown time zone '{rule.time_zone}'") from None
    src_exprs = {n: source.dialect.fragment(columns[n]) if n in columns and columns[n] not in available[0]
                 else source.dialect.ident(columns.get(n, n)) for n in names}
    types = [_describe(source, src_exprs, available[0], columns),
             _describe(target, {n: target.dialect.ident(n) for n in names}, available[1], {})]
    cols = [Column(n, (src_exprs[n], target.dialect.ident(n)), (types[0][n][0], types[1][n][0]),
                    (types[0][n][1], types[1][n][1]), rules.get(n, ColumnRule())) for n in names]
    classes = []
    for col in cols[:len(key)]:
        known = {_KEY_CLASS.get(c, "?") for c in col.categories if c}
        if "?" in known or len(known) > 1:
            shown = " and ".join(f"{s.label} {c or 'unknown'}" for s, c in zip(sides, col.categories, strict=True))
            raise VerifySpecError(f"key: column '{col.name}' has incompatible types ({shown}); a key must be "
                                  f"integers, decimals, text or timestamps alike on both sides")
        classes.append(known.pop() if known else "text")
    integer_key = len(key) == 1 and cols[0].categories == ("integer", "integer")
    job = Job(sides, cols[:len(key)], cols[len(key):], classes, integer_key)
    _choose_hashing(job)
    return job


def _where(side: Side) -> str:
    return f"{side.label} table '{side.table}'" if side.table else f"{side.label} query"


def _available(side: Side) -> dict[str, str | None]:
    """Column name → category (None: not known before reading) of a table or query."""
    if side.table is not None:  # as the schemas check describes them (declared types first)
        described = describe_columns(side.engine, side.table)
        if described is None:
            raise VerifySpecError(f"{side.label}.table: table '{side.table}' does not exist")
        return {c.name: c.category for c in described}
    try:
        return {n: t[0] for n, t in _probe(side, "*").items()}
    except sa_exc.SQLAlchemyError as exc:
        raise VerifySpecError(f"{side.label}.query: the query fails: {db_error_line(exc)}") from None


def _probe(side: Side, select: str, limit: int = 0) -> dict[str, tuple[str | None, str | None]]:
    """``SELECT <select> FROM <side> LIMIT 0`` → output name → (category, the database's type name).

    Where results carry no types (SQLite), with ``limit`` 1 the first row's Python types stand in for them."""
    with side.engine.connect() as conn:
        result = conn.exec_driver_sql(f"SELECT {select} FROM {side.from_clause()}"
                                      f"{side.where(None if limit else '1 = 0')} LIMIT {limit}")
        described = [(d[0], d[1]) for d in result.cursor.description] if result.cursor is not None else []
        first = result.first() or [None] * len(described)
        found = side.dialect.describe_type_codes(conn, [t for _, t in described]) if described else {}
        conn.rollback()
    out = {}
    for (name, oid), value in zip(described, first, strict=True):
        info = found.get(int(oid)) if oid is not None else None
        typname = info.typname if info else None
        category = side.dialect.result_category(info) if info else None
        if category is None and value is not None:
            category = {int: "integer", float: "number", str: "text", bytes: "binary"}.get(type(value))
        out[name] = (category, typname)
    return out


def _describe(side: Side, exprs: dict[str, str], available: dict[str, str | None],
              mapped: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """Each compared column's (category, PostgreSQL typname) on one side; proves the expressions run."""
    select = ", ".join(f"{e} AS {side.dialect.ident(f'c{i}')}" for i, e in enumerate(exprs.values()))
    try:
        probed = list(_probe(side, select).values())
    except sa_exc.SQLAlchemyError as exc:
        for name, expr in mapped.items():
            try:
                _probe(side, side.dialect.fragment(expr))
            except sa_exc.SQLAlchemyError as one:
                raise VerifySpecError(f"columns.{name}: '{expr}' does not work on the {side.label}: "
                                      f"{db_error_line(one)}") from None
        raise VerifySpecError(f"{side.label}: reading it fails: {db_error_line(exc)} (check its filter)") from None
    out = {}
    for (name, expr), (category, typname) in zip(exprs.items(), probed, strict=True):
        plain = mapped.get(name, name)
        out[name] = (category or (available.get(plain) if expr == side.dialect.ident(plain) else None), typname)
    if side.dialect.untyped_results and any(c is None for c, _ in out.values()):  # expressions, query columns
        sample = list(_probe(side, select, limit=1).values())
        out = {n: (c or sample[i][0], t) for i, (n, (c, t)) in enumerate(out.items())}
    return out


# ------------------------------------------------------------------------------------------------------
# PostgreSQL normalization: SQL per column that is never coarser than values_equal
# ------------------------------------------------------------------------------------------------------
def _choose_hashing(job: Job) -> None:
    """Hash in SQL when both sides are one kind of database that can, and every column normalizes exactly."""
    first, second = (side.dialect for side in job.sides)
    versions = [side.engine.dialect.server_version_info or (0,) for side in job.sides]  # known: we connected
    if type(first) is not type(second) or first.segment_hash_sql([], [], min(versions)) is None:
        job.python_reason = f"the two sides ({first.label}, {second.label}) are not one database that hashes in SQL"
        return
    params: dict[str, Any] = {}
    pairs = []
    for n, col in enumerate((*job.keys, *job.columns)):
        pair = first.column_hash_sql(col.exprs, col.pg_types, col.rule, params, f"p{n}_")
        if pair is None:
            job.python_reason = (f"column '{col.name}' ({col.pg_types[0]} vs {col.pg_types[1]}) with its rules "
                                 f"has no exact SQL normalization")
            return
        pairs.append(pair)
    digests = [first.segment_hash_sql([p[i] for p in pairs], [c.exprs[i] for c in job.columns], min(versions))
               for i in (0, 1)]
    job.sql_hash = (digests[0] or "", digests[1] or "")
    job.params = params


