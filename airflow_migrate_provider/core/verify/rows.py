"""Row checks: row counts, and a seeded random sample of rows compared value by value.

The sample picks keys on the source without sorting the table: PostgreSQL reads big tables through
``TABLESAMPLE SYSTEM ... REPEATABLE (seed)`` and keeps the ``size`` rows with the lowest seeded
``random()`` (a bounded top-N, never a full sort); SQLite ranks rows by a seeded hash of the key. The rows
of those keys are then read from both sides and compared column by column after each column's rule, the
way ``values.values_equal`` reads them (a SQLite text timestamp and a PostgreSQL ``timestamptz`` compare
as timestamps; PostgreSQL JSON is read as text, never parsed into Python floats).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, fields
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import exc as sa_exc

from airflow_migrate_provider.core.dialects import is_transient
from airflow_migrate_provider.core.verify.base import MAX_REPORTED, CheckResult, ColumnRule, Difference, Side
from airflow_migrate_provider.core.verify.structure import (
    VerifyInputError,
    describe_columns,
    normalize_type,
    on_both_sides,
    require_table,
    type_category,
)
from airflow_migrate_provider.core.verify.values import row_text, values_equal
from airflow_migrate_provider.errors import db_error_line

_KEYS_PER_QUERY = 500
# when the two sides disagree on a column's category, the one that says most about how to read a value wins
_KIND_ORDER = ["bool", "json", "datetime", "number", "integer", "binary", "text", "other"]
_PLAN_FIELDS = {"json": "as_json"}  # ColumnRule attribute → the plan's tolerance field, where they differ
_RULE_KINDS = {
    "numeric_scale": ({"number", "integer"}, "a number"), "float_epsilon": ({"number", "integer"}, "a number"),
    "timestamp_precision": ({"datetime"}, "a timestamp"), "time_zone": ({"datetime"}, "a timestamp"),
    "trim": ({"text"}, "text"), "case_insensitive": ({"text"}, "text"), "json": ({"json", "text"}, "JSON or text"),
}


def _db_failure(exc: sa_exc.SQLAlchemyError, side: Side, role: str, doing: str) -> Exception:
    """A database error as an input error naming the plan field, unless retrying can help (then as is)."""
    transient = is_transient(side.engine, exc)
    if transient or (side.table is not None and not side.filter):
        return exc
    field = f"{role}.filter" if side.table is not None else f"{role}.query"
    return VerifyInputError(field, f"{doing} fails on the {role} database: {db_error_line(exc)}")


def _scalar(side: Side, role: str, sql: str, doing: str) -> Any:
    try:
        with side.engine.connect() as conn:
            value = conn.exec_driver_sql(sql, {}).scalar()
            conn.rollback()
        return value
    except sa_exc.SQLAlchemyError as exc:
        raise _db_failure(exc, side, role, doing) from exc


def row_counts(source: Side, target: Side) -> CheckResult:
    """Count the rows of both sides (each with its own filter), concurrently."""
    started = time.monotonic()

    def count(side: Side, role: str) -> int:
        require_table(side, role)
        return int(_scalar(side, role, f"SELECT count(*) FROM {side.from_clause()}{side.where()}", "counting rows"))

    src, tgt = on_both_sides(count, source, target)
    passed = src == tgt
    if passed:
        detail = f"both sides have {_count(src, 'row')}"
    else:
        detail = f"the target has {_count(abs(tgt - src), 'row')} {'more' if tgt > src else 'fewer'} than the source"
    return CheckResult(
        check="row_counts", passed=passed, source=_count(src, "row"), target=_count(tgt, "row"), detail=detail,
        seconds=round(time.monotonic() - started, 3),
        differences=[] if passed else [Difference("count", source=src, target=tgt, detail=detail)],
        total_differences=0 if passed else 1)


@dataclass(frozen=True)
class _Compared:
    """One compared column: its target name, the source expression feeding it, how to read its values."""

    name: str
    source_expr: str
    kind: str | None
    rule: ColumnRule


def _output_columns(side: Side, role: str) -> dict[str, str | None]:
    """Column name → category of a table side, or of a query side's output (category known on PostgreSQL)."""
    if side.table is not None:
        require_table(side, role)
        return {c.name: c.category for c in describe_columns(side.engine, side.table) or []}
    try:
        return _probe(side, "*")
    except sa_exc.SQLAlchemyError as exc:
        raise _db_failure(exc, side, role, "the query") from exc


