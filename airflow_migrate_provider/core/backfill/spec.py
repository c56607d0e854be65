"""A backfill step resolved against the real tables: which columns, from which expressions, of which types.

Everything a copy needs to know, and every reason it cannot start, is found here before any row moves:
missing tables or columns, a key that is not unique or cannot be split into ranges, types that cannot be
copied into each other. Problems name the plan field, so the user knows what to edit.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect
from sqlalchemy import types as sa_types
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.dialects import Dialect, dialect_of
from airflow_migrate_provider.errors import BackfillSpecError, db_error_line
from airflow_migrate_provider.plan.model import BackfillStep

# copying a value of the source category into the target category is allowed when listed here
_COMPATIBLE = {
    "integer": {"integer", "number", "text", "bool", "json"},
    "number": {"number", "text", "json"},
    "text": {"text", "datetime", "json", "other", "binary"},
    "datetime": {"datetime", "text"},
    "bool": {"bool", "integer", "text"},
    "json": {"json", "text"},
    "binary": {"binary"},
    "other": {"other", "text"},
}
# integer type names of result columns (PostgreSQL's, and MariaDB's: tinyint(1) is its boolean, copied into bool)
_INTEGERS = {"int2", "int4", "int8", "smallint", "integer", "bigint", "oid", "tinyint", "mediumint", "year"}


def category_of_sa_type(sa_type: Any) -> str:
    """A coarse, cross-dialect category for a SQLAlchemy (reflected) type."""
    if isinstance(sa_type, sa_types.Boolean):
        return "bool"
    if isinstance(sa_type, sa_types.Integer):
        return "integer"
    if isinstance(sa_type, (sa_types.Numeric, sa_types.Float)):
        return "number"
    if isinstance(sa_type, (sa_types.DateTime, sa_types.Date, sa_types.Time, sa_types.Interval)):
        return "datetime"
    if isinstance(sa_type, sa_types.JSON):
        return "json"
    if isinstance(sa_type, (sa_types.String, sa_types.Enum, sa_types.Uuid)):
        return "text"
    if isinstance(sa_type, sa_types._Binary):
        return "binary"
    return "other"


def _pg_category(typname: str, typcategory: str) -> str:
    if typname in _INTEGERS:
        return "integer"
    if typname == "uuid":
        return "text"
    return {"N": "number", "S": "text", "D": "datetime", "B": "bool", "T": "datetime"}.get(
        typcategory, "json" if typname in ("json", "jsonb") else "binary" if typname == "bytea" else "other")


@dataclass(frozen=True)
class TargetColumn:
    """One copied column: its target name, the source expression that feeds it, and the target's type."""

    name: str
    source_expr: str
    target_type: str  # as the target database spells it (PostgreSQL: format_type), for casts
    target_category: str
    source_category: str | None = None  # None: not known before reading (SQLite expressions)


@dataclass(frozen=True)
class BackfillSpec:
    """A backfill step bound to real tables. Built by :func:`resolve_spec`."""

    step: BackfillStep
    src: Dialect
    tgt: Dialect
    source_from: str
    target_table: str  # quoted
    columns: list[TargetColumn]
    key: list[str]  # target column names
    key_exprs: list[str]  # the source expressions of the key
    integer_key: bool
    watermark_expr: str | None
    filter: str | None
    lock_tables: list[str]  # quoted
    same_database: bool
    lock_names: tuple[str, ...] = ()  # the same tables, as the plan names them

    @property
    def step_id(self) -> str:
        return self.step.id

    @property
    def key_idents(self) -> list[str]:
        return [self.tgt.ident(k) for k in self.key]

    @property
    def column_idents(self) -> list[str]:
        return [self.tgt.ident(c.name) for c in self.columns]

    @property
    def fast_path(self) -> bool:
        """Rows stream from the source into the target with no value in Python (PostgreSQL → PostgreSQL binary COPY,
        MariaDB → MariaDB LOAD DATA of lines the source formats): ``Dialect.streams_from``."""
        return self.tgt.streams_from(self.src)

    def where(self, *conditions: str | None) -> str:
        parts = [c for c in (*conditions, self.filter) if c]
        return f" WHERE {' AND '.join(f'({p})' for p in parts)}" if parts else ""

    def select_list(self, cast_to_target: bool) -> str:
        """The source SELECT list, one expression per target column, named like the target column.

        On the streaming path each expression is as the target's adapter wants it (``Dialect.stream_column``:
        PG → PG casts to the target's exact type, so binary COPY always matches). PG sources read JSON as text
        elsewhere, so big numbers in JSON never pass through a Python float.
        """
        items = []
        for col in self.columns:
            expr = col.source_expr
            if cast_to_target:
                expr = self.tgt.stream_column(expr, col.target_type)
            elif col.source_category == "json":
                expr = self.src.read_json_as_text(expr)
            items.append(f"{expr} AS {self.src.ident(col.name)}")
        return ", ".join(items)

    def describe(self) -> list[str]:
        how = (self.tgt.stream_text if self.fast_path else self.tgt.bulk_text if self.tgt.copy_fast_path else
               "keyset SELECT batches, multi-row INSERT into the target")
        return [
            f"copy {self.source_from} → {self.target_table} ({len(self.columns)} columns; key "
            f"{', '.join(self.key)}; {how})",
            f"source rows: SELECT {self.select_list(self.fast_path)} FROM {self.source_from}"
            f"{self.where(None)}",
        ]


