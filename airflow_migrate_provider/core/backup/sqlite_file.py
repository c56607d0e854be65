"""``sqlite_backup``: the database file copied with SQLite's online backup API; restores ATTACH it."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.backup.catalog import Backup, TableManifest
from airflow_migrate_provider.core.backup.strategy import Copy, Strategy, default_location, locked
from airflow_migrate_provider.core.backup.tables import TableDefinition, fingerprint, quote_table, split_name
from airflow_migrate_provider.core.dialects import Dialect
from airflow_migrate_provider.errors import BackupFailed, RestoreFailed

log = logging.getLogger(__name__)
_ATTACHED = "airflow_migrate_restore"


class SqliteBackupStrategy(Strategy):
    name = "sqlite_backup"

    def describe_location(self, backup_id: str) -> str:
        return str(Path(self.location or default_location()) / f"{backup_id}.sqlite")

    def check(self, engine: Engine, present: list[str]) -> None:
        self._check_dialect(engine, "backup strategy sqlite_backup needs a SQLite target, not {database}; "
                                    "use `snapshot` (or `pg_dump` on PostgreSQL)")
        with engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar() or 0
            page_size = conn.exec_driver_sql("PRAGMA page_size").scalar() or 0
        self._check_folder(int(pages) * int(page_size))

    def create(self, engine: Engine, dialect: Dialect, backup_id: str, present: dict[str, TableDefinition],
               lock_writes: bool) -> Copy:
        path = Path(self.describe_location(backup_id))
        copy = Copy()
        started = time.monotonic()
        try:
            with engine.connect() as conn, ExitStack() as stack:
                # lock_writes: another session holds the write lock (BEGIN IMMEDIATE) while the file is copied and
                # fingerprints the live tables under it. The online backup cannot run from a connection that holds
                # the write lock itself: it retries "busy" forever.
                held = stack.enter_context(locked(engine, dialect, list(present), True)) if lock_writes else None
                dest = sqlite3.connect(str(path))
                try:
                    conn.connection.driver_connection.backup(dest, pages=1024, progress=_sqlite_progress(path))
                finally:
                    dest.close()
                if held is not None:
                    self._fingerprint_live(held, present, copy)
        except (sqlite3.Error, OSError) as exc:
            path.unlink(missing_ok=True)
            raise BackupFailed(f"copying the database file to '{path}' failed: {exc}; nothing was changed") from exc
        log.info("backup: database file copied to %s in %.1f s", path, time.monotonic() - started)
        if not lock_writes:
            with engine.connect() as conn:
                self._fingerprint_live(conn, present, copy)
        from sqlalchemy import create_engine

        copied = create_engine(f"sqlite:///{path}")
        try:
            with copied.connect() as conn:
                for table, definition in present.items():
                    copy.copied[table] = fingerprint(conn, quote_table(conn, table), definition.insertable)
        finally:
            copied.dispose()
        copy.stored_as = {table: table for table in present}
        copy.size_bytes = path.stat().st_size
        return copy

    @staticmethod
    def _fingerprint_live(conn: Connection, present: dict[str, TableDefinition], copy: Copy) -> None:
        for table, definition in present.items():
            copy.live[table] = fingerprint(conn, quote_table(conn, table), definition.insertable)

    def prepare_restore(self, conn: Connection, backup: Backup) -> None:
        if not Path(backup.location).is_file():
            raise RestoreFailed(f"backup file '{backup.location}' of backup {backup.id} is missing")
        conn.connection.driver_connection.execute(f"ATTACH DATABASE ? AS {_ATTACHED}", (backup.location,))

    def finish_restore(self, conn: Connection, backup: Backup) -> None:
        conn.connection.driver_connection.execute(f"DETACH DATABASE {_ATTACHED}")

    @contextmanager
    def relations(self, conn: Connection, backup: Backup, tables: list[TableManifest],
                  rows_where: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
        prep = conn.dialect.identifier_preparer
        yield {t.table: f"{_ATTACHED}.{prep.quote_identifier(split_name(t.stored_as)[1])}" for t in tables}

    def drop(self, engine: Engine, backup: Backup) -> None:
        Path(backup.location).unlink(missing_ok=True)

    def exists(self, engine: Engine, backup: Backup) -> bool:
        return Path(backup.location).is_file()


def _sqlite_progress(path: Path) -> Any:
    last = [time.monotonic()]

    def progress(status: int, remaining: int, total: int) -> None:
        if time.monotonic() - last[0] >= 2 and total:
            last[0] = time.monotonic()
            log.info("backup: %s: %.0f%% of %d pages copied", path.name, 100 * (total - remaining) / total, total)

    return progress
