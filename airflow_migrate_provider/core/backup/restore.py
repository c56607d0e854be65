"""Compare tables with a backup's manifest, and restore the ones that differ, then prove they match.

A table the backup recorded as absent (a step created it) is dropped. A table whose definition differs (or
that is gone) is rebuilt from the definition in the manifest and refilled from the backup. A table whose
definition matches but whose rows differ is synchronised by primary key: rows the backup lacks are deleted,
changed rows updated, missing rows inserted; so rows equal to the backup are never deleted and foreign keys
pointing at them (and their ON DELETE actions) are not disturbed. All in one transaction.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.backup.catalog import Backup, TableManifest
from airflow_migrate_provider.core.backup.strategies import Strategy, strategy_named
from airflow_migrate_provider.core.backup.tables import (
    TableDefinition,
    definition,
    fingerprint,
    quote_table,
    split_name,
    table_exists,
)
from airflow_migrate_provider.core.summary import format_table
from airflow_migrate_provider.errors import RestoreFailed, db_error_line

log = logging.getLogger(__name__)


@dataclass
class TableState:
    """One table compared with the backup's manifest."""

    table: str
    expected: str
    actual: str
    equal: bool
    structure_equal: bool = True
    action: str = ""


@dataclass
class RestoreReport:
    backup_id: str
    tables: list[TableState] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def all_equal(self) -> bool:
        return all(t.equal for t in self.tables)

    @property
    def restored(self) -> list[str]:
        return [t.table for t in self.tables if t.action in ("dropped", "rebuilt", "synchronised")]

    def table(self) -> str:
        rows = [[t.table, t.expected, t.actual, t.action or "-", "yes" if t.equal else "NO"] for t in self.tables]
        return format_table(["table", "before the run (backup)", "now", "restore", "equal"], rows)


def _expected(manifest: TableManifest) -> str:
    return str(manifest.fingerprint) if manifest.present else "absent"


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
        now = fingerprint(conn, quote_table(conn, manifest.table), expected_cols)
        actual = str(now) + ("" if same_structure else "; definition differs")
        states.append(TableState(manifest.table, _expected(manifest), actual,
                                 same_structure and now == manifest.fingerprint, same_structure))
    return states


def compare_backup(engine: Engine, backup: Backup) -> list[TableState]:
    with engine.connect() as conn:
        try:
            return compare(conn, backup)
        finally:
            conn.rollback()


def restore_backup(engine: Engine, backup: Backup, *, only: list[str] | None = None,
                   strategy: Strategy | None = None) -> RestoreReport:
    """Restore the tables of ``backup`` that differ from its manifest (or just ``only``), then verify every
    manifest table against it. Raises ``RestoreFailed`` when any table still differs."""
    if backup.status not in ("verified",):
        raise RestoreFailed(f"backup {backup.id} is {backup.status}, not verified: it cannot be restored from")
    strategy = strategy or strategy_named(backup.strategy, None)
    if not strategy.exists(engine, backup):
        raise RestoreFailed(f"the copy of backup {backup.id} is gone ({backup.location}); it was pruned or "
                            f"deleted, so the tables cannot be restored from it")
    started = time.monotonic()
    report = RestoreReport(backup.id)
    with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        raw = conn.connection.driver_connection
        if sqlite:  # before any transaction: SQLite ignores this pragma inside one
            raw.execute("PRAGMA foreign_keys = OFF")
        try:
            strategy.prepare_restore(conn, backup)
        except Exception as exc:
            if sqlite:  # the pooled connection must not keep foreign keys off
                raw.execute("PRAGMA foreign_keys = ON")
            if isinstance(exc, RestoreFailed):
                raise
            raise RestoreFailed(f"cannot open backup {backup.id} at {backup.location}: {exc}; nothing was "
                                f"changed") from exc
        try:
            with conn.begin():
                states = compare(conn, backup)
                after = {s.table: s for s in states}
                todo = [s for s in states if not s.equal and (only is None or s.table in only)]
                if todo:
                    log.warning("restoring %d table(s) from backup %s: %s", len(todo), backup.id,
                                ", ".join(s.table for s in todo))
                    _restore(conn, strategy, backup, todo)
                    if sqlite:
                        _sqlite_fk_check(conn)
                    after.update({s.table: s for s in _verify_before_commit(conn, backup, todo)})
                for state in states:
                    state.action = next((s.action for s in todo if s.table == state.table), "unchanged")
        except sa_exc.SQLAlchemyError as exc:
            raise RestoreFailed(f"restoring from backup {backup.id} failed and was rolled back (nothing "
                                f"changed): {db_error_line(exc)}") from exc
        finally:
            strategy.finish_restore(conn, backup)
            if sqlite:
                raw.execute("PRAGMA foreign_keys = ON")
    for state in states:
        state.actual, state.equal = after[state.table].actual, after[state.table].equal
    report.tables, report.duration_s = states, time.monotonic() - started
    if not report.all_equal:
        bad = [s.table for s in states if not s.equal]
        raise RestoreFailed(f"after restoring from backup {backup.id}, {', '.join(bad)} still differ from the "
                            f"manifest:\n{report.table()}")
    log.info("restore from backup %s: %d table(s) restored, every table equals the backup (%.1f s)\n%s",
             backup.id, len(report.restored), report.duration_s, report.table())
    return report