def _fail(step: BackfillStep, problems: list[str]) -> None:
    if problems:
        raise BackfillSpecError(step.id, problems)


def _split(name: str) -> tuple[str | None, str]:
    schema, _, table = name.rpartition(".")
    return (schema or None), table


def _reflect_table(engine: Engine, name: str) -> list[dict[str, Any]] | None:
    schema, table = _split(name)
    try:
        return inspect(engine).get_columns(table, schema=schema)
    except sa_exc.NoSuchTableError:
        return None


def _unique_column_sets(engine: Engine, name: str) -> list[set[str]]:
    schema, table = _split(name)
    insp = inspect(engine)
    sets = []
    pk = insp.get_pk_constraint(table, schema=schema).get("constrained_columns") or []
    if pk:
        sets.append(set(pk))
    sets += [set(u["column_names"]) for u in insp.get_unique_constraints(table, schema=schema)]
    sets += [set(i["column_names"]) for i in insp.get_indexes(table, schema=schema)
             if i.get("unique") and all(i["column_names"])
             and not any(k.endswith("_where") and v is not None for k, v in (i.get("dialect_options") or {}).items())]
    return sets


def _source_output(engine: Engine, sql: Dialect, select: str) -> tuple[list[str], dict[str, str]]:
    """Column names of a source SELECT (run with no rows) and, on PostgreSQL, their categories."""
    with engine.connect() as conn:
        result = conn.exec_driver_sql(f"SELECT * FROM ({select}) AS probe WHERE 1 = 0")
        names = list(result.keys())
        type_codes = [d[1] for d in result.cursor.description] if result.cursor is not None else []
        result.close()
        categories: dict[str, str] = {}
        if type_codes and (described := sql.describe_type_codes(conn, type_codes)):
            found = {oid: _pg_category(info.typname, info.typcategory) for oid, info in described.items()}
            categories = {n: found.get(int(t), "other") for n, t in zip(names, type_codes, strict=True)
                          if t is not None}
        conn.rollback()
    return names, categories


