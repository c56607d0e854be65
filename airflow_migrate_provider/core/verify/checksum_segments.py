"""Segment sums for the checksums check: the first cut of the key space, key-range SQL, one grouped hashing
query per side (in SQL), or the rows streamed and hashed in Python (BLAKE2b per row, summed per segment)."""


from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from decimal import Decimal
from hashlib import blake2b
from typing import Any

from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.verify.base import (
    ColumnRule,
    Side,
    VerifySpecError,  # raised here for input that does not fit the tables (re-exported)
)
from airflow_migrate_provider.core.verify.checksum_job import (
    BATCH,
    MAX_KEY_SEGMENTS,
    Job,
    KeyRange,
    Sums,
)
from airflow_migrate_provider.core.verify.values import canonical


# ------------------------------------------------------------------------------------------------------
# segments and key ranges
# ------------------------------------------------------------------------------------------------------
@dataclass
class Segments:
    """The first cut of the key space: fixed-width integer ranges, or ranges between quantile keys."""

    lo: int = 0
    hi: int = 0
    width: int = 1
    bounds: list[tuple[Any, ...]] | None = None  # sorted quantile keys (non-integer keys)
    count: int = 1

    @classmethod
    def plan(cls, job: Job, segments: int) -> Segments:
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
        bounds = _quantiles(job, side, KeyRange(None, None), math.ceil(counts[side] / segments)) if counts[side] else []
        return cls(bounds=bounds, count=len(bounds) + 1)

    def range(self, bucket: int) -> KeyRange:
        if self.bounds is None:
            return KeyRange((self.lo + bucket * self.width,), (self.lo + (bucket + 1) * self.width,))
        return KeyRange(self.bounds[bucket - 1] if bucket else None,
                      self.bounds[bucket] if bucket < len(self.bounds) else None)

    def py_bucket(self, key: tuple[Any, ...]) -> int:
        return (key[0] - self.lo) // self.width if self.bounds is None else bisect.bisect_right(self.bounds, key)

    def sql_bucket(self, job: Job, i: int, params: dict[str, Any]) -> str:
        if self.bounds is None:
            params.update(seg_lo=self.lo, seg_w=self.width)
            dialect = job.sides[i].dialect
            return dialect.segment_bucket(job.key_sql(i)[0], dialect.param("seg_lo"), dialect.param("seg_w"),
                                          wide=self.hi - self.lo >= 2**62)
        return _bucket_case(job, i, self.bounds, params, "b")


def _bucket_case(job: Job, i: int, bounds: list[tuple[Any, ...]], params: dict[str, Any], prefix: str) -> str:
    """SQL for "how many of the sorted ``bounds`` are <= the key": a binary search of nested CASEs."""
    exprs, sql = job.key_sql(i), job.sides[i].dialect

    def node(lo: int, hi: int) -> str:
        if lo == hi:
            return str(lo)
        mid = (lo + hi + 1) // 2
        test = sql.compare(exprs, "<", _bind(job, i, bounds[mid - 1]), params, f"{prefix}{mid}_")
        return f"CASE WHEN {test} THEN {node(lo, mid - 1)} ELSE {node(mid, hi)} END"

    return node(0, len(bounds))


def _ranges_sql(job: Job, i: int, ranges: list[KeyRange], params: dict[str, Any]) -> str:
    exprs, sql, parts = job.key_sql(i), job.sides[i].dialect, []
    for n, r in enumerate(ranges):
        tests = [sql.compare(exprs, op, _bind(job, i, v), params, f"r{n}{'gl'[op == '<']}_")
                 for op, v in ((">=", r.lo), ("<", r.hi)) if v is not None]
        parts.append(" AND ".join(tests) or " AND ".join(f"{e} IS NOT NULL" for e in exprs))
    return " OR ".join(f"({p})" for p in parts)


def _bind(job: Job, i: int, key: tuple[Any, ...]) -> tuple[Any, ...]:
    """A Python key as parameters of side ``i``, sorting as that database sorts its keys."""
    dialect = job.sides[i].dialect
    return tuple(dialect.bound_value(v) for v in key)


def _key_fns(job: Job) -> list[Callable[[Any], Any]]:
    """Per key column: a raw value → a value that sorts like the databases sort it."""
    return [int if job.integer_key else (lambda v: Decimal(str(v))) if cls == "number" else
            _instant if cls == "datetime" else str for cls in job.key_classes]