def _verify_before_commit(conn: Connection, backup: Backup, todo: list[TableState]) -> list[TableState]:
    """The restored tables must equal the manifest before the restore commits; otherwise it rolls back.
    Returns the restored tables' states, which the report shows (the commit does not change them)."""
    restored = {s.table for s in todo}
    checked = compare(conn, backup, only=restored)
    wrong = [s for s in checked if not s.equal]
    if wrong:
        detail = "; ".join(f"{s.table}: expected {s.expected}, got {s.actual}" for s in wrong)
        raise RestoreFailed(f"restoring from backup {backup.id} did not reproduce the manifest ({detail}); the "
                            f"restore was rolled back, nothing changed")
    return checked


def _restore(conn: Connection, strategy: Strategy, backup: Backup, todo: list[TableState]) -> None:
    manifests = {m.table: m for m in backup.tables}
    drop = [manifests[s.table] for s in todo if not manifests[s.table].present]
    rebuild = [manifests[s.table] for s in todo if manifests[s.table].present and not s.structure_equal]
    sync = [manifests[s.table] for s in todo if manifests[s.table].present and s.structure_equal]
    for manifest in drop:
        cascade = " CASCADE" if conn.dialect.name == "postgresql" else ""
        conn.execute(text(f"DROP TABLE IF EXISTS {quote_table(conn, manifest.table)}{cascade}"))
        _set_action(todo, manifest.table, "dropped")
    with strategy.relations(conn, backup, rebuild + sync) as sources:
        if rebuild:
            _rebuild(conn, rebuild, sources)
            for manifest in rebuild:
                _set_action(todo, manifest.table, "rebuilt")
        ordered = _dependency_order(sync)
        restoring = {quote_table(conn, m.table) for m in [*drop, *rebuild, *sync]}
        diffs: dict[str, str] = {}
        for index, manifest in enumerate(reversed(ordered)):
            if conn.dialect.name == "postgresql":
                _refuse_cascades(conn, manifest, sources[manifest.table], restoring)
                if manifest.table_definition.primary_key:
                    diffs[manifest.table] = _diff_keys(conn, manifest, sources[manifest.table], index)
            _delete_extra(conn, manifest, sources[manifest.table], diffs.get(manifest.table))
        for manifest in ordered:
            _update_and_insert(conn, manifest, sources[manifest.table], diffs.get(manifest.table))
            _set_action(todo, manifest.table, "synchronised")


def _set_action(states: list[TableState], table: str, action: str) -> None:
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


def _insert_all(conn: Connection, table: str, columns: list[str], source: str) -> None:
    overriding = " OVERRIDING SYSTEM VALUE" if conn.dialect.name == "postgresql" else ""
    cols = _cols(conn, columns)
    conn.execute(text(f"INSERT INTO {quote_table(conn, table)} ({cols}){overriding} SELECT {cols} FROM {source}"))


