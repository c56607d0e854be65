"""PostgreSQL restore specifics: sequences and identity columns that a rebuild must continue, other tables'
foreign keys that a rebuild detaches and re-adds, one FULL JOIN that finds the differing keys, and the
refusal to delete rows whose ON DELETE would reach a table outside the backup."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.dialects import pg_hashing
from airflow_migrate_provider.core.dialects.types import TableDefinition
from airflow_migrate_provider.errors import RestoreFailed

Quote = Callable[[str], str]
_IDENTITY_SEQUENCES = (
    "SELECT pg_get_serial_sequence(:t, attname), attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
    "AND attnum > 0 AND NOT attisdropped AND attidentity <> ''")
_CASCADING_FKS = (
    "SELECT c.conrelid::regclass::text, c.conname, "
    "array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a "
    "ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i), "
    "array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a "
    "ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i) "
    "FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = CAST(:t AS regclass) "
    "AND c.conrelid <> c.confrelid AND c.confdeltype IN ('c', 'n', 'd')")


def _cols(quote: Quote, names: list[str], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{quote(n)}" for n in names)


def _key_match(quote: Quote, keys: list[str], left: str, right: str) -> str:
    return " AND ".join(f"{left}.{quote(k)} = {right}.{quote(k)}" for k in keys)


def before_rebuild(conn: Connection, qt: str, definition: TableDefinition, exists: bool, rebuilt: list[str],
                   quote: Quote, preparer: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"external_fks": [], "handed_out": {}, "sequences": []}
    if exists:  # not when the table was dropped
        state["external_fks"] = _drop_external_fks(conn, qt, rebuilt, quote, preparer)
        state["handed_out"] = _identity_positions(conn, qt)
    for sequence, _ in definition.owned_sequences:
        conn.execute(text(f"ALTER SEQUENCE IF EXISTS {sequence} OWNED BY NONE"))
    return state


def create_missing_sequences(conn: Connection, definition: TableDefinition) -> list[tuple[str, str]]:
    """Create the serial columns' sequences that are gone (dropping a table drops the sequences it owns), so
    the column defaults (``nextval``) work again; return them as [sequence, column]."""
    types = {c.name: c.type for c in definition.columns}
    created = []
    for sequence, column in definition.owned_sequences:
        if conn.execute(text("SELECT to_regclass(:s) IS NULL"), {"s": sequence}).scalar():
            as_type = f" AS {types[column]}" if types.get(column) in ("smallint", "integer", "bigint") else ""
            conn.execute(text(f"CREATE SEQUENCE {sequence}{as_type}"))
            created.append((sequence, column))
    return created


def _identity_positions(conn: Connection, qt: str) -> dict[str, int]:
    """The last value each identity column's sequence handed out (a rebuild makes these sequences anew)."""
    positions = {}
    for sequence, column in conn.execute(text(_IDENTITY_SEQUENCES), {"t": qt}).all():
        last = conn.execute(text("SELECT pg_sequence_last_value(CAST(:s AS regclass))"), {"s": sequence}).scalar()
        if last is not None:
            positions[column] = int(last)
    return positions


def continue_sequences(conn: Connection, qt: str, sequences: list[tuple[str, str]], handed_out: dict[str, int],
                       quote: Quote) -> None:
    """Move new sequences (re-created serial ones, and every identity column's, which the rebuild made anew)
    past the restored rows and past what the old sequence handed out, so no key is handed out twice."""
    identity = conn.execute(text(_IDENTITY_SEQUENCES), {"t": qt}).all()
    for sequence, column in [*sequences, *identity]:
        top = f"greatest(max({quote(column)}), :handed_out)"
        conn.execute(text(f"SELECT setval(CAST(:s AS regclass), {top}) FROM {qt} HAVING {top} IS NOT NULL"),
                     {"s": sequence, "handed_out": handed_out.get(column)})


def own_sequences(conn: Connection, qt: str, definition: TableDefinition, quote: Quote) -> None:
    for sequence, column in definition.owned_sequences:
        conn.execute(text(f"ALTER SEQUENCE {sequence} OWNED BY {qt}.{quote(column)}"))


