"""PostgreSQL's catalog: whether a table exists, declared types, result type codes, sizes, the DDL that
rebuilds a table, and a random sample of keys."""

from __future__ import annotations

import random
import re
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.dialects.types import Column, TableDefinition, TypeInfo, structure_hash

_REFERENCES = re.compile(r"REFERENCES\s+((?:\"[^\"]+\"|[\w$]+)(?:\.(?:\"[^\"]+\"|[\w$]+))?)", re.I)
_SCAN_ROWS = 200_000  # tables estimated above this are sampled by pages (TABLESAMPLE SYSTEM)
_OVERSAMPLE = 20  # TABLESAMPLE aims at this many times ``size`` rows, then keeps ``size`` of them
_DECLARED = ("SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
             "WHERE a.attrelid = to_regclass(:t) AND a.attnum > 0 AND NOT a.attisdropped")


def table_exists(conn: Connection, quoted: str) -> bool:
    return bool(conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": quoted}).scalar())


def declared_types(conn: Connection, quoted: str) -> dict[str, str]:
    return {r[0]: r[1] for r in conn.execute(text(_DECLARED), {"t": quoted})}


def describe_type_codes(conn: Connection, codes: list[Any]) -> dict[int, TypeInfo]:
    oids = sorted({int(c) for c in codes if c is not None})
    if not oids:
        return {}
    rows = conn.execute(text("SELECT oid::int, typname, typcategory, format_type(oid, NULL) FROM pg_type "
                             "WHERE oid = ANY(:o)"), {"o": oids})
    return {oid: TypeInfo(name, cat, formatted) for oid, name, cat, formatted in rows}


def relation_size(conn: Connection, quoted: str) -> int:
    return int(conn.execute(text("SELECT pg_total_relation_size(CAST(:t AS regclass))"), {"t": quoted}).scalar() or 0)


def sample_keys(conn: Connection, keys: str, from_sql: str, where: str, table: bool, size: int,
                seed: int) -> tuple[list[tuple[Any, ...]], str]:
    """Big tables through ``TABLESAMPLE SYSTEM ... REPEATABLE (seed)``, keeping the ``size`` rows with the
    lowest seeded ``random()`` (a bounded top-N, never a full sort); small ones by ``ORDER BY random()``."""
    estimate = None
    if table:
        estimate = conn.execute(text(
            "SELECT CASE WHEN reltuples >= 0 THEN reltuples ELSE pg_relation_size(oid) / 100.0 END "
            "FROM pg_class WHERE oid = to_regclass(:t) AND relkind IN ('r', 'm')"), {"t": from_sql}).scalar()
    unit = random.Random(seed).uniform(-1, 1)
    percent = min(100.0, size * _OVERSAMPLE * 100.0 / float(estimate)) if estimate else 100.0
    while estimate and estimate > _SCAN_ROWS and percent < 100:
        conn.exec_driver_sql("SELECT setseed(%(u)s)", {"u": unit})
        rows = conn.exec_driver_sql(f"SELECT {keys} FROM {from_sql} TABLESAMPLE SYSTEM ({percent:.6f}) "
                                    f"REPEATABLE ({seed % 2**31}){where} ORDER BY random() LIMIT {int(size)}",
                                    {}).all()
        if len(rows) >= size:
            return [tuple(r) for r in rows], f"TABLESAMPLE SYSTEM {percent:.4g}%"
        percent *= 10
    conn.exec_driver_sql("SELECT setseed(%(u)s)", {"u": unit})
    rows = conn.exec_driver_sql(f"SELECT {keys} FROM {from_sql}{where} ORDER BY random() LIMIT {int(size)}",
                                {}).all()
    return [tuple(r) for r in rows], "ORDER BY random() LIMIT"


def table_definition(conn: Connection, qt: str, quote: Any) -> TableDefinition:
    """``qt``: the quoted table; ``quote``: quotes one identifier."""
    params = {"t": qt}
    cols = conn.execute(text(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid), "
        "a.attidentity, a.attgenerated, coll.collname "
        "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "LEFT JOIN pg_type ty ON ty.oid = a.atttypid "
        "LEFT JOIN pg_collation coll ON coll.oid = a.attcollation AND a.attcollation <> ty.typcollation "
        "WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
    ), params).all()
    column_ddl, columns = [], []
    for name, type_, notnull, default, identity, generated, collation in cols:
        ddl = f"{quote(name)} {type_}"
        if collation:
            ddl += f" COLLATE {quote(collation)}"
        if generated == "s":
            ddl += f" GENERATED ALWAYS AS ({default}) STORED"
        elif identity in ("a", "d"):
            ddl += f" GENERATED {'ALWAYS' if identity == 'a' else 'BY DEFAULT'} AS IDENTITY"
        elif default is not None:
            ddl += f" DEFAULT {default}"
        if notnull:
            ddl += " NOT NULL"
        column_ddl.append(ddl)
        columns.append(Column(name, type_, generated == "s"))
    constraints = conn.execute(text(
        "SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE conrelid = CAST(:t AS regclass) ORDER BY contype = 'f', conname"), params).all()
    indexes = conn.execute(text(
        "SELECT pg_get_indexdef(i.indexrelid) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE i.indrelid = CAST(:t AS regclass) AND NOT EXISTS (SELECT 1 FROM pg_constraint k "
        "WHERE k.conindid = i.indexrelid AND k.conrelid = i.indrelid) ORDER BY c.relname"), params).scalars().all()
    pk = conn.execute(text(
        "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
        "AND a.attnum = ANY(i.indkey) WHERE i.indrelid = CAST(:t AS regclass) AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)"), params).scalars().all()
    sequences = conn.execute(text(
        "SELECT s.oid::regclass::text, a.attname FROM pg_depend d JOIN pg_class s ON s.oid = d.objid "
        "JOIN pg_attribute a ON a.attrelid = d.refobjid AND a.attnum = d.refobjsubid "
        "WHERE d.refobjid = CAST(:t AS regclass) AND s.relkind = 'S' AND d.deptype = 'a'"), params).all()
    plain = [f"ALTER TABLE {qt} ADD CONSTRAINT {quote(n)} {d}" for n, t, d in constraints if t != "f"]
    fks = [f"ALTER TABLE {qt} ADD CONSTRAINT {quote(n)} {d}" for n, t, d in constraints if t == "f"]
    structure = structure_hash({"columns": sorted(column_ddl), "constraints": sorted(map(list, constraints)),
                                "indexes": sorted(indexes)})
    return TableDefinition(
        columns=columns, create=[f"CREATE TABLE {qt} (\n    " + ",\n    ".join(column_ddl) + "\n)", *plain],
        foreign_keys=fks, indexes=list(indexes), primary_key=list(pk),
        references=sorted({m for _, t, d in constraints if t == "f" for m in _REFERENCES.findall(d)}),
        owned_sequences=[[s, c] for s, c in sequences], structure=structure,
    )


def engine_declared_types(engine: Engine, quoted: str) -> dict[str, str]:
    with engine.connect() as conn:
        found = declared_types(conn, quoted)
        conn.rollback()
    return found