def _rebuild(conn: Connection, manifests: list[TableManifest], sources: dict[str, str]) -> None:
    """Drop and re-create each table from its manifest definition, refill it, then add foreign keys (its
    own, and other tables' that pointed at it) once every rebuilt table holds its rows."""
    postgres = conn.dialect.name == "postgresql"
    rebuilt = [quote_table(conn, m.table) for m in manifests]
    external_fks: list[str] = []
    for manifest in manifests:
        definition_ = manifest.table_definition
        qt = quote_table(conn, manifest.table)
        new_sequences: list[tuple[str, str]] = []
        handed_out: dict[str, int] = {}
        if postgres:
            if table_exists(conn, manifest.table):  # not when the table was dropped
                external_fks += _drop_external_fks(conn, manifest.table, rebuilt)
                handed_out = _identity_positions(conn, manifest.table)
            for sequence, _ in definition_.owned_sequences:
                conn.execute(text(f"ALTER SEQUENCE IF EXISTS {sequence} OWNED BY NONE"))
        # SQLite: an unqualified name the main database lacks (the table was dropped) would resolve to the
        # attached backup file's table (sqlite_backup) and drop that
        main = "" if postgres or split_name(manifest.table)[0] else "main."
        conn.execute(text(f"DROP TABLE IF EXISTS {main}{qt}"))
        if postgres:
            new_sequences = _create_missing_sequences(conn, definition_)
        # PostgreSQL: CREATE TABLE, then the rows, then the constraints (primary key, unique, check...): an
        # index built once over the rows instead of updated row by row. SQLite: one CREATE TABLE with them.
        table_ddl, constraints = definition_.create[:1], definition_.create[1:]
        for ddl in table_ddl:
            conn.exec_driver_sql(ddl, execution_options={"no_parameters": True})
        _insert_all(conn, manifest.table, definition_.insertable, sources[manifest.table])
        if postgres:
            _continue_sequences(conn, manifest.table, new_sequences, handed_out)
        for ddl in [*constraints, *definition_.indexes]:
            conn.exec_driver_sql(ddl, execution_options={"no_parameters": True})
        log.info("restore: rebuilt %s from its backed-up definition and rows", manifest.table)
    for manifest in manifests:
        definition_ = manifest.table_definition
        for ddl in definition_.foreign_keys:
            conn.exec_driver_sql(ddl, execution_options={"no_parameters": True})
        for sequence, column in definition_.owned_sequences:
            owner = f"{quote_table(conn, manifest.table)}.{conn.dialect.identifier_preparer.quote_identifier(column)}"
            conn.execute(text(f"ALTER SEQUENCE {sequence} OWNED BY {owner}"))
    for ddl in external_fks:
        conn.exec_driver_sql(ddl, execution_options={"no_parameters": True})


def _create_missing_sequences(conn: Connection, definition_: TableDefinition) -> list[tuple[str, str]]:
    """Create the serial columns' sequences that are gone (dropping a table drops the sequences it owns), so
    the column defaults (``nextval``) work again; return them as [sequence, column]."""
    types = {c.name: c.type for c in definition_.columns}
    created = []
    for sequence, column in definition_.owned_sequences:
        if conn.execute(text("SELECT to_regclass(:s) IS NULL"), {"s": sequence}).scalar():
            as_type = f" AS {types[column]}" if types.get(column) in ("smallint", "integer", "bigint") else ""
            conn.execute(text(f"CREATE SEQUENCE {sequence}{as_type}"))
            created.append((sequence, column))
    return created


_IDENTITY_SEQUENCES = (
    "SELECT pg_get_serial_sequence(:t, attname), attname FROM pg_attribute WHERE attrelid = CAST(:t AS regclass) "
    "AND attnum > 0 AND NOT attisdropped AND attidentity <> ''")


def _identity_positions(conn: Connection, table: str) -> dict[str, int]:
    """The last value each identity column's sequence handed out (a rebuild makes these sequences anew)."""
    positions = {}
    for sequence, column in conn.execute(text(_IDENTITY_SEQUENCES), {"t": quote_table(conn, table)}).all():
        last = conn.execute(text("SELECT pg_sequence_last_value(CAST(:s AS regclass))"), {"s": sequence}).scalar()
        if last is not None:
            positions[column] = int(last)
    return positions


def _continue_sequences(conn: Connection, table: str, sequences: list[tuple[str, str]],
                        handed_out: dict[str, int]) -> None:
    """Move new sequences (re-created serial ones, and every identity column's, which the rebuild made anew)
    past the restored rows and past what the old sequence handed out, so no key is handed out twice."""
    qt = quote_table(conn, table)
    identity = conn.execute(text(_IDENTITY_SEQUENCES), {"t": qt}).all()
    prep = conn.dialect.identifier_preparer
    for sequence, column in [*sequences, *identity]:
        top = f"greatest(max({prep.quote_identifier(column)}), :handed_out)"
        conn.execute(text(f"SELECT setval(CAST(:s AS regclass), {top}) FROM {qt} HAVING {top} IS NOT NULL"),
                     {"s": sequence, "handed_out": handed_out.get(column)})


