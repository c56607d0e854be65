"""Which database's change-capture SQL to use (the classes are in capture_base.py)."""

from __future__ import annotations

from airflow_migrate_provider.core.dialects.base import Dialect
from airflow_migrate_provider.core.dialects.capture_base import CaptureNames, CaptureSql
from airflow_migrate_provider.errors import UnsupportedDatabase

__all__ = ["CaptureNames", "CaptureSql", "capture_sql"]


def capture_sql(dialect: Dialect) -> CaptureSql:
    """The change-capture SQL of ``dialect``'s database (UnsupportedDatabase where it has none)."""
    if dialect.name == "postgresql":
        from airflow_migrate_provider.core.dialects.pg_capture import PgCaptureSql

        return PgCaptureSql(dialect)
    if dialect.name == "sqlite":
        from airflow_migrate_provider.core.dialects.sqlite_capture import SqliteCaptureSql

        return SqliteCaptureSql(dialect)
    if dialect.name == "mysql":
        from airflow_migrate_provider.core.dialects.mysql_capture import MysqlCaptureSql

        return MysqlCaptureSql(dialect)
    raise UnsupportedDatabase(f"change capture (dual_write) is not supported on {dialect.label} databases")
