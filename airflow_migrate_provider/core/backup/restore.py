"""Compare tables with a backup's manifest, and restore the ones that differ, then prove they match.

A table the backup recorded as absent (a step created it) is dropped. A table whose definition differs (or
that is gone) is rebuilt from the definition in the manifest and refilled from the backup. A table whose
definition matches but whose rows differ is synchronised by primary key: rows the backup lacks are deleted,
changed rows updated, missing rows inserted; so rows equal to the backup are never deleted and foreign keys
pointing at them (and their ON DELETE actions) are not disturbed. All in one transaction where the database
has transactional DDL; elsewhere (MySQL/MariaDB) staged, see staged_restore.py.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.backup.catalog import Backup, TableManifest
from airflow_migrate_provider.core.backup.segments import rows_wanted, verify_segments
from airflow_migrate_provider.core.backup.staged_restore import restore_staged
from airflow_migrate_provider.core.backup.strategies import Strategy, strategy_named
from airflow_migrate_provider.core.backup.sync import TableState, compare, insert_all, set_action, synchronise
from airflow_migrate_provider.core.backup.tables import (
    quote_table,
    split_name,
    table_exists,
)
from airflow_migrate_provider.core.dialects import Dialect, dialect_of
from airflow_migrate_provider.core.summary import format_table
from airflow_migrate_provider.errors import RestoreFailed, db_error_line

log = logging.getLogger(__name__)
_LOCK_TIMEOUT_S = 30.0  # a restore waits this long for other sessions' writes to the tables to finish


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
    dialect = dialect_of(engine)
    with engine.connect() as conn, dialect.restore_session(conn):
        try:
            strategy.prepare_restore(conn, backup)
        except Exception as exc:
            if isinstance(exc, RestoreFailed):
                raise
            raise RestoreFailed(f"cannot open backup {backup.id} at {backup.location}: {exc}; nothing was "
                                f"changed") from exc
        try:
            # where DDL is not transactional the restore stages and commits in steps (restore_staged)
            with conn.begin() if dialect.transactional_ddl else nullcontext():
                _hold_writes(conn, dialect, backup)
                states = compare(conn, backup)
                after = {s.table: s for s in states}
                todo = [s for s in states if not s.equal and (only is None or s.table in only)]
                if todo:
                    log.warning("restoring %d table(s) from backup %s: %s", len(todo), backup.id,
                                ", ".join(s.table for s in todo))
                    after.update({s.table: s for s in _restore_todo(conn, dialect, strategy, backup, todo)})
                for state in states:
                    state.action = next((s.action for s in todo if s.table == state.table), "unchanged")
        except sa_exc.SQLAlchemyError as exc:
            raise RestoreFailed(f"restoring from backup {backup.id} failed and was rolled back (nothing "
                                f"changed): {db_error_line(exc)}") from exc
        finally:
            strategy.finish_restore(conn, backup)
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


def _restore_todo(conn: Connection, dialect: Dialect, strategy: Strategy, backup: Backup,
                  todo: list[TableState]) -> list[TableState]:
    """Restore the differing tables and verify them; returns their states afterwards. Inside the caller's
    transaction where DDL is transactional; else staged: the live tables change only once everything is checked
    (staged_restore.py)."""
    if not dialect.transactional_ddl:
        return restore_staged(conn, dialect, strategy, backup, todo)
    _restore(conn, dialect, strategy, backup, todo)
    dialect.check_restored_foreign_keys(conn)
    return _verify_before_commit(conn, backup, todo)


def _hold_writes(conn: Connection, dialect: Dialect, backup: Backup) -> None:
    """Where the restore runs in one transaction: other sessions' writes to the backed-up tables wait until it
    ends, so the tables it compares are the tables it restores and proves (segments.py)."""
    if dialect.transactional_ddl:
        present = [m.table for m in backup.tables if m.present and table_exists(conn, m.table)]
        dialect.lock_for_restore(conn, present, _LOCK_TIMEOUT_S)


def _verify_before_commit(conn: Connection, backup: Backup, todo: list[TableState]) -> list[TableState]:
    """The restored tables must equal the manifest before the restore commits; otherwise it rolls back.
    Returns the restored tables' states, which the report shows (the commit does not change them). A table
    synchronised segment by segment is proven by its segments (segments.py), else checksummed whole."""
    proven: list[TableState] = []
    for index, state in enumerate(todo):
        if state.segments is not None and state.action == "synchronised":
            checked = verify_segments(conn, backup.table(state.table), state, index)
            proven += [checked] if checked is not None else []
    whole = {s.table for s in todo} - {s.table for s in proven}
    checked_whole = compare(conn, backup, only=whole) if whole else []
    wrong = [s for s in checked_whole if not s.equal]
    if wrong:
        detail = "; ".join(f"{s.table}: expected {s.expected}, got {s.actual}" for s in wrong)
        raise RestoreFailed(f"restoring from backup {backup.id} did not reproduce the manifest ({detail}); the "
                            f"restore was rolled back, nothing changed")
    return proven + checked_whole


def _restore(conn: Connection, dialect: Dialect, strategy: Strategy, backup: Backup, todo: list[TableState]) -> None:
    manifests = {m.table: m for m in backup.tables}
    drop = [manifests[s.table] for s in todo if not manifests[s.table].present]
    rebuild = [manifests[s.table] for s in todo if manifests[s.table].present and not s.structure_equal]
    sync = [manifests[s.table] for s in todo if manifests[s.table].present and s.structure_equal]
    for manifest in drop:
        conn.execute(text(f"DROP TABLE IF EXISTS {quote_table(conn, manifest.table)}{dialect.drop_cascade}"))
        set_action(todo, manifest.table, "dropped")
    states = {s.table: s for s in todo}
    wanted = {m.table: rows_wanted(conn, m, states[m.table]) for m in sync}
    rows_where = {table: where for table, where in wanted.items() if where is not None}
    with strategy.relations(conn, backup, rebuild + sync, rows_where) as sources:
        if rebuild:
            _rebuild(conn, dialect, rebuild, sources)
            for manifest in rebuild:
                set_action(todo, manifest.table, "rebuilt")
        restoring = {quote_table(conn, m.table) for m in [*drop, *rebuild, *sync]}
        synchronise(conn, dialect, sync, sources, restoring, todo)


def _rebuild(conn: Connection, dialect: Dialect, manifests: list[TableManifest], sources: dict[str, str]) -> None:
    """Drop and re-create each table from its manifest definition, refill it, then add foreign keys (its
    own, and other tables' that pointed at it) once every rebuilt table holds its rows. The dialect carries
    over what lives outside the table (PostgreSQL: sequences, other tables' foreign keys)."""
    rebuilt = [quote_table(conn, m.table) for m in manifests]
    external_fks: list[str] = []
    for manifest in manifests:
        definition_ = manifest.table_definition
        qt = quote_table(conn, manifest.table)
        state = dialect.before_rebuild(conn, manifest.table, definition_, table_exists(conn, manifest.table),
                                       rebuilt)
        external_fks += state["external_fks"]
        # an unqualified name the main database lacks (the table was dropped) could resolve to an attached
        # copy's table (SQLite, sqlite_backup) and drop that: name the main schema
        main = "" if split_name(manifest.table)[0] else dialect.main_schema
        conn.execute(text(f"DROP TABLE IF EXISTS {main}{qt}"))
        dialect.before_create(conn, manifest.table, definition_, state)
        # CREATE TABLE, then the rows, then the other constraints (PostgreSQL: primary key, unique, check...):
        # an index built once over the rows instead of updated row by row
        table_ddl, constraints = definition_.create[:1], definition_.create[1:]
        for ddl in table_ddl:
            conn.exec_driver_sql(ddl, execution_options={"no_parameters": True})
        insert_all(conn, dialect, manifest.table, definition_.insertable, sources[manifest.table])
        dialect.after_fill(conn, manifest.table, state)
        for ddl in [*constraints, *definition_.indexes]:
            conn.exec_driver_sql(ddl, execution_options={"no_parameters": True})
        log.info("restore: rebuilt %s from its backed-up definition and rows", manifest.table)
    for manifest in manifests:
        for ddl in manifest.table_definition.foreign_keys:
            conn.exec_driver_sql(ddl, execution_options={"no_parameters": True})
        dialect.after_constraints(conn, manifest.table, manifest.table_definition)
    for ddl in external_fks:
        conn.exec_driver_sql(ddl, execution_options={"no_parameters": True})


__all__ = ["RestoreReport", "TableState", "compare", "compare_backup", "restore_backup"]
