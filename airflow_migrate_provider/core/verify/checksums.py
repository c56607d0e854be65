"""The ``checksums`` check: every row of the source compared with the target, at about the cost of two scans.

1. The key space is cut into segments: arithmetic on min/max for a single integer key, quantile keys
   otherwise. Each side reports ``count(*)`` and an order-independent sum of row hashes per segment, in ONE
   grouped query per side, both sides at once (two threads).
2. PostgreSQL ↔ PostgreSQL hashes in SQL: the sum of a 64-bit hash per row (``hash_record_extended`` of the
   normalized columns, hashed again); each column is normalized per its ColumnRule, in a form whose hash covers
   all of the value and which both sides share. A normalization is used only where it never makes equal two
   values that ``values_equal`` tells apart (a finer one only costs a drill-down). Other pairs of databases,
   and columns SQL cannot normalize so, hash in Python (``values.canonical`` per value, rows streamed).
3. Differing segments are split k ways (one grouped query per side and level; index range scans) until a
   range holds at most ``bisect_rows`` rows. Python-hashed segments skip this: splitting would re-read them.
4. The rows of those ranges are streamed from both sides in key order and merged: a key on one side only is
   missing/extra; a matched row is compared per column with ``values_equal`` (exact, e.g. a float epsilon).

Keys sort alike everywhere: text in byte order (``COLLATE "C"`` on PostgreSQL, ``BINARY`` on SQLite, Python's
``str`` order), timestamps as UTC instants. Memory stays flat. Tables should not change meanwhile.
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import date, datetime, timezone
from decimal import Decimal
from hashlib import blake2b
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.backfill.spec import category_of_sa_type
from airflow_migrate_provider.core.verify.base import (
    MAX_REPORTED,
    CheckResult,
    ColumnRule,
    Difference,
    Side,
    VerifySpecError,  # raised here for input that does not fit the tables (re-exported)
)
from airflow_migrate_provider.core.verify.values import canonical, values_equal
from airflow_migrate_provider.errors import db_error_line

FANOUT = 64  # at most this many parts per differing range and drill-down level
BATCH = 5_000  # rows per fetch when streaming
RANGES_PER_QUERY = 200  # key ranges per statement (bound parameters stay well under SQLite's limit)
MAX_KEY_SEGMENTS = 1_024  # segments between quantile keys: their bounds are bound parameters of one statement
_KEY_CLASS = {"integer": "number", "number": "number", "text": "text", "datetime": "datetime"}
_PG_GROUP = {"int2": "int", "int4": "int", "int8": "int", "numeric": "numeric", "float4": "float",
             "float8": "float", "text": "text", "varchar": "text", "bpchar": "text", "name": "text",
             "json": "json", "jsonb": "json", "bool": "bool", "uuid": "uuid", "bytea": "bytea", "date": "date",
             "timestamp": "ts", "timestamptz": "tstz", "time": "time", "interval": "interval"}
_CATEGORY = {"int": "integer", "numeric": "number", "float": "number", "text": "text", "json": "json",
             "bool": "bool", "uuid": "text", "bytea": "binary", "date": "datetime", "ts": "datetime",
             "tstz": "datetime", "time": "datetime", "interval": "datetime"}
_PG_SESSION = ("SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true), "
               "set_config('IntervalStyle', 'postgres', true), set_config('extra_float_digits', '1', true), "
               "set_config('jit', 'off', true), set_config('cursor_tuple_fraction', '1', true)")
# JIT compiles our CASE trees for longer than they run; streamed (cursor) reads are read to the end
Sums = dict[int, tuple[int, Any]]  # bucket → (rows, sum of row hashes)


@dataclass(frozen=True)
class _Column:
    """One compared column: its target name, the SQL reading it on each side, and what each side holds."""

    name: str
    exprs: tuple[str, str]  # (source SQL, target SQL)
    categories: tuple[str | None, str | None]
    pg_types: tuple[str | None, str | None]  # typname on PostgreSQL sides
    rule: ColumnRule = field(default_factory=ColumnRule)

    @property
    def kind(self) -> str | None:
        return self.categories[1] or self.categories[0]


@dataclass
class _Range:
    """Keys ``lo <= k < hi`` (None: unbounded) as Python key tuples, with each side's row count."""

    lo: tuple[Any, ...] | None
    hi: tuple[Any, ...] | None
    counts: tuple[int, int] = (0, 0)