def _probe(side: Side, select: str) -> dict[str, str | None]:
    """Run ``SELECT <select>`` over the side with no rows: proves it works, tells the output's categories."""
    with side.engine.connect() as conn:
        result = conn.exec_driver_sql(f"SELECT {select} FROM {side.from_clause()}{side.where('1 = 0')}", {})
        names = list(result.keys())
        codes = [d[1] for d in result.cursor.description] if result.cursor is not None else []
        result.close()
        categories: dict[str, str | None] = dict.fromkeys(names)
        if codes and (found := side.dialect.describe_type_codes(conn, codes)):
            categories = {n: type_category(normalize_type(found[int(c)].formatted if int(c) in found else ""))
                          for n, c in zip(names, codes, strict=True)}
        conn.rollback()
    return categories


def _probe_mapped(source: Side, exprs: dict[str, str], ordered: list[str], columns: dict[str, str]) -> dict[str, Any]:
    """Categories of the source SELECT list; a failing `columns` expression is named with its field."""
    sql = source.dialect
    try:
        return _probe(source, ", ".join(f"{exprs[n]} AS {sql.ident(n)}" for n in ordered))
    except sa_exc.SQLAlchemyError as exc:
        for name in columns:
            try:
                _probe(source, f"{exprs[name]} AS {sql.ident(name)}")
            except sa_exc.SQLAlchemyError as single:
                raise VerifyInputError(f"columns.{name}", f"'{columns[name]}' fails on the source database: "
                                                          f"{db_error_line(single)}") from exc
        raise _db_failure(exc, source, "source", "reading the source") from exc


def _kind(*categories: str | None) -> str | None:
    known = [c for c in categories if c]
    return min(known, key=lambda c: _KIND_ORDER.index(c) if c in _KIND_ORDER else len(_KIND_ORDER)) if known else None


def _check_rule(name: str, rule: ColumnRule, kind: str | None) -> None:
    for spec in fields(ColumnRule):
        value = getattr(rule, spec.name)
        if value is None or value is False:
            continue
        field = f"tolerances.{name}.{_PLAN_FIELDS.get(spec.name, spec.name)}"
        allowed, wanted = _RULE_KINDS[spec.name]
        if kind is not None and kind not in allowed:
            raise VerifyInputError(field, f"column '{name}' is {kind}, not {wanted}")
    if rule.timestamp_precision not in (None, "s", "ms", "us"):
        raise VerifyInputError(f"tolerances.{name}.timestamp_precision",
                               f"'{rule.timestamp_precision}' is not one of s, ms, us")
    if rule.time_zone is not None and rule.time_zone.upper() != "UTC":
        try:
            ZoneInfo(rule.time_zone)
        except (ValueError, KeyError):
            raise VerifyInputError(f"tolerances.{name}.time_zone", f"unknown time zone '{rule.time_zone}'") from None


