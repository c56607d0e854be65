"""Restores whose cost grows with what changed.

Where the database hashes rows in SQL (PostgreSQL), a backup records, per table with a primary key, the manifest's
row-hash sums per segment: rows are spread over ``2 ** Dialect.segment_bits`` segments by a hash of their key, and
the segments' sums add up to the table's checksum. A restore then:

1. sums the live table per segment, in the database, in one pass (one seed of the row hash): equal segments are
   equal to the backup, so the table is unchanged when every segment is;
2. stages the live rows and the backed-up rows of the differing segments only (temporary tables), finds the
   differing keys between them, and deletes, updates and inserts those keys only (sync.py);
3. before the commit, proves the table equals the manifest: the rows of the differing segments, read again,
   equal the backed-up rows exactly (compared by their text, duplicates counted), and the transaction wrote to the
   table exactly the rows the restore's statements wrote (the database's own per-transaction counts, triggers and
   cascades included) while the restore held off other writers since step 1, so every other segment is still as
   step 1 found it: equal to the manifest's. Where the counts do not match (or the server does not keep them) the
   table is checksummed whole instead, as a restore without segments does.
"""

from __future__ import annotations

import logging

from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.backup.catalog import TableManifest
from airflow_migrate_provider.core.backup.table_state import TableState, expected_text
from airflow_migrate_provider.core.backup.tables import quote_table
from airflow_migrate_provider.core.dialects import dialect_of
from airflow_migrate_provider.errors import RestoreFailed

log = logging.getLogger(__name__)
# When more than this share of the segments differ, staging and comparing them costs more than synchronising the
# whole table at once (at 1 % of 1M rows changed, every segment differs: 4-7x pg_restore staged, ~2x whole)
WHOLE_TABLE_SHARE = 0.25


def _quoted(conn: Connection, names: list[str]) -> str:
    prep = conn.dialect.identifier_preparer
    return ", ".join(prep.quote_identifier(n) for n in names)


def segment_state(conn: Connection, manifest: TableManifest) -> TableState | None:
    """The table compared with the manifest segment by segment (its definition already matches), or None when
    the manifest has no segments or the database cannot sum them."""
    definition = manifest.table_definition
    if manifest.segments is None or not definition.primary_key:
        return None
    dialect = dialect_of(conn)
    found = _quick_pass(conn, manifest) or _text_pass(conn, manifest)
    if found is None:
        return None
    now, then = found
    differing = sorted(s for s in now.keys() | then.keys() if now.get(s) != then.get(s))
    expected = expected_text(manifest)
    if not differing:
        return TableState(manifest.table, expected, expected, True)
    rows = sum(n for n, _ in now.values())
    actual = f"{rows} rows, {len(differing)} of {1 << dialect.segment_bits} segments differ"
    if len(differing) > WHOLE_TABLE_SHARE * (1 << dialect.segment_bits):
        return TableState(manifest.table, expected, actual, False, True)  # synchronised and checked whole
    # the server's per-transaction counts may hold earlier transactions' writes not yet reported: start from here
    return TableState(manifest.table, expected, actual, False, True, segments=differing,
                      written_before=dialect.rows_written(conn, manifest.table))


Sums = dict[int, tuple[int, int]]  # segment -> (rows, hash sum)


def _quick_pass(conn: Connection, manifest: TableManifest) -> tuple[Sums, Sums] | None:
    """The live table's and the manifest's quick sums (typed values, no row text), when the backup recorded them
    with the hash the database computes now."""
    if not manifest.quick:
        return None
    definition = manifest.table_definition
    now = dialect_of(conn).quick_segment_sums(conn, quote_table(conn, manifest.table), definition.insertable,
                                              definition.primary_key)
    if now is None or now[0] != manifest.quick["scheme"]:
        return None
    return {s: (n, h) for s, n, h in now[1]}, {s: (n, h) for s, n, h in manifest.quick["segments"]}


def _text_pass(conn: Connection, manifest: TableManifest) -> tuple[Sums, Sums] | None:
    """The live table's and the manifest's sums of the row-text hashes (backups made before the quick pass)."""
    definition = manifest.table_definition
    sums = dialect_of(conn).segment_sums(conn, quote_table(conn, manifest.table),
                                         _quoted(conn, sorted(definition.insertable)),
                                         _quoted(conn, definition.primary_key), both_seeds=False)
    if sums is None or manifest.segments is None:
        return None
    return {s: (n, h) for s, n, h, _ in sums}, {s: (n, h) for s, n, h in manifest.segments}


def rows_wanted(conn: Connection, manifest: TableManifest, state: TableState) -> str | None:
    """A condition on the table's rows that holds for the differing segments (a strategy that reads the backup
    from a file loads only those rows), or None: every row."""
    if state.segments is None:
        return None
    return dialect_of(conn).segment_filter(manifest.table_definition.primary_key, state.segments)


def stage(conn: Connection, manifest: TableManifest, state: TableState, source: str, index: int) -> tuple[str, str]:
    """Temporary tables of the live rows and of the backed-up rows (``source``) of the differing segments."""
    assert state.segments is not None
    dialect = dialect_of(conn)
    definition = manifest.table_definition
    cols, keys = _quoted(conn, definition.insertable), _quoted(conn, definition.primary_key)
    live = dialect.stage_segments(conn, quote_table(conn, manifest.table), cols, keys, state.segments,
                                  f"airflow_migrate_seg_live_{index}")
    backed_up = dialect.stage_segments(conn, source, cols, keys, state.segments, f"airflow_migrate_seg_bak_{index}")
    state.staged = backed_up
    log.info("restore: %s: %d of %d segment(s) differ; comparing their rows only", manifest.table,
             len(state.segments), 1 << dialect.segment_bits)
    return live, backed_up


def verify_segments(conn: Connection, manifest: TableManifest, state: TableState, index: int) -> TableState | None:
    """Inside the restore's transaction, after the sync: the proof that the table equals the manifest (the
    state to report), or None when only a whole-table checksum can tell. RestoreFailed when the differing
    segments' rows do not equal the backed-up rows."""
    assert state.segments is not None and state.staged is not None
    dialect = dialect_of(conn)
    definition = manifest.table_definition
    cols, keys = _quoted(conn, definition.insertable), _quoted(conn, definition.primary_key)
    after = dialect.stage_segments(conn, quote_table(conn, manifest.table), cols, keys, state.segments,
                                   f"airflow_migrate_seg_after_{index}")
    wrong = dialect.rows_differing(conn, after, state.staged, cols)
    if wrong:
        raise RestoreFailed(f"restoring {manifest.table} did not reproduce the backed-up rows: {wrong} row(s) of "
                            f"the {len(state.segments)} restored segment(s) still differ; the restore was rolled "
                            f"back, nothing changed")
    now = dialect.rows_written(conn, manifest.table)
    written = None if now is None or state.written_before is None else now - state.written_before
    if written != state.written:
        log.warning("restore: %s: the transaction wrote %s row(s) to it, the restore's statements %d (a trigger or "
                    "a cascade?): checksumming the whole table", manifest.table,
                    "an unknown number of" if written is None else written, state.written)
        return None
    expected = expected_text(manifest)
    return TableState(manifest.table, expected, expected, True)