@dataclass
class _Job:
    """The check bound to the real tables."""

    sides: tuple[Side, Side]
    keys: list[_Column]
    columns: list[_Column]
    key_classes: list[str]  # number | text | datetime, per key column
    integer_key: bool
    sql_hash: str | None = None  # "record" | "text": hashed in PostgreSQL; None: in Python
    python_reason: str = ""
    hash_sql: tuple[list[str], list[str]] = ([], [])  # normalized SQL per column (keys first), per side
    params: dict[str, Any] = field(default_factory=dict)  # values bound by that SQL (time zones, epsilons)

    def key_sql(self, i: int) -> list[str]:
        """Key expressions as compared and ordered (text in byte order)."""
        out = []
        for col in self.keys:
            expr, pg, text = col.exprs[i], col.pg_types[i], col.categories[i] == "text"
            if self.sides[i].dialect == "sqlite" and text:
                expr = f"{expr} COLLATE BINARY"
            elif _PG_GROUP.get(pg or "") == "text" or (pg and pg not in _PG_GROUP and text):
                expr = f'{expr} COLLATE "C"'
            out.append(expr)
        return out

    def fetch_sql(self, i: int) -> list[str]:
        """Raw values (keys first); JSON as text on PostgreSQL, so numbers never pass through a float."""
        return [f"CAST({c.exprs[i]} AS text)" if c.pg_types[i] in ("json", "jsonb") else c.exprs[i]
                for c in (*self.keys, *self.columns)]


@dataclass
class _Found:
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


def checksums(source: Side, target: Side, key: list[str], columns: dict[str, str] | None = None,
              rules: dict[str, ColumnRule] | None = None, segments: int = 64, bisect_rows: int = 2_000,
              max_reported: int = MAX_REPORTED) -> CheckResult:
    """Compare every row of ``source`` with ``target`` by ``key`` (see the module docstring).

    ``columns`` maps target columns to the source column or SQL expression they must equal; every other
    column both sides share by name is compared too. ``rules`` normalize values per target column.
    Raises VerifySpecError when the input does not fit the tables.
    """
    t0 = time.monotonic()
    limits = (("segments", segments, 1), ("bisect_rows", bisect_rows, 1), ("max_reported", max_reported, 0))
    for name, value, least in limits:
        if value < least:
            raise VerifySpecError(f"{name}: must be at least {least}, got {value}")
    job = _resolve(replace(source, label=source.label or "source"), replace(target, label=target.label or "target"),
                   list(key), dict(columns or {}), dict(rules or {}))
    plan = _Segments.plan(job, segments)
    sums: tuple[Sums, Sums] | None = None
    if job.sql_hash:
        try:
            sums = _both(job, lambda i: _sql_sums(job, i, plan.sql_bucket, None))
        except sa_exc.DataError as exc:  # e.g. text that is not JSON: Python compares it as text then
            job.sql_hash, job.python_reason = None, f"SQL normalization failed: {db_error_line(exc)}"
    if sums is None:
        sums = _both(job, lambda i: _py_sums(job, i, plan.py_bucket))
    differing = []
    for b in sorted(set(sums[0]) | set(sums[1])):
        pair = sums[0].get(b, (0, 0)), sums[1].get(b, (0, 0))
        if pair[0] != pair[1]:
            differing.append(replace(plan.range(b), counts=(pair[0][0], pair[1][0])))
    found = _Found(max_reported)
    _compare(job, _drill(job, differing, bisect_rows) if job.sql_hash else differing, found)
    rows = [sum(n for n, _ in s.values()) for s in sums]
    how = "hashed in PostgreSQL" if job.sql_hash else f"hashed in Python: {job.python_reason}"
    detail = (f"{len(differing)} of {plan.count} segments differed; {found.summary()} ({how})" if found.total
              else f"{plan.count} segments, all equal ({how})" if not differing else
              f"{len(differing)} of {plan.count} segments differed by hash only, rows equal by the rules ({how})")
    return CheckResult(check="checksums", passed=found.total == 0, detail=detail,
                       source=f"{rows[0]:,} rows, {plan.count} segments",
                       target=f"{rows[1]:,} rows, {plan.count} segments", seconds=time.monotonic() - t0,
                       differences=found.listed, total_differences=found.total)