def _resolve(source: Side, target: Side, key: list[str], columns: dict[str, str],
             rules: dict[str, ColumnRule]) -> list[_Compared]:
    """The compared columns (key first), validated against both sides."""
    if not key:
        raise VerifyInputError("key", "name the key column(s) that identify a row on both sides")
    src_cols, tgt_cols = on_both_sides(_output_columns, source, target)
    for name in columns:
        if name not in tgt_cols:
            raise VerifyInputError(f"columns.{name}", f"the target ({target.name}) has no column '{name}' "
                                                      f"(its columns: {', '.join(tgt_cols)})")
    names = [n for n in tgt_cols if n in columns or n in src_cols]
    for k in key:
        if k not in tgt_cols:
            raise VerifyInputError("key", f"key column '{k}' is not a column of the target ({target.name})")
        if k not in names:
            raise VerifyInputError("key", f"key column '{k}' is not a column of the source ({source.name}); map it "
                                          f"in `columns`")
    for name in rules:
        if name not in names:
            raise VerifyInputError(f"tolerances.{name}", f"column '{name}' is not compared: it is not a column of "
                                                         f"both sides and not mapped in `columns`")
    sql = source.dialect
    exprs = {n: sql.fragment(columns[n]) if n in columns else sql.ident(n) for n in names}
    ordered = key + [n for n in names if n not in key]
    probed = _probe_mapped(source, exprs, ordered, columns) if columns else {}
    compared = []
    for name in ordered:
        kind = _kind(tgt_cols.get(name), probed.get(name) or (src_cols.get(name) if name not in columns else None))
        rule = rules.get(name, ColumnRule())
        _check_rule(name, rule, kind)
        if name in key and kind in ("json", "binary"):
            raise VerifyInputError("key", f"key column '{name}' is {kind}; a key must be comparable by equality")
        compared.append(_Compared(name, exprs[name], kind, rule))
    return compared


def _select(side: Side, exprs: list[tuple[str, str]], categories: dict[str, str | None]) -> str:
    """The SELECT list; PostgreSQL JSON is read as text (psycopg would parse numbers into floats)."""
    items = []
    for name, expr in exprs:
        if categories.get(name) == "json":
            expr = side.dialect.read_json_as_text(expr)
        items.append(f"{expr} AS {side.dialect.ident(name)}")
    return ", ".join(items)


def _sample_keys(side: Side, key_exprs: list[str], size: int, seed: int) -> tuple[list[tuple[Any, ...]], str]:
    """Up to ``size`` keys chosen at random (reproducibly for a seed), and how they were chosen."""
    with side.engine.connect() as conn:
        found = side.dialect.sample_keys(conn, ", ".join(key_exprs), side.from_clause(), side.where(),
                                         side.table is not None, size, seed)
        conn.rollback()
    return found


