"""Compare tables with a backup's manifest, and bring the rows of a table whose definition matches back to the
backup's by primary key (shared by the restore in one transaction, restore.py, and the staged one,
staged_restore.py)."""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.backup import segments
from airflow_migrate_provider.core.backup.catalog import Backup, TableManifest
from airflow_migrate_provider.core.backup.table_state import TableState, expected_text
from airflow_migrate_provider.core.backup.tables import (
    TableDefinition,
    definition,
    fingerprint,
    quote_table,
    split_name,
    table_exists,
)
from airflow_migrate_provider.core.dialects import Dialect

log = logging.getLogger(__name__)


_expected = expected_text


def compare(conn: Connection, backup: Backup, only: set[str] | None = None) -> list[TableState]:
    """Each manifest table (or each of ``only``) now versus when it was backed up: definition, row count and
    checksum."""
    states = []
    for manifest in backup.tables:
        if only is not None and manifest.table not in only:
            continue
        exists = table_exists(conn, manifest.table)
        if not manifest.present:
            states.append(TableState(manifest.table, "absent", "exists" if exists else "absent", not exists,
                                     structure_equal=not exists))
            continue
        if not exists:
            states.append(TableState(manifest.table, _expected(manifest), "missing", False, structure_equal=False))
            continue
        live = definition(conn, manifest.table)
        same_structure = live.structure == manifest.structure
        expected_cols = manifest.table_definition.insertable
        if not set(expected_cols) <= {c.name for c in live.columns}:
            states.append(TableState(manifest.table, _expected(manifest), "columns differ", False, False))
            continue
        by_segment = segments.segment_state(conn, manifest) if same_structure else None
        if by_segment is not None:
            states.append(by_segment)
            continue
        now = fingerprint(conn, quote_table(conn, manifest.table), expected_cols)
        actual = str(now) + ("" if same_structure else "; definition differs")
        states.append(TableState(manifest.table, _expected(manifest), actual,
                                 same_structure and now == manifest.fingerprint, same_structure))
    return states


def synchronise(conn: Connection, dialect: Dialect, sync: list[TableManifest], sources: dict[str, str],
                restoring: set[str], todo: list[TableState]) -> None:
    """Bring the rows of tables whose definition matches back to the backup's, by primary key: the rows the
    backup lacks deleted (children first), changed rows updated and missing rows inserted (parents first). A table
    compared segment by segment is synchronised within its differing segments only (segments.py)."""
    ordered = _dependency_order(sync)
    states = {s.table: s for s in todo}
    diffs: dict[str, str | None] = {}
    sources = dict(sources)
    for index, manifest in enumerate(reversed(ordered)):
        source, definition_, state = sources[manifest.table], manifest.table_definition, states[manifest.table]
        if state.segments is not None:
            live, sources[manifest.table] = segments.stage(conn, manifest, state, source, index)
            dialect.refuse_segment_cascades(conn, manifest.table, definition_, live, sources[manifest.table],
                                            restoring)
            diffs[manifest.table] = dialect.segment_diff(conn, definition_, live, sources[manifest.table], index)
        else:
            dialect.refuse_cascades(conn, manifest.table, definition_, source, restoring)
            diffs[manifest.table] = dialect.diff_keys(conn, manifest.table, definition_, source, index)
        state.written += _delete_extra(conn, dialect, manifest, sources[manifest.table], diffs[manifest.table])
    for manifest in ordered:
        states[manifest.table].written += _update_and_insert(conn, dialect, manifest, sources[manifest.table],
                                                             diffs.get(manifest.table))
        set_action(todo, manifest.table, "synchronised")


def set_action(states: list[TableState], table: str, action: str) -> None:
    for state in states:
        if state.table == table:
            state.action = action


def _dependency_order(manifests: list[TableManifest]) -> list[TableManifest]:
    """Referenced tables before the tables whose foreign keys point at them."""
    by_name = {split_name(m.table)[1]: m for m in manifests}
    done: list[TableManifest] = []

    def visit(manifest: TableManifest, path: tuple[str, ...]) -> None:
        if manifest in done or manifest.table in path:
            return
        for ref in manifest.table_definition.references:
            parent = by_name.get(split_name(ref.replace('"', ""))[1])
            if parent is not None and parent is not manifest:
                visit(parent, (*path, manifest.table))
        done.append(manifest)

    for manifest in manifests:
        visit(manifest, ())
    return done


def _cols(conn: Connection, names: list[str], prefix: str = "") -> str:
    prep = conn.dialect.identifier_preparer
    return ", ".join(f"{prefix}{prep.quote_identifier(n)}" for n in names)


