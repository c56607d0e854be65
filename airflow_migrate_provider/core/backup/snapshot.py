"""``snapshot``: ``CREATE TABLE airflow_migrate_bak_<id>_<n> AS SELECT * FROM <table>`` in the same database."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.backup.catalog import Backup, TableManifest
from airflow_migrate_provider.core.backup.strategy import Copy, Strategy, locked, relation_size
from airflow_migrate_provider.core.backup.tables import (
    TableDefinition,
    fingerprint,
    quote_table,
    split_name,
    table_exists,
)
from airflow_migrate_provider.core.dialects import Dialect

log = logging.getLogger(__name__)
SNAPSHOT_PREFIX = "airflow_migrate_bak_"


class SnapshotStrategy(Strategy):
    name = "snapshot"

    def check(self, engine: Engine, present: list[str]) -> None:
        self._check_dialect(engine, "snapshot backups of {database} databases are not supported yet")

    @staticmethod
    def snapshot_name(backup_id: str, index: int, table: str) -> str:
        schema, _ = split_name(table)
        name = f"{SNAPSHOT_PREFIX}{backup_id.replace('-', '_').lower()}_{index}"
        return f"{schema}.{name}" if schema else name

    def create(self, engine: Engine, dialect: Dialect, backup_id: str, present: dict[str, TableDefinition],
               lock_writes: bool) -> Copy:
        copy = Copy()
        if not dialect.transactional_ddl:  # CREATE TABLE would commit the locking transaction: create them first
            self._create_empty(engine, backup_id, present, copy)
        with locked(engine, dialect, list(present), lock_writes) as conn:
            for index, (table, definition) in enumerate(present.items()):
                started = time.monotonic()
                name = self.snapshot_name(backup_id, index, table)
                cols = ", ".join(conn.dialect.identifier_preparer.quote_identifier(c) for c in definition.insertable)
                if table in copy.stored_as:
                    conn.execute(text(f"INSERT INTO {quote_table(conn, name)} ({cols}) SELECT {cols} "
                                      f"FROM {quote_table(conn, table)}"))
                else:
                    conn.execute(text(f"CREATE TABLE {quote_table(conn, name)} AS SELECT {cols} "
                                      f"FROM {quote_table(conn, table)}"))
                copy.stored_as[table] = name
                log.info("backup: copied %s into %s in %.1f s", table, name, time.monotonic() - started)
            if lock_writes:  # consistent: fingerprint under the same lock
                self._fingerprint(conn, present, copy)
        if not lock_writes:
            with engine.connect() as conn, conn.begin():
                self._fingerprint(conn, present, copy)
        with engine.connect() as conn:
            sizes = [relation_size(conn, name) for name in copy.stored_as.values()]
        copy.size_bytes = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
        return copy

    def _create_empty(self, engine: Engine, backup_id: str, present: dict[str, TableDefinition], copy: Copy) -> None:
        """The snapshot tables, empty, with the columns' types (where DDL commits on its own)."""
        with engine.connect() as conn:
            for index, (table, definition) in enumerate(present.items()):
                name = self.snapshot_name(backup_id, index, table)
                cols = ", ".join(conn.dialect.identifier_preparer.quote_identifier(c) for c in definition.insertable)
                conn.execute(text(f"CREATE TABLE {quote_table(conn, name)} AS SELECT {cols} "
                                  f"FROM {quote_table(conn, table)} WHERE 1 = 0"))
                copy.stored_as[table] = name
            conn.commit()

    @staticmethod
    def _fingerprint(conn: Connection, present: dict[str, TableDefinition], copy: Copy) -> None:
        for table, definition in present.items():
            copy.copied[table] = fingerprint(conn, quote_table(conn, copy.stored_as[table]), definition.insertable,
                                             definition.primary_key)
            copy.live[table] = fingerprint(conn, quote_table(conn, table), definition.insertable)

    @contextmanager
    def relations(self, conn: Connection, backup: Backup, tables: list[TableManifest],
                  rows_where: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
        yield {t.table: quote_table(conn, t.stored_as) for t in tables}

    def drop(self, engine: Engine, backup: Backup) -> None:
        with engine.begin() as conn:
            for t in backup.tables:
                if t.stored_as:
                    conn.execute(text(f"DROP TABLE IF EXISTS {quote_table(conn, t.stored_as)}"))

    def exists(self, engine: Engine, backup: Backup) -> bool:
        with engine.connect() as conn:
            return all(table_exists(conn, t.stored_as) for t in backup.tables if t.present)