def _drop_external_fks(conn: Connection, qt: str, rebuilt: list[str], quote: Quote, preparer: Any) -> list[str]:
    """Drop foreign keys of other tables that point at ``qt``; return the DDL that re-adds them."""
    rows = conn.execute(text(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype = 'f' AND confrelid = CAST(:t AS regclass) AND conrelid <> confrelid"), {"t": qt}).all()
    readd = []
    for owner, name, ddl in rows:
        if owner in rebuilt or preparer.quote(owner) in rebuilt:
            continue  # rebuilt too: its own definition brings the key back
        conn.execute(text(f"ALTER TABLE {owner} DROP CONSTRAINT {quote(name)}"))
        readd.append(f"ALTER TABLE {owner} ADD CONSTRAINT {quote(name)} {ddl}")
    return readd


def diff_keys(conn: Connection, qt: str, definition: TableDefinition, source: str, index: int,
              quote: Quote) -> str | None:
    """A table with a primary key: one FULL JOIN of the table and its backed-up rows keeps the keys whose rows
    differ in a temporary table (dropped at commit), with ``extra`` (only in the table) and ``missing`` (only
    in the backup); the deletes, updates and inserts then touch only those keys."""
    keys = definition.primary_key
    if not keys:
        return None
    name = f"airflow_migrate_diff_{index}"
    first = quote(keys[0])  # a primary key column is never null: null = no row on that side
    values = [c for c in definition.insertable if c not in keys]
    differs = (f" OR ({_cols(quote, values, 'l.')})::text IS DISTINCT FROM ({_cols(quote, values, 'b.')})::text"
               if values else "")
    key_cols = ", ".join(f"coalesce(l.{quote(k)}, b.{quote(k)}) AS {quote(k)}" for k in keys)
    conn.execute(text(
        f"CREATE TEMPORARY TABLE {name} ON COMMIT DROP AS SELECT {key_cols}, b.{first} IS NULL AS extra, "
        f"l.{first} IS NULL AS missing FROM {qt} AS l FULL JOIN {source} AS b "
        f"ON {_key_match(quote, keys, 'l', 'b')} WHERE l.{first} IS NULL OR b.{first} IS NULL{differs}"))
    conn.execute(text(f"ANALYZE {name}"))
    return name


def refuse_cascades(conn: Connection, table: str, qt: str, definition: TableDefinition, source: str,
                    restoring: set[str], quote: Quote, preparer: Any, parents: str | None = None) -> None:
    """Deleting rows the backup lacks must not cascade (ON DELETE CASCADE / SET NULL / SET DEFAULT) into a
    table that is not being restored: that would change data no backup covers. Refuse instead. ``parents``: the
    rows of ``qt`` to consider (a segment restore: those of the differing segments), default all."""
    for owner, name, cols, refcols in conn.execute(text(_CASCADING_FKS), {"t": qt}).all():
        if owner in restoring or preparer.quote(owner) in restoring:
            continue
        links = " AND ".join(f"p.{quote(r)} = ch.{quote(c)}" for c, r in zip(cols, refcols, strict=True))
        gone = (f" AND NOT EXISTS (SELECT 1 FROM {source} AS b WHERE "
                f"{_key_match(quote, definition.primary_key, 'p', 'b')})" if definition.primary_key else "")
        hit = conn.execute(text(f"SELECT count(*) FROM {owner} AS ch WHERE EXISTS (SELECT 1 FROM {parents or qt} AS p "
                                f"WHERE {links}{gone})")).scalar()
        if hit:
            raise RestoreFailed(
                f"restoring {table} would delete rows that {hit} row(s) of {owner} reference through "
                f"foreign key {name} (ON DELETE acts on them), and {owner} is not in the backup; the restore "
                f"was rolled back, nothing changed. Add {owner} to backup.tables, or deal with those rows first.")


# -- restores whose cost grows with what changed ------------------------------------------------------------
SEGMENT_BITS = 10  # rows are spread over 1,024 segments by a hash of their primary key
_MOD = 1 << 64


def _segment_of(quoted_keys: str) -> str:
    return f"(hashtextextended(ROW({quoted_keys})::text, 2) & {(1 << SEGMENT_BITS) - 1})"


# -- the quick first pass: a 64-bit hash of each row's typed values, summed per segment ----------------------
# Each value goes into hash_record_extended in a form whose hash is a real hash of all of it and that differs
# whenever the value's text differs (the manifest's measure): PostgreSQL's own hashes of int8 (halves folded),
# numeric (sign and scale ignored), float (-0 = 0), interval (1 day = 24 hours), timestamps (int8) and jsonb are
# coarser, so those go through their binary ``*_send`` form or their text. Any other type goes in as its text.
QUICK_SCHEME = "hre1"
_BINARY_FORM = {"int8": "int8send", "float4": "float4send", "float8": "float8send", "numeric": "numeric_send",
                "timestamp": "timestamp_send", "timestamptz": "timestamptz_send", "time": "time_send",
                "timetz": "timetz_send", "interval": "interval_send"}
_OWN_HASH = {"int2", "int4", "bool", "bytea", "uuid", "date"}  # their hash covers every bit of the value
_COLUMN_TYPES = (
    "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid "
    "WHERE a.attrelid = CAST(:r AS regclass) AND a.attnum > 0 AND NOT a.attisdropped "
    "AND t.typnamespace = 'pg_catalog'::regnamespace")


def quick_field(expr: str, typname: str | None) -> str:
    """``expr`` as hash_record_extended should see it (text in the deterministic "C" collation)."""
    if typname in _BINARY_FORM:
        return f"{_BINARY_FORM[typname]}({expr})"
    if typname in _OWN_HASH:
        return expr
    if typname == "bpchar":  # char(n)'s text keeps its padding; its hash does not
        return f'(bpcharout({expr}))::text COLLATE "C"'
    return f'({expr})::text COLLATE "C"'


class PgSegmentRestore:
    """PostgreSQL side of a segment restore (core/backup/segments.py): per-segment sums of the manifest's row
    hashes, the rows of some segments staged in temporary tables, the tables held against writes for the
    restore's transaction, and the rows the transaction wrote to a table (its own statistics)."""

    segment_bits = SEGMENT_BITS

    def segment_sums(self, conn: Connection, relation: str, quoted_columns: str, quoted_keys: str,
                     both_seeds: bool) -> list[tuple[int, int, int, int]] | None:
        """(segment, rows, sum of seed-0 row hashes, sum of seed-1 hashes or 0) of every non-empty segment: the
        row hash of ``pg_hashing.table_hash``, so the sums of all segments are the table's checksum."""
        conn.exec_driver_sql(pg_hashing.SESSION)
        second = "sum(hashtextextended(r, 1))" if both_seeds else "0"
        rows = conn.exec_driver_sql(
            f"SELECT s, count(*), sum(hashtextextended(r, 0)), {second} FROM (SELECT {_segment_of(quoted_keys)} "
            f"AS s, ROW({quoted_columns})::text AS r FROM {relation}) AS rows_of GROUP BY s").all()
        return [(int(s), int(n), int(lo) % _MOD, int(hi) % _MOD) for s, n, lo, hi in rows]

    def quick_segment_sums(self, conn: Connection, relation: str, columns: list[str],
                           keys: list[str]) -> tuple[str, list[list[int]]] | None:
        """(scheme, [segment, rows, sum of quick row hashes] per non-empty segment) of ``relation``: one cheap
        pass over the typed values, no row text (``quick_field``). The scheme names the hash SQL, so sums taken
        with other column types never compare equal. None before PostgreSQL 14 (no hash_record_extended)."""
        version = conn.dialect.server_version_info or (0,)
        if version < (14,):
            return None
        quote = self._preparer.quote_identifier  # type: ignore[attr-defined]
        types = {name: typ for name, typ in conn.execute(text(_COLUMN_TYPES), {"r": relation})}
        ordered = sorted(columns)
        digest = pg_hashing.segment_hash_sql([quick_field(quote(c), types.get(c)) for c in ordered],
                                             [quote(c) for c in ordered], version)
        segment = _segment_of(", ".join(quote(k) for k in keys))
        scheme = f"{QUICK_SCHEME}:{hashlib.sha256(f'{segment} {digest}'.encode()).hexdigest()[:16]}"
        conn.exec_driver_sql(pg_hashing.SESSION + pg_hashing.PLANNER)
        rows = conn.exec_driver_sql(f"SELECT {segment} AS s, count(*), sum({digest}) FROM {relation} GROUP BY s").all()
        return scheme, sorted([int(s), int(n), int(h) % _MOD] for s, n, h in rows)

    def segment_filter(self, keys: list[str], segments: list[int]) -> str:
        """A condition on a row of the table (its key columns, unqualified) that holds in ``segments``."""
        quote = self._preparer.quote_identifier  # type: ignore[attr-defined]
        listed = ", ".join(str(int(s)) for s in segments)
        return f"{_segment_of(', '.join(quote(k) for k in keys))} IN ({listed})"

    def stage_segments(self, conn: Connection, relation: str, quoted_columns: str, quoted_keys: str,
                       segments: list[int], name: str) -> str:
        """A temporary table (dropped at commit) of the rows of ``relation`` in ``segments``."""
        conn.execute(text(f"CREATE TEMPORARY TABLE {name} ON COMMIT DROP AS SELECT {quoted_columns} FROM "
                          f"{relation} WHERE {_segment_of(quoted_keys)} = ANY(CAST(:s AS bigint[]))"),
                     {"s": segments})
        conn.execute(text(f"ANALYZE {name}"))
        return name

    def segment_diff(self, conn: Connection, definition: TableDefinition, live: str, source: str,
                     index: int) -> str | None:
        """The differing keys between two staged segment tables (``diff_keys`` with the live rows staged)."""
        return diff_keys(conn, live, definition, source, index, self._preparer.quote_identifier)  # type: ignore[attr-defined]

    def refuse_segment_cascades(self, conn: Connection, table: str, definition: TableDefinition, live: str,
                                source: str, restoring: set[str]) -> None:
        prep = self._preparer  # type: ignore[attr-defined]
        refuse_cascades(conn, table, self.ident(table), definition, source, restoring,  # type: ignore[attr-defined]
                        prep.quote_identifier, prep, parents=live)

    def rows_differing(self, conn: Connection, live: str, source: str, quoted_columns: str) -> int:
        """Rows of ``live`` not in ``source`` plus rows of ``source`` not in ``live``, compared by their text
        (the manifest's measure), duplicates counted."""
        row = f"ROW({quoted_columns})::text"
        return int(conn.exec_driver_sql(
            f"SELECT count(*) FROM ((SELECT {row} FROM {live} EXCEPT ALL SELECT {row} FROM {source}) UNION ALL "
            f"(SELECT {row} FROM {source} EXCEPT ALL SELECT {row} FROM {live})) AS differing").scalar() or 0)

    def lock_for_restore(self, conn: Connection, tables: list[str], timeout_s: float) -> None:
        """Hold off other sessions' writes to ``tables`` until the restore's transaction ends (reads go on)."""
        if not tables:
            return
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{max(1, int(timeout_s * 1000))}ms'")
        try:
            conn.exec_driver_sql(f"LOCK TABLE {', '.join(self.ident(t) for t in tables)} "  # type: ignore[attr-defined]
                                 f"IN SHARE ROW EXCLUSIVE MODE")
        finally:
            conn.exec_driver_sql("SET LOCAL lock_timeout = 0")

    def rows_written(self, conn: Connection, table: str) -> int | None:
        """Rows inserted, updated and deleted in ``table`` by this transaction so far (its own statistics,
        triggers and cascades included), or None when the server does not count them."""
        if conn.exec_driver_sql("SHOW track_counts").scalar() != "on":
            return None
        got = conn.execute(text("SELECT n_tup_ins + n_tup_upd + n_tup_del FROM pg_stat_xact_user_tables WHERE "
                                "relid = CAST(:t AS regclass)"), {"t": self.ident(table)}).scalar()  # type: ignore[attr-defined]
        return int(got or 0)
