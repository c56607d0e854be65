"""The backup strategies by name. Each lives in its own module and knows how to check it can run, make the
copy with the fingerprints of what it copied, hand the copy back as a readable relation for a restore, and
drop it:

- ``snapshot`` (snapshot.py): copy tables in the same database;
- ``pg_dump`` (pg_dump.py): a custom-format archive from an exported snapshot;
- ``mariadb_dump`` (mariadb_dump.py): the rows as SQL from ``mariadb-dump``/``mysqldump --single-transaction``;
- ``sqlite_backup`` (sqlite_file.py): the database file, copied with SQLite's online backup API.

Which strategies a database supports is its dialect's ``backup_strategies``.
"""

from __future__ import annotations

from airflow_migrate_provider.core.backup.mariadb_dump import MariadbDumpStrategy
from airflow_migrate_provider.core.backup.pg_dump import PgDumpStrategy
from airflow_migrate_provider.core.backup.snapshot import SNAPSHOT_PREFIX, SnapshotStrategy
from airflow_migrate_provider.core.backup.sqlite_file import SqliteBackupStrategy
from airflow_migrate_provider.core.backup.strategy import Copy, Strategy, default_location, human_size, tables_size

STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (SnapshotStrategy, PgDumpStrategy, MariadbDumpStrategy, SqliteBackupStrategy)}


def strategy_named(name: str, location: str | None) -> Strategy:
    return STRATEGIES[name](location)


__all__ = ["SNAPSHOT_PREFIX", "STRATEGIES", "Copy", "MariadbDumpStrategy", "PgDumpStrategy",
           "SnapshotStrategy", "SqliteBackupStrategy",
           "Strategy", "default_location", "human_size", "strategy_named", "tables_size"]