def resolve_spec(step: BackfillStep, source: Engine, target: Engine) -> BackfillSpec:
    """Bind ``step`` to the real source and target tables, or raise BackfillSpecError listing every problem."""
    src, tgt = dialect_of(source), dialect_of(target)
    where = f"steps.{step.id}"
    problems: list[str] = []
    same_database = source.url == target.url

    target_columns = _reflect_table(target, step.target)
    if target_columns is None:
        _fail(step, [f"{where}.target: table '{step.target}' does not exist in the target database; create "
                     f"it in an earlier schema step of the plan"])
    assert target_columns is not None
    target_columns = [c for c in target_columns if not c.get("computed")]
    target_by_name = {c["name"]: c for c in target_columns}

    source_table_columns: dict[str, dict[str, Any]] = {}
    if step.source.table is not None:
        reflected = _reflect_table(source, step.source.table)
        if reflected is None:
            _fail(step, [f"{where}.source.table: table '{step.source.table}' does not exist in the source "
                         f"database"])
        source_table_columns = {c["name"]: c for c in reflected or []}
        source_from = src.ident(step.source.table)
        if same_database and step.source.table == step.target:
            problems.append(f"{where}.target: the target is the source table itself")
    else:
        source_from = f"({src.fragment(step.source.query or '')}) AS src"

    for name in step.columns:
        if name not in target_by_name:
            problems.append(f"{where}.columns.{name}: the target table '{step.target}' has no column '{name}' "
                            f"(its columns: {', '.join(target_by_name)})")

    # which target column is fed by which source expression
    chosen: list[tuple[str, str]] = []
    query_names: list[str] = []
    if step.source.query is not None:
        try:
            query_names, _ = _source_output(source, src, src.fragment(step.source.query))
        except sa_exc.SQLAlchemyError as exc:
            _fail(step, [f"{where}.source.query: the query fails: {db_error_line(exc)}"])
        for name in query_names:
            if name not in target_by_name and name not in step.columns:
                problems.append(f"{where}.source.query: output column '{name}' has no column of that name in "
                                f"target table '{step.target}' (rename it with AS, or drop it)")
    available = set(query_names) if step.source.query is not None else set(source_table_columns)
    for col in target_columns:
        name = col["name"]
        if name in step.columns:
            chosen.append((name, src.fragment(step.columns[name])))
        elif name in available:
            chosen.append((name, src.ident(name)))
        elif not col.get("nullable", True) and col.get("default") is None and col.get("autoincrement") is not True:
            problems.append(f"{where}.columns: target column '{name}' is NOT NULL without a default, and the "
                            f"source has no column '{name}': map it in `columns` ({name}: <source expression>)")
    for k in step.key:
        if k not in target_by_name:
            problems.append(f"{where}.key: key column '{k}' is not a column of target table '{step.target}'")
        elif k not in dict(chosen):
            problems.append(f"{where}.key: key column '{k}' is not fed from the source (no source column of "
                            f"that name and no `columns` entry)")
    _fail(step, problems)

    expr_of = dict(chosen)
    key_exprs = [expr_of[k] for k in step.key]
    watermark = src.fragment(step.watermark) if step.watermark else None
    filter_sql = src.fragment(step.source.filter) if step.source.filter else None

    # one probe query proves every expression, the filter and the watermark parse and run on the source
    probe_select = ", ".join(f"{e} AS {src.ident(n)}" for n, e in chosen)
    probe = f"SELECT {probe_select} FROM {source_from}" + (f" WHERE ({filter_sql})" if filter_sql else "")
    try:
        _, source_categories = _source_output(source, src, probe)
    except sa_exc.SQLAlchemyError as exc:
        _fail(step, [f"{where}: reading the source fails: {db_error_line(exc)} (check `columns`, "
                     f"`source.filter` and the source table)"])
        raise
    if watermark:
        try:
            _source_output(source, src, f"SELECT max({watermark}) AS wm FROM {source_from}")
        except sa_exc.SQLAlchemyError as exc:
            _fail(step, [f"{where}.watermark: '{step.watermark}' does not work on the source: "
                         f"{db_error_line(exc)}"])
    for name, expr in chosen:
        if name not in source_categories and expr == src.ident(name) and name in source_table_columns:
            source_categories[name] = category_of_sa_type(source_table_columns[name]["type"])

    with target.connect() as conn:
        pg_types = tgt.cast_types(conn, step.target)
        conn.rollback()
    columns = []
    for name, expr in chosen:
        target_type = pg_types.get(name) or target_by_name[name]["type"].compile(dialect=target.dialect)
        target_category = category_of_sa_type(target_by_name[name]["type"])
        source_category = source_categories.get(name)
        if source_category and target_category not in _COMPATIBLE.get(source_category, {target_category}):
            shown = f"`columns.{name}`" if name in step.columns else f"source column '{name}'"
            problems.append(f"{where}.columns.{name}: {shown} is {source_category} but target column '{name}' "
                            f"is {target_type} ({target_category}); cast it in `columns`")
        columns.append(TargetColumn(name, expr, target_type, target_category, source_category))

    key_categories = [source_categories.get(k) or category_of_sa_type(target_by_name[k]["type"])
                      for k in step.key]
    for k, cat in zip(step.key, key_categories, strict=True):
        if cat in ("json", "binary", "bool", "other"):
            problems.append(f"{where}.key: key column '{k}' is {cat}; keys must be orderable values "
                            f"(integers, text, timestamps, decimals)")
    integer_key = len(step.key) == 1 and key_categories[0] == "integer"
    if step.chunks > 1 and not integer_key:
        problems.append(f"{where}.chunks: {step.chunks} chunks need a single integer key to split into "
                        f"ranges, but the key is {', '.join(step.key)} ({', '.join(map(str, key_categories))}); "
                        f"use `chunks: 1`")

    if set(step.key) not in _unique_column_sets(target, step.target):
        problems.append(f"{where}.key: target table '{step.target}' has no primary key or unique index on "
                        f"({', '.join(step.key)}); add one (batches are re-copied idempotently by key)")
    _fail(step, problems)

    if _first_null_key_row(source, step, key_exprs, source_from, filter_sql):
        _fail(step, [f"{where}.key: the key ({', '.join(step.key)}) is NULL in some source rows; a key must identify "
                     f"every row: leave those rows out with `source.filter` or choose another key"])

    key_is_plain = all(e == src.ident(k) for k, e in zip(step.key, key_exprs, strict=True))
    source_unique = (step.source.table is not None and key_is_plain
                     and set(step.key) in _unique_column_sets(source, step.source.table))
    if not source_unique:
        duplicate = _first_duplicate_key(source, key_exprs, source_from, filter_sql)
        if duplicate is not None:
            _fail(step, [f"{where}.key: the key ({', '.join(step.key)}) is not unique in the source: "
                         f"{duplicate!r} appears more than once"])

    lock_names = step.source.lock_tables or ([step.source.table] if step.source.table else [])
    if step.phases.final_sync:
        for name in step.source.lock_tables:
            if _reflect_table(source, name) is None:
                problems.append(f"{where}.source.lock_tables: table '{name}' does not exist in the source")
    _fail(step, problems)
    return BackfillSpec(
        step=step, src=src, tgt=tgt, source_from=source_from, target_table=tgt.ident(step.target),
        columns=columns, key=list(step.key), key_exprs=key_exprs, integer_key=integer_key,
        watermark_expr=watermark, filter=filter_sql, lock_tables=[src.ident(n) for n in lock_names],
        lock_names=tuple(lock_names),
        same_database=same_database,
    )