def _fetch(side: Side, role: str, exprs: list[tuple[str, str]], categories: dict[str, str | None], key_count: int,
           keys: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The rows of ``keys`` on one side (with its filter), in batches of row-value IN lists."""
    sql, rows = side.dialect, []
    key_exprs = [e for _, e in exprs[:key_count]]
    select = _select(side, exprs, categories)
    try:
        with side.engine.connect() as conn:
            sql.stable_session(conn)  # values in the same time zone and text forms on every connection
            for start in range(0, len(keys), _KEYS_PER_QUERY):
                params: dict[str, Any] = {}
                tuples = []
                for i, values in enumerate(keys[start:start + _KEYS_PER_QUERY]):
                    names = []
                    for j, value in enumerate(values):
                        params[f"k{i}_{j}"] = sql.key_value(value)
                        names.append(sql.param(f"k{i}_{j}"))
                    tuples.append(sql.row(names) if key_count == 1 else f"({', '.join(names)})")
                listed = sql.in_list(tuples, key_count)
                condition = f"{sql.row(key_exprs)} IN ({listed})"
                rows += conn.exec_driver_sql(f"SELECT {select} FROM {side.from_clause()}{side.where(condition)}",
                                             params).all()
            conn.rollback()
    except sa_exc.SQLAlchemyError as exc:
        raise _db_failure(exc, side, role, "reading the sampled rows") from exc
    return [tuple(r) for r in rows]


def data_sample(source: Side, target: Side, key: list[str], columns: dict[str, str] | None = None,
                rules: dict[str, ColumnRule] | None = None, size: int = 100, seed: int | None = None) -> CheckResult:
    """Compare ``size`` randomly chosen source rows with the target rows of the same key, column by column.

    ``key``: target column names identifying a row. ``columns``: target column → source column or SQL
    expression, for columns the source names differently or computes (as in a backfill step); every other
    column present on both sides by name is compared as well. ``rules``: per target column, how values are
    normalized before comparing. ``seed``: the same seed picks the same keys (a random one is reported).
    """
    started = time.monotonic()
    if size < 1:
        raise VerifyInputError("size", f"must be at least 1, got {size}")
    seed = random.randrange(2**31) if seed is None else int(seed)
    compared = _resolve(source, target, list(key), dict(columns or {}), dict(rules or {}))
    kinds = {c.name: c.kind for c in compared}
    src_exprs = [(c.name, c.source_expr) for c in compared]
    tgt_exprs = [(c.name, target.dialect.ident(c.name)) for c in compared]
    try:
        keys, how = _sample_keys(source, [e for _, e in src_exprs[:len(key)]], size, seed)
    except sa_exc.SQLAlchemyError as exc:
        raise _db_failure(exc, source, "source", "sampling keys") from exc

    def fetch(side: Side, role: str) -> list[tuple[Any, ...]]:
        return _fetch(side, role, src_exprs if role == "source" else tgt_exprs, kinds, len(key), keys)

    src_rows, tgt_rows = on_both_sides(fetch, source, target)
    default_rules = [ColumnRule()] * len(key)
    key_kinds = [c.kind for c in compared[:len(key)]]

    duplicated = 0

    def by_key(rows: list[tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
        nonlocal duplicated
        found: dict[str, tuple[Any, ...]] = {}
        for row in rows:
            duplicated += found.setdefault(row_text(row[:len(key)], default_rules, key_kinds), row) is not row
        return found

    sampled = {row_text(k, default_rules, key_kinds) for k in keys}
    src_by_key, tgt_by_key = by_key(src_rows), by_key(tgt_rows)
    differences: list[Difference] = []
    missing = changed_rows = 0
    for text_key, src_row in sorted(src_by_key.items(), key=lambda item: _sort_key(item[1][:len(key)])):
        shown = src_row[0] if len(key) == 1 else tuple(src_row[:len(key)])
        tgt_row = tgt_by_key.get(text_key)
        if tgt_row is None:
            missing += 1
            differences.append(Difference("missing_in_target", key=shown))
            continue
        before = len(differences)
        for i, col in enumerate(compared[len(key):], start=len(key)):
            if not values_equal(src_row[i], tgt_row[i], col.rule, col.kind):
                differences.append(Difference("changed", key=shown, column=col.name, source=src_row[i],
                                              target=tgt_row[i]))
        changed_rows += len(differences) > before
    gone = len(sampled - src_by_key.keys())  # deleted from the source between sampling and reading
    detail = (f"{len(sampled):,} rows sampled ({how}, seed {seed}); key ({', '.join(key)}); "
              f"{_count(len(compared) - len(key), 'column')} compared")
    if missing or changed_rows:
        detail += (f"; {missing:,} missing in target, {_count(changed_rows, 'row')} with "
                   f"{_count(len(differences) - missing, 'changed value')}")
    elif keys:
        detail += "; all sampled rows match"
    else:
        detail += "; the source has no rows to sample"
    if gone:
        detail += f"; {gone:,} sampled rows were gone from the source when read back (not compared)"
    if duplicated:
        detail += f"; warning: {duplicated:,} rows share a key with another row (is ({', '.join(key)}) unique?)"
    return CheckResult(
        check="data_sample", passed=not differences, source=f"{len(sampled):,} rows sampled",
        target=f"{len(sampled) - gone - missing:,} of {len(sampled) - gone:,} found", detail=detail,
        seconds=round(time.monotonic() - started, 3), differences=differences[:MAX_REPORTED],
        total_differences=len(differences))


def _count(number: int, noun: str) -> str:
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def _sort_key(values: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple((v is None, str(type(v)), v if v is not None else 0) for v in values)
