"""What a table is, for backup and restore: its definition (columns, constraints, indexes, as the DDL that
rebuilds it) and its content fingerprint (row count + an order-independent checksum of every row).

Both are read from the live database the same way at backup time and after a restore, so "restored" means
"equal to the manifest" by the same measure. Columns are compared by name, not position: a down step that
re-adds a dropped column at the end leaves the table as it was.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

_MOD = 1 << 64
_FETCH = 10_000
_REFERENCES = re.compile(r"REFERENCES\s+((?:\"[^\"]+\"|[\w$]+)(?:\.(?:\"[^\"]+\"|[\w$]+))?)", re.I)


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    generated: bool = False  # computed by the database: never inserted


@dataclass
class TableDefinition:
    """The DDL that rebuilds a table (in order) and a fingerprint of its structure."""

    columns: list[Column]
    create: list[str]  # CREATE TABLE, then constraints other than foreign keys
    foreign_keys: list[str]  # ALTER TABLE … ADD CONSTRAINT … FOREIGN KEY, run after every table has its data
    indexes: list[str]  # CREATE INDEX (and triggers on SQLite)
    primary_key: list[str]
    references: list[str]  # tables this one's foreign keys point at
    owned_sequences: list[list[str]] = field(default_factory=list)  # [sequence, column] (PostgreSQL)
    structure: str = ""  # SHA-256 of the normalized structure

    @property
    def insertable(self) -> list[str]:
        return [c.name for c in self.columns if not c.generated]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableDefinition:
        return cls(**{**data, "columns": [Column(**c) for c in data["columns"]]})


@dataclass(frozen=True)
class Fingerprint:
    rows: int
    checksum: str

    def __str__(self) -> str:
        return f"{self.rows} rows, checksum {self.checksum[:12]}"


def split_name(table: str) -> tuple[str | None, str]:
    schema, _, name = table.rpartition(".")
    return schema or None, name


def quote_table(conn: Connection, table: str) -> str:
    prep = conn.dialect.identifier_preparer
    schema, name = split_name(table)
    return ".".join(prep.quote_identifier(p) for p in (schema, name) if p)


def table_exists(conn: Connection, table: str) -> bool:
    if conn.dialect.name == "postgresql":
        return conn.execute(text("SELECT to_regclass(:t) IS NOT NULL"), {"t": quote_table(conn, table)}).scalar()
    schema, name = split_name(table)
    master = f"{conn.dialect.identifier_preparer.quote_identifier(schema)}.sqlite_master" if schema else "sqlite_master"
    # SQLite matches table names case-insensitively (`UPDATE Users` writes users)
    return conn.execute(text(f"SELECT count(*) FROM {master} WHERE type = 'table' AND name = :n COLLATE NOCASE"),
                        {"n": name}).scalar() == 1


def _hash(parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


# -- definitions ---------------------------------------------------------------------------------------
def definition(conn: Connection, table: str) -> TableDefinition:
    """The definition of an existing table, read from the database's catalog."""
    if conn.dialect.name == "postgresql":
        return _pg_definition(conn, table)
    if conn.dialect.name == "sqlite":
        return _sqlite_definition(conn, table)
    raise NotImplementedError(f"backups of {conn.dialect.name} tables are not supported yet")


def _pg_definition(conn: Connection, table: str) -> TableDefinition:
    qt = quote_table(conn, table)
    params = {"t": qt}
    cols = conn.execute(text(
        "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid), "
        "a.attidentity, a.attgenerated, coll.collname "
        "FROM pg_attribute a LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
        "LEFT JOIN pg_type ty ON ty.oid = a.atttypid "
        "LEFT JOIN pg_collation coll ON coll.oid = a.attcollation AND a.attcollation <> ty.typcollation "
        "WHERE a.attrelid = CAST(:t AS regclass) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"
    ), params).all()
    prep = conn.dialect.identifier_preparer
    column_ddl, columns = [], []
    for name, type_, notnull, default, identity, generated, collation in cols:
        ddl = f"{prep.quote_identifier(name)} {type_}"
        if collation:
            ddl += f" COLLATE {prep.quote_identifier(collation)}"
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
    plain = [f"ALTER TABLE {qt} ADD CONSTRAINT {prep.quote_identifier(n)} {d}" for n, t, d in constraints if t != "f"]
    fks = [f"ALTER TABLE {qt} ADD CONSTRAINT {prep.quote_identifier(n)} {d}" for n, t, d in constraints if t == "f"]
    structure = _hash({"columns": sorted(column_ddl), "constraints": sorted(map(list, constraints)),
                       "indexes": sorted(indexes)})
    return TableDefinition(
        columns=columns, create=[f"CREATE TABLE {qt} (\n    " + ",\n    ".join(column_ddl) + "\n)", *plain],
        foreign_keys=fks, indexes=list(indexes), primary_key=list(pk),
        references=sorted({m for _, t, d in constraints if t == "f" for m in _REFERENCES.findall(d)}),
        owned_sequences=[[s, c] for s, c in sequences], structure=structure,
    )


