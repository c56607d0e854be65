"""PostgreSQL row-hash SQL: per-column normalizations that are never coarser than ``values_equal``, the
summable 64-bit row digest used per key segment, and a whole-table content hash for backups.

PostgreSQL's own hashes of int8, timestamps, numeric and jsonb are built for hash joins, not checksums
(1 and 2^32 collide as int8, 1.5 and -1.5 as numeric, [[1],2] and [[1,2]] as jsonb): those values are
hashed through their binary (``*_send``) or text form. Sessions run in UTC (``SESSION``).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.dialects.types import TypeInfo

GROUP = {"int2": "int", "int4": "int", "int8": "int", "numeric": "numeric", "float4": "float",
         "float8": "float", "text": "text", "varchar": "text", "bpchar": "text", "name": "text",
         "json": "json", "jsonb": "json", "bool": "bool", "uuid": "uuid", "bytea": "bytea", "date": "date",
         "timestamp": "ts", "timestamptz": "tstz", "time": "time", "interval": "interval"}
_CATEGORY = {"int": "integer", "numeric": "number", "float": "number", "text": "text", "json": "json",
             "bool": "bool", "uuid": "text", "bytea": "binary", "date": "datetime", "ts": "datetime",
             "tstz": "datetime", "time": "datetime", "interval": "datetime"}
SESSION = ("SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true), "
           "set_config('IntervalStyle', 'postgres', true), set_config('extra_float_digits', '1', true)")
# JIT compiles our CASE trees for longer than they run; streamed (cursor) reads are read to the end
PLANNER = ", set_config('jit', 'off', true), set_config('cursor_tuple_fraction', '1', true)"
_MOD = 1 << 64


def result_category(info: TypeInfo) -> str:
    return (_CATEGORY.get(GROUP.get(info.typname), "") or
            {"S": "text", "N": "number", "D": "datetime", "B": "bool"}.get(info.typcategory, "other"))


def is_text(typname: str | None, category: str | None) -> bool:
    return GROUP.get(typname or "") == "text" or bool(typname and typname not in GROUP and category == "text")


def column_hash_sql(exprs: tuple[str, str], pg_types: tuple[str | None, str | None], rule: Any,
                    params: dict[str, Any], prefix: str) -> tuple[str, str] | None:
    """(source SQL, target SQL) of one column to hash, or None where SQL cannot normalize it exactly: equal
    SQL values must be equal by values_equal, and the value's hash must be a real hash of all of it."""
    groups = [GROUP.get(t or "", "other") for t in pg_types]
    kinds = set(groups)
    numeric_rule = rule.numeric_scale is not None or rule.float_epsilon is not None
    if kinds <= {"int", "numeric", "float"}:
        if not numeric_rule and kinds == {"int"}:
            small = all(t in ("int2", "int4") for t in pg_types)
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
                     for e, t in zip(exprs, pg_types, strict=True))
    if kinds <= {"text", "uuid"}:
        out = []
        for e, g, t in zip(exprs, groups, pg_types, strict=True):
            v = f"(bpcharout({e}))::text" if t == "bpchar" else f"({e})::text"  # char(n) keeps its padding
            v = f"rtrim({v}, ' ')" if rule.trim and g == "text" else v
            out.append(f"lower({v})" if rule.case_insensitive and g == "text" else v)
        return out[0], out[1]
    if kinds <= {"ts", "tstz"}:
        return _timestamps(exprs, groups, rule, params, prefix)
    if groups == ["int", "bool"]:
        return f"(({exprs[0]}) <> 0)", exprs[1]
    if kinds in ({"time"}, {"interval"}):
        return f"{groups[0]}_send({exprs[0]})", f"{groups[0]}_send({exprs[1]})"
    if kinds in ({"date"}, {"bool"}, {"bytea"}):  # hashed as int4, a byte, and all bytes
        return exprs
    return (f"({exprs[0]})::text", f"({exprs[1]})::text") if pg_types[0] == pg_types[1] else None


def _timestamps(exprs: tuple[str, str], groups: list[str], rule: Any, params: dict[str, Any],
                prefix: str) -> tuple[str, str]:
    """Instants stay instants (naive values read in the rule's zone); an instant never equals a naive value."""
    values, aware = [], []
    unit = {"s": "second", "ms": "milliseconds", "us": "microseconds"}.get(rule.timestamp_precision or "")
    for e, g in zip(exprs, groups, strict=True):
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


def segment_hash_sql(fields: list[str], null_exprs: list[str], version: tuple[int, ...] | None) -> str:
    """A 64-bit hash of one row: ``fields`` (normalized column SQL) plus NULL bit masks of ``null_exprs``.

    hash_record_extended (PostgreSQL 14+) hashes NULL as 0, like float 0.0: NULLs also go in as int4 bit masks
    (int4: int8's hash folds its halves together, so 1 and 2^32 would collide). It is linear in its fields'
    hashes: summed over rows, two rows swapping a value would cancel out, so the row hash is hashed again."""
    masks = [" + ".join(f"CASE WHEN ({e}) IS NULL THEN {1 << n} ELSE 0 END" for n, e in enumerate(
        null_exprs[start:start + 31])) for start in range(0, len(null_exprs), 31)]
    row = f"ROW({', '.join([*fields, *masks])})"
    if (version or (0,)) >= (14,):
        return f"hashtextextended(hash_record_extended({row}, 0)::text, 0)"
    return f"hashtextextended({row}::text, 0)"


def table_hash(conn: Connection, relation: str, quoted_columns: str) -> tuple[int, int, int]:
    """Text forms are exact (floats print shortest-exact, numerics keep their scale) once the session's
    time zone and styles are fixed. Each row's whole text is hashed twice (two seeds of hashtextextended,
    64 bits each; summing bigints accumulates in 128-bit integers, about twice as fast as md5 into numeric)."""
    conn.exec_driver_sql(SESSION)
    rows, lo, hi = conn.exec_driver_sql(
        f"SELECT count(*), coalesce(sum(hashtextextended(r, 0)), 0), coalesce(sum(hashtextextended(r, 1)), 0) "
        f"FROM (SELECT ROW({quoted_columns})::text AS r FROM {relation}) AS rows_of").one()
    return int(rows), int(lo) % _MOD, int(hi) % _MOD