def _drop_external_fks(conn: Connection, table: str, rebuilt: list[str]) -> list[str]:
    """Drop foreign keys of other tables that point at ``table``; return the DDL that re-adds them."""
    rows = conn.execute(text(
        "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
        "WHERE contype = 'f' AND confrelid = CAST(:t AS regclass) AND conrelid <> confrelid"),
        {"t": quote_table(conn, table)}).all()
    prep = conn.dialect.identifier_preparer
    readd = []
    for owner, name, ddl in rows:
        if owner in rebuilt or prep.quote(owner) in rebuilt:
            continue  # rebuilt too: its own definition brings the key back
        conn.execute(text(f"ALTER TABLE {owner} DROP CONSTRAINT {prep.quote_identifier(name)}"))
        readd.append(f"ALTER TABLE {owner} ADD CONSTRAINT {prep.quote_identifier(name)} {ddl}")
    return readd


def _diff_keys(conn: Connection, manifest: TableManifest, source: str, index: int) -> str:
    """PostgreSQL, a table with a primary key: one FULL JOIN of the table and its backed-up rows keeps the keys
    whose rows differ in a temporary table (dropped at commit), with ``extra`` (only in the table) and
    ``missing`` (only in the backup); the deletes, updates and inserts then touch only those keys."""
    definition_ = manifest.table_definition
    prep = conn.dialect.identifier_preparer
    qt = quote_table(conn, manifest.table)
    name = f"airflow_migrate_diff_{index}"
    keys = definition_.primary_key
    first = prep.quote_identifier(keys[0])  # a primary key column is never null: null = no row on that side
    values = [c for c in definition_.insertable if c not in keys]
    differs = (f" OR ({_cols(conn, values, 'l.')})::text IS DISTINCT FROM ({_cols(conn, values, 'b.')})::text"
               if values else "")
    key_cols = ", ".join(f"coalesce(l.{prep.quote_identifier(k)}, b.{prep.quote_identifier(k)}) AS "
                         f"{prep.quote_identifier(k)}" for k in keys)
    conn.execute(text(
        f"CREATE TEMPORARY TABLE {name} ON COMMIT DROP AS SELECT {key_cols}, b.{first} IS NULL AS extra, "
        f"l.{first} IS NULL AS missing FROM {qt} AS l FULL JOIN {source} AS b "
        f"ON {_key_match(conn, definition_, 'l', 'b')} WHERE l.{first} IS NULL OR b.{first} IS NULL{differs}"))
    conn.execute(text(f"ANALYZE {name}"))
    return name


def _delete_extra(conn: Connection, manifest: TableManifest, source: str, diff: str | None = None) -> None:
    definition_ = manifest.table_definition
    qt = quote_table(conn, manifest.table)
    if not definition_.primary_key:
        conn.execute(text(f"DELETE FROM {qt}"))
        return
    if diff is not None:
        deleted = conn.execute(text(f"DELETE FROM {qt} USING {diff} AS d WHERE d.extra AND "
                                    f"{_key_match(conn, definition_, qt, 'd')}"))
        log.info("restore: %s: deleted %d row(s) the backup does not have", manifest.table, deleted.rowcount)
        return
    match = _key_match(conn, definition_, qt, "b")  # SQLite: PostgreSQL passes the keys of _diff_keys
    deleted = conn.execute(text(f"DELETE FROM {qt} WHERE NOT EXISTS (SELECT 1 FROM {source} AS b WHERE {match})"))
    log.info("restore: %s: deleted %d row(s) the backup does not have", manifest.table, deleted.rowcount)


_CASCADING_FKS = (
    "SELECT c.conrelid::regclass::text, c.conname, "
    "array(SELECT a.attname::text FROM unnest(c.conkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a "
    "ON a.attrelid = c.conrelid AND a.attnum = k.n ORDER BY k.i), "
    "array(SELECT a.attname::text FROM unnest(c.confkey) WITH ORDINALITY k(n, i) JOIN pg_attribute a "
    "ON a.attrelid = c.confrelid AND a.attnum = k.n ORDER BY k.i) "
    "FROM pg_constraint c WHERE c.contype = 'f' AND c.confrelid = CAST(:t AS regclass) "
    "AND c.conrelid <> c.confrelid AND c.confdeltype IN ('c', 'n', 'd')")