def insert_all(conn: Connection, dialect: Dialect, table: str, columns: list[str], source: str) -> int:
    cols = _cols(conn, columns)
    return int(conn.execute(text(f"INSERT INTO {quote_table(conn, table)} ({cols}){dialect.insert_overriding} "
                                 f"SELECT {cols} FROM {source}")).rowcount)


def _delete_extra(conn: Connection, dialect: Dialect, manifest: TableManifest, source: str,
                  diff: str | None = None) -> int:
    """Delete the rows the backup lacks; returns how many."""
    definition_ = manifest.table_definition
    qt = quote_table(conn, manifest.table)
    if not definition_.primary_key:
        return int(conn.execute(text(f"DELETE FROM {qt}")).rowcount)
    if diff is not None:
        deleted = conn.execute(text(dialect.delete_diff_sql(qt, diff, _key_match(conn, definition_, qt, 'd'))))
        log.info("restore: %s: deleted %d row(s) the backup does not have", manifest.table, deleted.rowcount)
        return int(deleted.rowcount)
    match = _key_match(conn, definition_, qt, "b")  # where the dialect found no differing keys
    deleted = conn.execute(text(f"DELETE FROM {qt} WHERE NOT EXISTS (SELECT 1 FROM {source} AS b WHERE {match})"))
    log.info("restore: %s: deleted %d row(s) the backup does not have", manifest.table, deleted.rowcount)
    return int(deleted.rowcount)


def _key_match(conn: Connection, definition_: TableDefinition, left: str, right: str) -> str:
    prep = conn.dialect.identifier_preparer
    return " AND ".join(f"{left}.{prep.quote_identifier(k)} = {right}.{prep.quote_identifier(k)}"
                        for k in definition_.primary_key)


def _update_and_insert(conn: Connection, dialect: Dialect, manifest: TableManifest, source: str,
                       diff: str | None = None) -> int:
    """Update the changed rows and insert the missing ones; returns how many rows that wrote."""
    definition_ = manifest.table_definition
    qt = quote_table(conn, manifest.table)
    columns = definition_.insertable
    if not definition_.primary_key:
        return insert_all(conn, dialect, manifest.table, columns, source)
    written = 0
    prep = conn.dialect.identifier_preparer
    values = [c for c in columns if c not in definition_.primary_key]
    bare = prep.quote_identifier(split_name(manifest.table)[1])
    if diff is not None:  # only the keys the dialect's diff_keys found
        if values:
            updated = conn.execute(text(dialect.update_diff_sql(
                qt, [prep.quote_identifier(c) for c in values], source, diff,
                _key_match(conn, definition_, bare, 'd'), _key_match(conn, definition_, 'b', 'd'))))
            log.info("restore: %s: put back the backed-up values of %d changed row(s)", manifest.table,
                     updated.rowcount)
            written += int(updated.rowcount)
        inserted = conn.execute(text(
            f"INSERT INTO {qt} ({_cols(conn, columns)}){dialect.insert_overriding} SELECT {_cols(conn, columns, 'b.')} "
            f"FROM {source} AS b JOIN {diff} AS d ON {_key_match(conn, definition_, 'b', 'd')} WHERE d.missing"))
        log.info("restore: %s: re-inserted %d row(s) missing since the backup", manifest.table, inserted.rowcount)
        return written + int(inserted.rowcount)
    # where the dialect finds no differing keys (SQLite): statements that compare every row
    if values:
        differs = " OR ".join(f"{bare}.{prep.quote_identifier(c)} IS NOT b.{prep.quote_identifier(c)}"
                              for c in values)
        sets = ", ".join(f"{prep.quote_identifier(c)} = b.{prep.quote_identifier(c)}" for c in values)
        updated = conn.execute(text(f"UPDATE {qt} SET {sets} FROM {source} AS b "
                                    f"WHERE {_key_match(conn, definition_, bare, 'b')} AND ({differs})"))
        log.info("restore: %s: put back the backed-up values of %d changed row(s)", manifest.table,
                 updated.rowcount)
        written += int(updated.rowcount)
    inserted = conn.execute(text(
        f"INSERT INTO {qt} ({_cols(conn, columns)}) SELECT {_cols(conn, columns, 'b.')} FROM {source} AS b "
        f"WHERE NOT EXISTS (SELECT 1 FROM {qt} AS live WHERE {_key_match(conn, definition_, 'live', 'b')})"))
    log.info("restore: %s: re-inserted %d row(s) missing since the backup", manifest.table, inserted.rowcount)
    return written + int(inserted.rowcount)