# ------------------------------------------------------------------------------------------------------
# binding the check to the real tables
# ------------------------------------------------------------------------------------------------------
def _resolve(source: Side, target: Side, key: list[str], columns: dict[str, str],
             rules: dict[str, ColumnRule]) -> _Job:
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
    src_exprs = {n: source.sql.fragment(columns[n]) if n in columns and columns[n] not in available[0]
                 else source.sql.ident(columns.get(n, n)) for n in names}
    types = [_describe(source, src_exprs, available[0], columns),
             _describe(target, {n: target.sql.ident(n) for n in names}, available[1], {})]
    cols = [_Column(n, (src_exprs[n], target.sql.ident(n)), (types[0][n][0], types[1][n][0]),
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
    job = _Job(sides, cols[:len(key)], cols[len(key):], classes, integer_key)
    _choose_hashing(job)
    return job


def _where(side: Side) -> str:
    return f"{side.label} table '{side.table}'" if side.table else f"{side.label} query"


def _available(side: Side) -> dict[str, str | None]:
    """Column name → category (None: not known before reading) of a table or query."""
    if side.table is not None:
        schema, _, table = side.table.rpartition(".")
        try:
            return {c["name"]: category_of_sa_type(c["type"])
                    for c in inspect(side.engine).get_columns(table, schema=schema or None)}
        except sa_exc.NoSuchTableError:
            raise VerifySpecError(f"{side.label}.table: table '{side.table}' does not exist") from None
    try:
        return {n: t[0] for n, t in _probe(side, "*").items()}
    except sa_exc.SQLAlchemyError as exc:
        raise VerifySpecError(f"{side.label}.query: the query fails: {db_error_line(exc)}") from None


def _probe(side: Side, select: str, limit: int = 0) -> dict[str, tuple[str | None, str | None]]:
    """``SELECT <select> FROM <side> LIMIT 0`` → output name → (category, PostgreSQL typname).

    SQLite reports no types: with ``limit`` 1 the first row's Python types stand in for them."""
    with side.engine.connect() as conn:
        result = conn.exec_driver_sql(f"SELECT {select} FROM {side.from_clause()}"
                                      f"{side.where(None if limit else '1 = 0')} LIMIT {limit}")
        described = [(d[0], d[1]) for d in result.cursor.description] if result.cursor is not None else []
        first = result.first() or [None] * len(described)
        found: dict[int, tuple[str, str]] = {}
        if side.dialect == "postgresql" and described:
            oids = sorted({int(t) for _, t in described if t is not None})
            found = {oid: (name, cat) for oid, name, cat in conn.exec_driver_sql(
                "SELECT oid::int, typname, typcategory FROM pg_type WHERE oid = ANY(%(o)s)", {"o": oids})}
        conn.rollback()
    out = {}
    for (name, oid), value in zip(described, first, strict=True):
        typname, typcat = found.get(int(oid), (None, None)) if oid is not None else (None, None)
        category = (_CATEGORY.get(_PG_GROUP.get(typname or ""), "") or
                    {"S": "text", "N": "number", "D": "datetime", "B": "bool"}.get(typcat or "", "other")
                    ) if typname else None
        if category is None and value is not None:
            category = {int: "integer", float: "number", str: "text", bytes: "binary"}.get(type(value))
        out[name] = (category, typname)
    return out


def _describe(side: Side, exprs: dict[str, str], available: dict[str, str | None],
              mapped: dict[str, str]) -> dict[str, tuple[str | None, str | None]]:
    """Each compared column's (category, PostgreSQL typname) on one side; proves the expressions run."""
    select = ", ".join(f"{e} AS {side.sql.ident(f'c{i}')}" for i, e in enumerate(exprs.values()))
    try:
        probed = list(_probe(side, select).values())
    except sa_exc.SQLAlchemyError as exc:
        for name, expr in mapped.items():
            try:
                _probe(side, side.sql.fragment(expr))
            except sa_exc.SQLAlchemyError as one:
                raise VerifySpecError(f"columns.{name}: '{expr}' does not work on the {side.label}: "
                                      f"{db_error_line(one)}") from None
        raise VerifySpecError(f"{side.label}: reading it fails: {db_error_line(exc)} (check its filter)") from None
    out = {}
    for (name, expr), (category, typname) in zip(exprs.items(), probed, strict=True):
        plain = mapped.get(name, name)
        out[name] = (category or (available.get(plain) if expr == side.sql.ident(plain) else None), typname)
    if side.dialect == "sqlite" and any(c is None for c, _ in out.values()):  # expressions, query columns
        sample = list(_probe(side, select, limit=1).values())
        out = {n: (c or sample[i][0], t) for i, (n, (c, t)) in enumerate(out.items())}
    return out


# ------------------------------------------------------------------------------------------------------
# PostgreSQL normalization: SQL per column that is never coarser than values_equal
# ------------------------------------------------------------------------------------------------------
def _choose_hashing(job: _Job) -> None:
    if not all(s.dialect == "postgresql" for s in job.sides):
        job.python_reason = "the two sides are not both PostgreSQL"
        return
    params: dict[str, Any] = {}
    pairs = []
    for n, col in enumerate((*job.keys, *job.columns)):
        pair = _pg_pair(col, params, f"p{n}_")
        if pair is None:
            job.python_reason = (f"column '{col.name}' ({col.pg_types[0]} vs {col.pg_types[1]}) with its rules "
                                 f"has no exact SQL normalization")
            return
        pairs.append(pair)
    versions = [side.engine.dialect.server_version_info or (0,) for side in job.sides]  # known: we connected
    # hash_record_extended hashes NULL as 0, like float 0.0: NULLs also go in as int4 bit masks (int4: int8's
    # hash folds its halves together, so 1 and 2^32 would collide)
    masks = [[" + ".join(f"CASE WHEN ({c.exprs[i]}) IS NULL THEN {1 << n} ELSE 0 END" for n, c in enumerate(
        job.columns[start:start + 31])) for start in range(0, len(job.columns), 31)] for i in (0, 1)]
    job.hash_sql = tuple([p[i] for p in pairs] + masks[i] for i in (0, 1))  # type: ignore[assignment]
    job.params = params
    job.sql_hash = "record" if min(versions) >= (14,) else "text"  # hash_record_extended: PostgreSQL 14+


def _pg_pair(col: _Column, params: dict[str, Any], prefix: str) -> tuple[str, str] | None:
    """(source SQL, target SQL) of one column to hash, or None where SQL cannot normalize it exactly.

    Equal SQL values must be equal by values_equal, and the value's hash must be a real hash of all of it.
    PostgreSQL's own hashes of int8, timestamps, numeric and jsonb are built for hash joins, not checksums
    (1 and 2^32 collide as int8, 1.5 and -1.5 as numeric, [[1],2] and [[1,2]] as jsonb): those values are
    hashed through their binary (``*_send``) or text form. Sessions run in UTC (``_PG_SESSION``).
    """
    groups = [_PG_GROUP.get(t or "", "other") for t in col.pg_types]
    kinds, rule, exprs = set(groups), col.rule, col.exprs
    numeric_rule = rule.numeric_scale is not None or rule.float_epsilon is not None
    if kinds <= {"int", "numeric", "float"}:
        if not numeric_rule and kinds == {"int"}:
            small = all(t in ("int2", "int4") for t in col.pg_types)
            return tuple(f"({e})::int4" if small else f"int8send(({e})::int8)" for e in exprs)  # type: ignore
        if not numeric_rule and kinds == {"float"}:
            return f"({exprs[0]})::float8", f"({exprs[1]})::float8"
        values = [f"(({e})::text::numeric)" if g == "float" else f"(({e})::numeric)"
                  for e, g in zip(exprs, groups, strict=True)]
        if rule.float_epsilon is not None:  # a grid as wide as epsilon: never coarser than the distance
            params[f"{prefix}eps"] = str(Decimal(str(rule.float_epsilon)))
            step = f"(%({prefix}eps)s)::numeric"
            values = [f"(round({v} / {step}) * {step})" for v in values]
        elif rule.numeric_scale is not None:  # half away from zero, as values.canonical rounds
            values = [f"round({v}, {int(rule.numeric_scale)})" for v in values]
        return tuple(f"numeric_send(trim_scale({v}))" for v in values)  # type: ignore[return-value]
    if numeric_rule:
        return None
    if "json" in kinds or rule.json:  # jsonb's text: key order and whitespace gone
        if not kinds <= {"json", "text"}:
            return None
        return tuple(f"({e})::text" if t == "jsonb" else f"({e})::text::jsonb::text"  # type: ignore[return-value]
                     for e, t in zip(exprs, col.pg_types, strict=True))
    if kinds <= {"text", "uuid"}:
        out = []
        for e, g, t in zip(exprs, groups, col.pg_types, strict=True):
            v = f"(bpcharout({e}))::text" if t == "bpchar" else f"({e})::text"  # char(n) keeps its padding
            v = f"rtrim({v}, ' ')" if rule.trim and g == "text" else v
            out.append(f"lower({v})" if rule.case_insensitive and g == "text" else v)
        return out[0], out[1]
    if kinds <= {"ts", "tstz"}:
        return _pg_timestamps(col, groups, params, prefix)
    if groups == ["int", "bool"]:
        return f"(({exprs[0]}) <> 0)", exprs[1]
    if kinds in ({"time"}, {"interval"}):
        return f"{groups[0]}_send({exprs[0]})", f"{groups[0]}_send({exprs[1]})"
    if kinds in ({"date"}, {"bool"}, {"bytea"}):  # hashed as int4, a byte, and all bytes
        return exprs
    return (f"({exprs[0]})::text", f"({exprs[1]})::text") if col.pg_types[0] == col.pg_types[1] else None


def _pg_timestamps(col: _Column, groups: list[str], params: dict[str, Any], prefix: str) -> tuple[str, str]:
    """Instants stay instants (naive values read in the rule's zone); an instant never equals a naive value."""
    rule, values, aware = col.rule, [], []
    unit = {"s": "second", "ms": "milliseconds", "us": "microseconds"}.get(rule.timestamp_precision or "")
    for e, g in zip(col.exprs, groups, strict=True):
        if g == "ts" and rule.time_zone is not None:
            params[f"{prefix}tz"] = rule.time_zone
            e = f"(({e}) AT TIME ZONE %({prefix}tz)s)"
        values.append(f"date_trunc('{unit}', {e})" if unit else e)  # in UTC (the session's zone)
        aware.append(g == "tstz" or rule.time_zone is not None)
    if aware[0] != aware[1]:
        return tuple(f"({v})::text" + (" || 'Z'" if a else "")  # type: ignore[return-value]
                     for v, a in zip(values, aware, strict=True))
    return tuple(f"timestamptz_send({v})" if a else f"timestamp_send({v})"  # type: ignore[return-value]
                 for v, a in zip(values, aware, strict=True))


# ------------------------------------------------------------------------------------------------------
# segments and key ranges
# ------------------------------------------------------------------------------------------------------
@dataclass
class _Segments:
    """The first cut of the key space: fixed-width integer ranges, or ranges between quantile keys."""

    lo: int = 0
    hi: int = 0
    width: int = 1
    bounds: list[tuple[Any, ...]] | None = None  # sorted quantile keys (non-integer keys)
    count: int = 1

    @classmethod
    def plan(cls, job: _Job, segments: int) -> _Segments:
        if job.integer_key:
            values = [v for row in _both(job, lambda i: _scalar_row(job, i, "min({k}), max({k})")) for v in row
                      if v is not None]
            if not values:
                return cls()
            lo, hi = int(min(values)), int(max(values))
            width = max(1, math.ceil((hi - lo + 1) / segments))
            return cls(lo=lo, hi=hi, width=width, count=(hi - lo) // width + 1)
        counts = _both(job, lambda i: _scalar_row(job, i, "count(*)")[0])
        side, segments = 0 if counts[0] else 1, min(segments, MAX_KEY_SEGMENTS)
        bounds = _quantiles(job, side, _Range(None, None), math.ceil(counts[side] / segments)) if counts[side] else []
        return cls(bounds=bounds, count=len(bounds) + 1)

    def range(self, bucket: int) -> _Range:
        if self.bounds is None:
            return _Range((self.lo + bucket * self.width,), (self.lo + (bucket + 1) * self.width,))
        return _Range(self.bounds[bucket - 1] if bucket else None,
                      self.bounds[bucket] if bucket < len(self.bounds) else None)

    def py_bucket(self, key: tuple[Any, ...]) -> int:
        return (key[0] - self.lo) // self.width if self.bounds is None else bisect.bisect_right(self.bounds, key)

    def sql_bucket(self, job: _Job, i: int, params: dict[str, Any]) -> str:
        if self.bounds is None:
            params.update(seg_lo=self.lo, seg_w=self.width)
            if self.hi - self.lo < 2**62:
                return f"(({job.key_sql(i)[0]}) - %(seg_lo)s) / %(seg_w)s"
            return f"floor((({job.key_sql(i)[0]})::numeric - %(seg_lo)s) / %(seg_w)s)"  # bigint would overflow
        return _bucket_case(job, i, self.bounds, params, "b")


def _bucket_case(job: _Job, i: int, bounds: list[tuple[Any, ...]], params: dict[str, Any], prefix: str) -> str:
    """SQL for "how many of the sorted ``bounds`` are <= the key": a binary search of nested CASEs."""
    exprs, sql = job.key_sql(i), job.sides[i].sql

    def node(lo: int, hi: int) -> str:
        if lo == hi:
            return str(lo)
        mid = (lo + hi + 1) // 2
        test = sql.compare(exprs, "<", _bind(job, i, bounds[mid - 1]), params, f"{prefix}{mid}_")
        return f"CASE WHEN {test} THEN {node(lo, mid - 1)} ELSE {node(mid, hi)} END"

    return node(0, len(bounds))


def _ranges_sql(job: _Job, i: int, ranges: list[_Range], params: dict[str, Any]) -> str:
    exprs, sql, parts = job.key_sql(i), job.sides[i].sql, []
    for n, r in enumerate(ranges):
        tests = [sql.compare(exprs, op, _bind(job, i, v), params, f"r{n}{'gl'[op == '<']}_")
                 for op, v in ((">=", r.lo), ("<", r.hi)) if v is not None]
        parts.append(" AND ".join(tests) or " AND ".join(f"{e} IS NOT NULL" for e in exprs))
    return " OR ".join(f"({p})" for p in parts)


def _bind(job: _Job, i: int, key: tuple[Any, ...]) -> tuple[Any, ...]:
    """A Python key as parameters of side ``i`` (SQLite keeps timestamps as text and has no Decimal)."""
    if job.sides[i].dialect != "sqlite":
        return key
    out: list[Any] = []
    for v in key:
        if isinstance(v, datetime):  # the shortest text, so that equal instants sort alike as text
            v = v.date().isoformat() if v == datetime.combine(v.date(), datetime.min.time()) else str(v)
        if isinstance(v, Decimal):
            v = int(v) if v == v.to_integral_value() else float(v)
        out.append(float(v) if isinstance(v, int) and abs(v) >= 2**63 else v)
    return tuple(out)


def _key_fns(job: _Job) -> list[Callable[[Any], Any]]:
    """Per key column: a raw value → a value that sorts like the databases sort it."""
    return [int if job.integer_key else (lambda v: Decimal(str(v))) if cls == "number" else
            _instant if cls == "datetime" else str for cls in job.key_classes]


def _instant(value: Any) -> Any:
    if isinstance(value, str):
        value = datetime.fromisoformat(value.strip())
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value
    return datetime.combine(value, datetime.min.time()) if isinstance(value, date) else value


# ------------------------------------------------------------------------------------------------------
# reading the sides
# ------------------------------------------------------------------------------------------------------
def _both(job: _Job, work: Callable[[int], Any]) -> tuple[Any, Any]:
    """``work(0)`` (source) and ``work(1)`` (target) at the same time (in turn for in-memory SQLite, whose
    database belongs to one thread's connection)."""
    if any(s.dialect == "sqlite" and s.engine.url.database in (None, "", ":memory:") for s in job.sides):
        return work(0), work(1)
    with ThreadPoolExecutor(2, thread_name_prefix="checksums") as pool:
        futures = [pool.submit(work, i) for i in (0, 1)]
        return futures[0].result(), futures[1].result()


def _connect(side: Side) -> Connection:
    conn = side.engine.connect()
    if side.dialect == "postgresql":  # texts and naive parameters independent of the session's settings
        conn.exec_driver_sql(_PG_SESSION)
    return conn


def _scalar_row(job: _Job, i: int, select: str) -> tuple[Any, ...]:
    side = job.sides[i]
    with _connect(side) as conn:
        row = conn.exec_driver_sql(f"SELECT {select.format(k=job.key_sql(i)[0])} FROM {side.from_clause()}"
                                   f"{side.where()}").one()
        conn.rollback()
    return tuple(row)


def _quantiles(job: _Job, i: int, within: _Range, step: int) -> list[tuple[Any, ...]]:
    """Every ``step``-th key of side ``i`` within a range: sorted, distinct, strictly inside it."""
    side, params = job.sides[i], {"step": max(step, 1)}
    names = [side.sql.ident(f"k{n}") for n in range(len(job.keys))]
    keys = ", ".join(f"{c.exprs[i]} AS {n}" for c, n in zip(job.keys, names, strict=True))
    stmt = (f"SELECT {', '.join(names)} FROM (SELECT {keys}, row_number() OVER (ORDER BY "
            f"{', '.join(job.key_sql(i))}) AS rn FROM {side.from_clause()}"
            f"{side.where(_ranges_sql(job, i, [within], params))}) AS q "
            f"WHERE rn > 1 AND {side.sql.fragment('(rn - 1) % ')}{side.sql.param('step')} = 0")
    fns = _key_fns(job)
    with _connect(side) as conn:
        found = {tuple(f(v) for f, v in zip(fns, row, strict=True)) for row in conn.exec_driver_sql(stmt, params)}
        conn.rollback()
    return sorted(k for k in found if (within.lo is None or k > within.lo) and (within.hi is None or k < within.hi))


def _sql_sums(job: _Job, i: int, bucket: Callable[[_Job, int, dict[str, Any]], str],
              ranges: list[_Range] | None) -> Sums:
    """One grouped query, hashed by PostgreSQL (``sum(bigint)`` is numeric: it cannot overflow)."""
    side, params = job.sides[i], dict(job.params)
    row = f"ROW({', '.join(job.hash_sql[i])})"
    # hash_record_extended is linear in its fields' hashes: summed over rows, two rows swapping a value would
    # cancel out. Hashing the row hash again (its text) makes each row's contribution independent.
    digest = (f"hashtextextended(hash_record_extended({row}, 0)::text, 0)" if job.sql_hash == "record" else
              f"hashtextextended({row}::text, 0)")
    where = side.where(_ranges_sql(job, i, ranges, params) if ranges else None)
    null_key = " OR ".join(f"{k} IS NULL" for k in job.key_sql(i))
    stmt = (f"SELECT CASE WHEN {null_key} THEN NULL ELSE {bucket(job, i, params)} END AS b, count(*), "
            f"sum({digest}) FROM {side.from_clause()}{where} GROUP BY 1")
    with _connect(side) as conn:
        conn.exec_driver_sql("SELECT set_config('enable_sort', 'off', true)")  # few groups: hash them
        sums = {b: (int(n), h) for b, n, h in conn.exec_driver_sql(stmt, params)}
        conn.rollback()
    if None in sums:
        raise _null_key(job, i)
    return {int(b): v for b, v in sums.items()}


def _null_key(job: _Job, i: int) -> VerifySpecError:
    return VerifySpecError(f"key: {job.sides[i].label} has rows whose key ({', '.join(c.name for c in job.keys)}) "
                           f"is NULL; a key must identify every row (leave them out with a filter)")


def _rows(job: _Job, i: int, ranges: list[_Range] | None = None, limit: int | None = None
          ) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """(Python key, raw row) of side ``i``, streamed; in key order when ``ranges`` are given."""
    side, params = job.sides[i], {}
    where = side.where(_ranges_sql(job, i, ranges, params) if ranges else None)
    order = f" ORDER BY {', '.join(job.key_sql(i))}" if ranges else ""
    stmt = f"SELECT {', '.join(job.fetch_sql(i))} FROM {side.from_clause()}{where}{order}"
    stmt += f" LIMIT {int(limit)}" if limit is not None else ""
    fns = _key_fns(job)
    with _connect(side) as conn:
        for row in conn.execution_options(yield_per=BATCH).exec_driver_sql(stmt, params):
            if None in row[:len(fns)]:
                raise _null_key(job, i)
            yield tuple(f(v) for f, v in zip(fns, row[:len(fns)], strict=True)), tuple(row)
        conn.rollback()


def _py_sums(job: _Job, i: int, bucket: Callable[[tuple[Any, ...]], int]) -> Sums:
    """Stream side ``i`` once, hashing each row's canonical texts (``repr`` of the tuple: NULL stays None, no
    separator can be forged) with BLAKE2b. Not Python's ``hash()``: its tuple hash is so nearly linear that
    two rows swapping a value often leave the sum unchanged."""
    # the hash follows values_equal: with an epsilon, numbers share the text of their epsilon grid cell
    fns = [_canonical_fn(replace(c.rule, numeric_scale=None) if c.rule.float_epsilon is not None else c.rule,
                         c.kind) for c in (*job.keys, *job.columns)]
    acc: dict[int, list[int]] = {}
    for key, row in _rows(job, i):
        texts = tuple(None if v is None else f(v) for f, v in zip(fns, row, strict=True))
        digest = int.from_bytes(blake2b(repr(texts).encode(), digest_size=8).digest(), "little")
        slot = acc.setdefault(bucket(key), [0, 0])
        slot[0] += 1
        slot[1] += digest
    return {b: (n, h) for b, (n, h) in acc.items()}


def _canonical_fn(rule: ColumnRule, kind: str | None) -> Callable[[Any], str]:
    """``values.canonical`` for one column, with exact shortcuts for the commonest values (plain text, ints)."""
    if rule != ColumnRule():
        return lambda v: canonical(v, rule, kind)
    text_as_is = kind not in ("json", "datetime", "number", "integer")

    def fn(v: Any) -> str:
        if type(v) is str and text_as_is:
            return v
        if type(v) is int and kind != "bool":
            return str(v)  # what canonical's Decimal round trip gives for an int
        return canonical(v, rule, kind)

    return fn


# ------------------------------------------------------------------------------------------------------
# drill-down and row comparison
# ------------------------------------------------------------------------------------------------------
def _drill(job: _Job, ranges: list[_Range], bisect_rows: int) -> list[_Range]:
    """Split differing ranges until each holds at most ``bisect_rows`` rows; returns the differing leaves."""
    leaves: list[_Range] = []
    while ranges:
        parts: list[_Range] = []
        for r in ranges:
            split = _split(job, r, bisect_rows)
            leaves += [r] if split is None else []
            parts += split or []
        ranges = []
        for start in range(0, len(parts), RANGES_PER_QUERY):
            chunk = parts[start:start + RANGES_PER_QUERY]
            bounds = [part.lo for part in chunk[1:]]  # every part but the first starts at a key

            def level(i: int, chunk: list[_Range] = chunk, bounds: list[Any] = bounds) -> Sums:
                return _sql_sums(job, i, lambda j, side, ps: _bucket_case(j, side, bounds, ps, "d"), chunk)

            sums = _both(job, level)
            for n, part in enumerate(chunk):
                pair = sums[0].get(n, (0, 0)), sums[1].get(n, (0, 0))
                if pair[0] != pair[1]:
                    ranges.append(replace(part, counts=(pair[0][0], pair[1][0])))
    return sorted(leaves, key=lambda r: (r.lo is not None, r.lo or ()))


def _split(job: _Job, r: _Range, bisect_rows: int) -> list[_Range] | None:
    """Parts of about ``bisect_rows`` rows each (at most FANOUT), or None for a leaf."""
    most = max(r.counts)
    if most <= bisect_rows or 0 in r.counts:
        return None
    parts = min(FANOUT, math.ceil(most / bisect_rows))
    if job.integer_key:
        assert r.lo is not None and r.hi is not None
        width = math.ceil((r.hi[0] - r.lo[0]) / parts)
        bounds = [(v,) for v in range(r.lo[0] + width, r.hi[0], width)]
    else:
        side = 0 if r.counts[0] >= r.counts[1] else 1
        bounds = _quantiles(job, side, r, math.ceil(r.counts[side] / parts))
    edges = [r.lo, *bounds, r.hi]
    return [_Range(a, b) for a, b in itertools.pairwise(edges)] if bounds else None


def _compare(job: _Job, leaves: list[_Range], found: _Found) -> None:
    """One-sided leaves are counted (the first keys listed); the others are merged row by row."""
    two_sided = []
    for r in leaves:
        if r.counts[0] and r.counts[1]:
            two_sided.append(r)
            continue
        i = 0 if r.counts[0] else 1
        found.missing += r.counts[0]
        found.extra += r.counts[1]
        if len(found.listed) < found.cap:
            for _, row in _rows(job, i, [r], limit=found.cap - len(found.listed)):
                found.add(Difference(("missing_in_target", "extra_in_target")[i], key=_shown_key(job, row)))
    for start in range(0, len(two_sided), RANGES_PER_QUERY):
        _merge(job, two_sided[start:start + RANGES_PER_QUERY], found)


def _merge(job: _Job, ranges: list[_Range], found: _Found) -> None:
    streams = [_ordered(job, i, ranges) for i in (0, 1)]
    s, t = next(streams[0], None), next(streams[1], None)
    nk = len(job.keys)
    try:
        while s is not None or t is not None:
            if t is None or (s is not None and s[0] < t[0]):
                found.missing += 1
                found.add(Difference("missing_in_target", key=_shown_key(job, s[1])))  # type: ignore[index]
                s = next(streams[0], None)
            elif s is None or t[0] < s[0]:
                found.extra += 1
                found.add(Difference("extra_in_target", key=_shown_key(job, t[1])))
                t = next(streams[1], None)
            else:
                changed = [(c, a, b) for c, a, b in zip(job.columns, s[1][nk:], t[1][nk:], strict=True)
                           if not _same(a, b) and not values_equal(a, b, c.rule, c.kind)]
                found.changed_rows += 1 if changed else 0
                found.changed_values += len(changed)
                for col, a, b in changed:
                    found.add(Difference("changed", key=_shown_key(job, s[1]), column=col.name, source=a, target=b))
                s, t = next(streams[0], None), next(streams[1], None)
    finally:
        for stream in streams:
            stream.close()


def _ordered(job: _Job, i: int, ranges: list[_Range]) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """Rows of side ``i`` in key order; refuses to go on when the database's order is not Python's."""
    last = None
    for key, row in _rows(job, i, ranges):
        if last is not None and key < last:
            raise VerifySpecError(f"key: {job.sides[i].label} rows do not come in key order ({last!r} before "
                                  f"{key!r}); the key must sort alike on both databases")
        last = key
        yield key, row


def _same(a: Any, b: Any) -> bool:
    """Equal scalars of one type have one canonical text, under any rule (a shortcut past values_equal).
    Not containers: Python finds [True] == [1], JSON does not."""
    return a is b or (type(a) is type(b) and not isinstance(a, (dict, list, tuple)) and a == b)


def _shown_key(job: _Job, row: tuple[Any, ...]) -> Any:
    return row[0] if len(job.keys) == 1 else tuple(row[:len(job.keys)])