def _refuse_cascades(conn: Connection, manifest: TableManifest, source: str, restoring: set[str]) -> None:
    """Deleting rows the backup lacks must not cascade (ON DELETE CASCADE / SET NULL / SET DEFAULT) into a
    table that is not being restored: that would change data no backup covers. Refuse instead."""
    definition_ = manifest.table_definition
    qt = quote_table(conn, manifest.table)
    prep = conn.dialect.identifier_preparer
    for owner, name, cols, refcols in conn.execute(text(_CASCADING_FKS), {"t": qt}).all():
        if owner in restoring or prep.quote(owner) in restoring:
            continue
        links = " AND ".join(f"p.{prep.quote_identifier(r)} = ch.{prep.quote_identifier(c)}"
                             for c, r in zip(cols, refcols, strict=True))
        gone = (f" AND NOT EXISTS (SELECT 1 FROM {source} AS b WHERE {_key_match(conn, definition_, 'p', 'b')})"
                if definition_.primary_key else "")
        hit = conn.execute(text(f"SELECT count(*) FROM {owner} AS ch WHERE EXISTS (SELECT 1 FROM {qt} AS p "
                                f"WHERE {links}{gone})")).scalar()
        if hit:
            raise RestoreFailed(
                f"restoring {manifest.table} would delete rows that {hit} row(s) of {owner} reference through "
                f"foreign key {name} (ON DELETE acts on them), and {owner} is not in the backup; the restore "
                f"was rolled back, nothing changed. Add {owner} to backup.tables, or deal with those rows first.")


def _key_match(conn: Connection, definition_: TableDefinition, left: str, right: str) -> str:
    prep = conn.dialect.identifier_preparer
    return " AND ".join(f"{left}.{prep.quote_identifier(k)} = {right}.{prep.quote_identifier(k)}"
                        for k in definition_.primary_key)


def _update_and_insert(conn: Connection, manifest: TableManifest, source: str, diff: str | None = None) -> None:
    definition_ = manifest.table_definition
    qt = quote_table(conn, manifest.table)
    columns = definition_.insertable
    if not definition_.primary_key:
        _insert_all(conn, manifest.table, columns, source)
        return
    prep = conn.dialect.identifier_preparer
    values = [c for c in columns if c not in definition_.primary_key]
    bare = prep.quote_identifier(split_name(manifest.table)[1])
    if diff is not None:  # PostgreSQL: only the keys _diff_keys found
        if values:
            updated = conn.execute(text(
                f"UPDATE {qt} SET ({_cols(conn, values)}) = ROW({_cols(conn, values, 'b.')}) FROM {source} AS b "
                f"JOIN {diff} AS d ON {_key_match(conn, definition_, 'b', 'd')} WHERE NOT d.extra AND NOT d.missing "
                f"AND {_key_match(conn, definition_, bare, 'd')}"))
            log.info("restore: %s: put back the backed-up values of %d changed row(s)", manifest.table,
                     updated.rowcount)
        inserted = conn.execute(text(
            f"INSERT INTO {qt} ({_cols(conn, columns)}) OVERRIDING SYSTEM VALUE SELECT {_cols(conn, columns, 'b.')} "
            f"FROM {source} AS b JOIN {diff} AS d ON {_key_match(conn, definition_, 'b', 'd')} WHERE d.missing"))
        log.info("restore: %s: re-inserted %d row(s) missing since the backup", manifest.table, inserted.rowcount)
        return
    # SQLite (PostgreSQL tables with a primary key always take the _diff_keys path above)
    if values:
        differs = " OR ".join(f"{bare}.{prep.quote_identifier(c)} IS NOT b.{prep.quote_identifier(c)}"
                              for c in values)
        sets = ", ".join(f"{prep.quote_identifier(c)} = b.{prep.quote_identifier(c)}" for c in values)
        updated = conn.execute(text(f"UPDATE {qt} SET {sets} FROM {source} AS b "
                                    f"WHERE {_key_match(conn, definition_, bare, 'b')} AND ({differs})"))
        log.info("restore: %s: put back the backed-up values of %d changed row(s)", manifest.table,
                 updated.rowcount)
    inserted = conn.execute(text(
        f"INSERT INTO {qt} ({_cols(conn, columns)}) SELECT {_cols(conn, columns, 'b.')} FROM {source} AS b "
        f"WHERE NOT EXISTS (SELECT 1 FROM {qt} AS live WHERE {_key_match(conn, definition_, 'live', 'b')})"))
    log.info("restore: %s: re-inserted %d row(s) missing since the backup", manifest.table, inserted.rowcount)


def _sqlite_fk_check(conn: Connection) -> None:
    problems = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
    if problems:
        shown = "; ".join(f"{r[0]} row {r[1]} → {r[2]}" for r in problems[:5])
        raise RestoreFailed(f"the restored tables break foreign keys ({len(problems)} row(s): {shown}); the "
                            f"restore was rolled back. Restore the referencing tables too (add them to "
                            f"backup.tables).")


__all__ = ["RestoreReport", "TableState", "compare", "compare_backup", "restore_backup"]