def _sqlite_definition(conn: Connection, table: str) -> TableDefinition:
    schema, name = split_name(table)
    prefix = f"{conn.dialect.identifier_preparer.quote_identifier(schema)}." if schema else ""
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
    structure = _hash({
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


# -- content -------------------------------------------------------------------------------------------
def fingerprint(conn: Connection, relation: str, columns: list[str]) -> Fingerprint:
    """Row count and order-independent checksum of ``relation`` (a quoted table name) over ``columns``,
    taken by name so column order does not matter. PostgreSQL hashes in SQL; others hash in Python."""
    ordered = sorted(columns)
    prep = conn.dialect.identifier_preparer
    cols = ", ".join(prep.quote_identifier(c) for c in ordered)
    if conn.dialect.name == "postgresql":
        return _pg_fingerprint(conn, relation, cols, ordered)
    rows, lo, hi = 0, 0, 0
    result = conn.execution_options(stream_results=True).execute(text(f"SELECT {cols} FROM {relation}"))
    for batch in result.partitions(_FETCH):
        for row in batch:
            digest = hashlib.blake2b(_row_bytes(row), digest_size=16).digest()
            lo = (lo + int.from_bytes(digest[:8], "big")) % _MOD
            hi = (hi + int.from_bytes(digest[8:], "big")) % _MOD
            rows += 1
    return Fingerprint(rows, f"{lo:016x}{hi:016x}{_hash(ordered)[:16]}")


def _pg_fingerprint(conn: Connection, relation: str, cols: str, ordered: list[str]) -> Fingerprint:
    # text forms are exact (floats print shortest-exact, numerics keep their scale) once the session's
    # time zone and styles are fixed. Each row's whole text is hashed twice (two seeds of hashtextextended,
    # 64 bits each; summing bigints accumulates in 128-bit integers, about twice as fast as md5 into numeric)
    conn.execute(text("SELECT set_config('TimeZone', 'UTC', true), set_config('DateStyle', 'ISO, YMD', true), "
                      "set_config('IntervalStyle', 'postgres', true), set_config('extra_float_digits', '1', true)"))
    rows, lo, hi = conn.execute(text(
        f"SELECT count(*), coalesce(sum(hashtextextended(r, 0)), 0), coalesce(sum(hashtextextended(r, 1)), 0) "
        f"FROM (SELECT ROW({cols})::text AS r FROM {relation}) AS rows_of")).one()
    return Fingerprint(int(rows), f"{int(lo) % _MOD:016x}{int(hi) % _MOD:016x}{_hash(ordered)[:16]}")


def _row_bytes(row: Any) -> bytes:
    return "\x1f".join(_value_text(v) for v in row).encode()


def _value_text(value: Any) -> str:
    if value is None:
        return "\x00"
    if isinstance(value, bool):
        return f"b{int(value)}"
    if isinstance(value, int):
        return f"i{value}"
    if isinstance(value, float):
        return f"f{value!r}"
    if isinstance(value, Decimal):
        return f"d{value}"
    if isinstance(value, bytes | bytearray | memoryview):
        return f"x{bytes(value).hex()}"
    if isinstance(value, datetime | date | time | timedelta):
        return f"t{value.isoformat() if not isinstance(value, timedelta) else value.total_seconds()}"
    if isinstance(value, str):
        return f"s{value}"
    return f"j{json.dumps(value, sort_keys=True, default=str)}"
