"""SQLite's catalog through its pragmas, which know more than SQLAlchemy's reflection: declared types, index
definitions (parsed from sqlite_master), ON DELETE of inline REFERENCES, column-level UNIQUE, and the DDL
that rebuilds a table."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.dialects.types import (
    Column,
    RawForeignKey,
    RawIndex,
    TableDefinition,
    split_name,
    structure_hash,
)

Quote = Callable[[str], str]


def pragma(engine: Engine, schema: str | None, name: str, argument: str, quote: Quote) -> list[Any]:
    prefix = f"{quote(schema)}." if schema else ""
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(f"PRAGMA {prefix}{name}({quote(argument)})").all()
        conn.rollback()
    return rows


def table_exists(conn: Connection, table: str, quote: Quote) -> bool:
    schema, name = split_name(table)
    master = f"{quote(schema)}.sqlite_master" if schema else "sqlite_master"
    # SQLite matches table names case-insensitively (`UPDATE Users` writes users)
    return conn.execute(text(f"SELECT count(*) FROM {master} WHERE type = 'table' AND name = :n COLLATE NOCASE"),
                        {"n": name}).scalar() == 1


def declared_types(engine: Engine, table: str, quote: Quote) -> dict[str, str]:
    schema, name = split_name(table)
    return {r[1]: r[2] or "" for r in pragma(engine, schema, "table_info", name, quote)}


def split_top_level(sql: str, start: int) -> tuple[list[str], int]:
    """Comma-separated items of the parenthesized list opening at ``sql[start]``, and the index after it."""
    items, depth, quote, current = [], 0, "", ""
    for i in range(start, len(sql)):
        char = sql[i]
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"`[":
            quote = "]" if char == "[" else char
        elif char == "(":
            depth += 1
            if depth == 1:
                continue
        elif char == ")":
            depth -= 1
            if depth == 0:
                return [*items, current.strip()], i + 1
        elif char == "," and depth == 1:
            items.append(current.strip())
            current = ""
            continue
        current += char
    return [*items, current.strip()], len(sql)


def indexes(engine: Engine, table: str, quote: Quote) -> list[RawIndex]:
    """Indexes made by CREATE INDEX (pk / unique constraints are compared as constraints), parsed from
    their SQL: elements as written, and the partial-index predicate."""
    schema, name = split_name(table)
    master = f"{quote(schema)}.sqlite_master" if schema else "sqlite_master"
    found = []
    for row in pragma(engine, schema, "index_list", name, quote):
        index_name, unique, origin = row[1], bool(row[2]), row[3]
        if origin != "c":
            continue
        with engine.connect() as conn:
            sql = conn.exec_driver_sql(f"SELECT sql FROM {master} WHERE type = 'index' AND name = ?",
                                       (index_name,)).scalar() or ""
            conn.rollback()
        on = re.search(r"\sON\s", sql, re.IGNORECASE)
        opening = sql.find("(", on.end()) if on else -1
        if opening < 0:
            continue
        items, end = split_top_level(sql, opening)
        rest = sql[end:].strip()
        where = rest[5:] if rest[:5].upper() == "WHERE" else None
        found.append(RawIndex(index_name, tuple((i, ()) for i in items), unique, where))
    return found


def foreign_keys(engine: Engine, table: str, quote: Quote) -> list[RawForeignKey]:
    """The pragma knows ON DELETE of inline REFERENCES, the reflection does not."""
    schema, name = split_name(table)
    grouped: dict[int, list[Any]] = {}
    for row in pragma(engine, schema, "foreign_key_list", name, quote):
        grouped.setdefault(row[0], []).append(row)
    keys = []
    for rows in grouped.values():
        rows.sort(key=lambda r: r[1])
        referred_cols = [r[4] for r in rows]
        if any(c is None for c in referred_cols):
            pk = inspect(engine).get_pk_constraint(rows[0][2], schema=schema)
            referred_cols = pk.get("constrained_columns") or []
        keys.append(RawForeignKey(tuple(r[3] for r in rows), rows[0][2], tuple(referred_cols),
                                  rows[0][6].lower(), rows[0][5].lower()))
    return keys


def unique_constraints(engine: Engine, table: str, quote: Quote) -> list[tuple[str, ...]]:
    """The pragma also sees column-level UNIQUE, the reflection does not."""
    schema, name = split_name(table)
    return [tuple(r[2] for r in sorted(pragma(engine, schema, "index_info", row[1], quote), key=lambda r: r[0]))
            for row in pragma(engine, schema, "index_list", name, quote) if row[3] == "u"]


def table_definition(conn: Connection, table: str, quote: Quote) -> TableDefinition:
    schema, name = split_name(table)
    prefix = f"{quote(schema)}." if schema else ""
    master = conn.execute(text(
        f"SELECT type, name, sql FROM {prefix}sqlite_master WHERE tbl_name = :n COLLATE NOCASE AND sql IS NOT NULL "
        "ORDER BY type = 'trigger', type <> 'table', name"), {"n": name}).all()
    info = conn.execute(text(f"SELECT name, type, \"notnull\", dflt_value, pk, hidden FROM "
                             f"{prefix}pragma_table_xinfo(:n)"), {"n": name}).all()
    index_list = conn.execute(text(f"SELECT name, \"unique\", origin, partial FROM {prefix}pragma_index_list(:n)"),
                              {"n": name}).all()
    index_cols = {ix: conn.execute(text(f"SELECT name FROM {prefix}pragma_index_info(:i) ORDER BY seqno"),
                                   {"i": ix}).scalars().all() for ix, *_ in index_list}
    fks = conn.execute(text(f"SELECT \"table\", \"from\", \"to\", on_update, on_delete FROM "
                            f"{prefix}pragma_foreign_key_list(:n)"), {"n": name}).all()
    columns = [Column(c[0], (c[1] or "").upper(), c[5] in (2, 3)) for c in info]
    structure = structure_hash({
        "columns": sorted([c[0], (c[1] or "").upper(), c[2], c[3], c[4]] for c in info),
        "indexes": sorted([ix, u, o, p, index_cols[ix]] for ix, u, o, p in index_list),
        "foreign_keys": sorted(map(list, fks)),
        "triggers": sorted(sql for type_, _, sql in master if type_ == "trigger"),
    })
    pk = [c[0] for c in sorted((c for c in info if c[4]), key=lambda c: c[4])]
    return TableDefinition(
        columns=columns, create=[sql for type_, _, sql in master if type_ == "table"], foreign_keys=[],
        indexes=[sql for type_, _, sql in master if type_ != "table"], primary_key=pk,
        references=sorted({f[0] for f in fks if f[0] != name}), structure=structure,
    )


def relation_size(conn: Connection, table: str) -> int | None:
    try:
        return int(conn.execute(text("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = :n"),
                                {"n": split_name(table)[1]}).scalar() or 0)
    except Exception:
        return None
