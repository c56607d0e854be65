"""What a table is, for backup and restore: its definition (columns, constraints, indexes, as the DDL that
rebuilds it) and its content fingerprint (row count + an order-independent checksum of every row).

Both are read from the live database the same way at backup time and after a restore, so "restored" means
"equal to the manifest" by the same measure. Columns are compared by name, not position: a down step that
re-adds a dropped column at the end leaves the table as it was.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.dialects import dialect_of
from airflow_migrate_provider.core.dialects.types import Column, TableDefinition, split_name, structure_hash

_MOD = 1 << 64
_FETCH = 10_000


@dataclass(frozen=True)
class Fingerprint:
    rows: int
    checksum: str
    # [segment, rows, seed-0 hash sum] per non-empty segment (by primary key), where the database hashes in SQL:
    # a restore then finds the segments that changed and compares only their rows (core/backup/segments.py)
    segments: list[list[int]] | None = field(default=None, compare=False, hash=False)
    # {"scheme": ..., "segments": [[segment, rows, quick hash sum], ...]}: the restore's cheap first pass
    quick: dict[str, Any] | None = field(default=None, compare=False, hash=False)

    def __str__(self) -> str:
        return f"{self.rows} rows, checksum {self.checksum[:12]}"


def quote_table(conn: Connection, table: str) -> str:
    prep = conn.dialect.identifier_preparer
    schema, name = split_name(table)
    return ".".join(prep.quote_identifier(p) for p in (schema, name) if p)


def table_exists(conn: Connection, table: str) -> bool:
    """True when ``table`` exists, as the database resolves the name (SQLite: case-insensitively)."""
    return dialect_of(conn).table_exists(conn, table)


def definition(conn: Connection, table: str) -> TableDefinition:
    """The definition of an existing table, read from the database's catalog."""
    return dialect_of(conn).table_definition(conn, table)


# -- content -------------------------------------------------------------------------------------------
def fingerprint(conn: Connection, relation: str, columns: list[str], keys: list[str] | None = None) -> Fingerprint:
    """Row count and order-independent checksum of ``relation`` (a quoted table name) over ``columns``,
    taken by name so column order does not matter. Hashed in SQL where the dialect can, else in Python. With
    the primary ``keys``, where the dialect hashes in SQL, the same sums per segment of the keys as well."""
    ordered = sorted(columns)
    prep = conn.dialect.identifier_preparer
    cols = ", ".join(prep.quote_identifier(c) for c in ordered)
    if keys:
        sums = dialect_of(conn).segment_sums(conn, relation, cols, ", ".join(prep.quote_identifier(k) for k in keys),
                                             both_seeds=True)
        if sums is not None:
            lo, hi = sum(s[2] for s in sums) % _MOD, sum(s[3] for s in sums) % _MOD
            return Fingerprint(sum(s[1] for s in sums), f"{lo:016x}{hi:016x}{structure_hash(ordered)[:16]}",
                               sorted([s, n, h] for s, n, h, _ in sums), _quick(conn, relation, ordered, keys))
    hashed = dialect_of(conn).table_hash(conn, relation, cols)
    if hashed is not None:
        rows, lo, hi = hashed
        return Fingerprint(rows, f"{lo:016x}{hi:016x}{structure_hash(ordered)[:16]}")
    rows, lo, hi = 0, 0, 0
    result = conn.execution_options(stream_results=True).execute(text(f"SELECT {cols} FROM {relation}"))
    for batch in result.partitions(_FETCH):
        for row in batch:
            digest = hashlib.blake2b(_row_bytes(row), digest_size=16).digest()
            lo = (lo + int.from_bytes(digest[:8], "big")) % _MOD
            hi = (hi + int.from_bytes(digest[8:], "big")) % _MOD
            rows += 1
    return Fingerprint(rows, f"{lo:016x}{hi:016x}{structure_hash(ordered)[:16]}")


def _quick(conn: Connection, relation: str, columns: list[str], keys: list[str]) -> dict[str, Any] | None:
    quick = dialect_of(conn).quick_segment_sums(conn, relation, columns, keys)
    return None if quick is None else {"scheme": quick[0], "segments": quick[1]}


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


__all__ = ["Column", "Fingerprint", "TableDefinition", "definition", "fingerprint", "quote_table", "split_name",
           "table_exists"]