def _first_null_key_row(engine: Engine, step: BackfillStep, key_exprs: list[str], source_from: str,
                        filter_sql: str | None) -> bool:
    """True when some source row has a NULL key (skipped when the key is the source table's primary key)."""
    if step.source.table is not None:
        schema, table = _split(step.source.table)
        pk = inspect(engine).get_pk_constraint(table, schema=schema).get("constrained_columns") or []
        if set(pk) == set(step.key) and all(e == dialect_of(engine).ident(k) for k, e in zip(step.key, key_exprs,
                                                                                            strict=True)):
            return False
    conditions = [" OR ".join(f"({e}) IS NULL" for e in key_exprs), *([filter_sql] if filter_sql else [])]
    with engine.connect() as conn:
        row = conn.exec_driver_sql(f"SELECT 1 FROM {source_from} WHERE {' AND '.join(f'({c})' for c in conditions)} "
                                   f"LIMIT 1", {}).first()
        conn.rollback()
    return row is not None


def _first_duplicate_key(engine: Engine, key_exprs: list[str], source_from: str,
                         filter_sql: str | None) -> tuple[Any, ...] | None:
    keys = ", ".join(key_exprs)
    where = f" WHERE ({filter_sql})" if filter_sql else ""
    with engine.connect() as conn:
        row = conn.exec_driver_sql(
            f"SELECT {keys} FROM {source_from}{where} GROUP BY {keys} HAVING count(*) > 1 LIMIT 1"
        ).first()
        conn.rollback()
    return tuple(row) if row is not None else None