def _instant(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise VerifySpecError(f"key: '{value}' is not a date (a MySQL/MariaDB zero date, kept by a non-strict "
                                  f"sql_mode?); a key must order as a timestamp on both sides: leave such rows out "
                                  f"with a filter, or set them to real dates first") from None
    if isinstance(value, datetime):
        return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value
    return datetime.combine(value, datetime.min.time()) if isinstance(value, date) else value


# ------------------------------------------------------------------------------------------------------
# reading the sides
# ------------------------------------------------------------------------------------------------------
def _both(job: Job, work: Callable[[int], Any]) -> tuple[Any, Any]:
    """``work(0)`` (source) and ``work(1)`` (target) at the same time (in turn for in-memory SQLite, whose
    database belongs to one thread's connection)."""
    if any(s.dialect.in_memory(s.engine) for s in job.sides):
        return work(0), work(1)
    with ThreadPoolExecutor(2, thread_name_prefix="checksums") as pool:
        futures = [pool.submit(work, i) for i in (0, 1)]
        return futures[0].result(), futures[1].result()


def _connect(side: Side) -> Connection:
    conn = side.engine.connect()
    side.dialect.stable_session(conn, planner_hints=True)  # texts and parameters independent of the session
    return conn


def _scalar_row(job: Job, i: int, select: str) -> tuple[Any, ...]:
    side = job.sides[i]
    with _connect(side) as conn:
        row = conn.exec_driver_sql(f"SELECT {select.format(k=job.key_sql(i)[0])} FROM {side.from_clause()}"
                                   f"{side.where()}").one()
        conn.rollback()
    return tuple(row)


def _quantiles(job: Job, i: int, within: KeyRange, step: int) -> list[tuple[Any, ...]]:
    """Every ``step``-th key of side ``i`` within a range: sorted, distinct, strictly inside it."""
    side, params = job.sides[i], {"step": max(step, 1)}
    names = [side.dialect.ident(f"k{n}") for n in range(len(job.keys))]
    keys = ", ".join(f"{c.exprs[i]} AS {n}" for c, n in zip(job.keys, names, strict=True))
    stmt = (f"SELECT {', '.join(names)} FROM (SELECT {keys}, row_number() OVER (ORDER BY "
            f"{', '.join(job.key_sql(i))}) AS rn FROM {side.from_clause()}"
            f"{side.where(_ranges_sql(job, i, [within], params))}) AS q "
            f"WHERE rn > 1 AND {side.dialect.fragment('(rn - 1) % ')}{side.dialect.param('step')} = 0")
    fns = _key_fns(job)
    with _connect(side) as conn:
        found = {tuple(f(v) for f, v in zip(fns, row, strict=True)) for row in conn.exec_driver_sql(stmt, params)}
        conn.rollback()
    return sorted(k for k in found if (within.lo is None or k > within.lo) and (within.hi is None or k < within.hi))


def _sql_sums(job: Job, i: int, bucket: Callable[[Job, int, dict[str, Any]], str],
              ranges: list[KeyRange] | None) -> Sums:
    """One grouped query, hashed by the database (``sum(bigint)`` is numeric: it cannot overflow)."""
    side, params = job.sides[i], dict(job.params)
    assert job.sql_hash is not None
    digest = job.sql_hash[i]
    where = side.where(_ranges_sql(job, i, ranges, params) if ranges else None)
    null_key = " OR ".join(f"{k} IS NULL" for k in job.key_sql(i))
    stmt = (f"SELECT CASE WHEN {null_key} THEN NULL ELSE {bucket(job, i, params)} END AS b, count(*), "
            f"sum({digest}) FROM {side.from_clause()}{where} GROUP BY 1")
    with _connect(side) as conn:
        side.dialect.prefer_hash_grouping(conn)
        sums = {b: (int(n), h) for b, n, h in conn.exec_driver_sql(stmt, params)}
        conn.rollback()
    if None in sums:
        raise _null_key(job, i)
    return {int(b): v for b, v in sums.items()}


def _null_key(job: Job, i: int) -> VerifySpecError:
    return VerifySpecError(f"key: {job.sides[i].label} has rows whose key ({', '.join(c.name for c in job.keys)}) "
                           f"is NULL; a key must identify every row (leave them out with a filter)")


def _rows(job: Job, i: int, ranges: list[KeyRange] | None = None, limit: int | None = None
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


def _py_sums(job: Job, i: int, bucket: Callable[[tuple[Any, ...]], int]) -> Sums:
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


