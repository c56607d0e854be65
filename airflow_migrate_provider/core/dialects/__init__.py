"""Dialect adapters: what differs between PostgreSQL, SQLite and (later) MySQL/MariaDB."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.dialects.base import Dialect
from airflow_migrate_provider.core.dialects.postgresql import PostgresDialect
from airflow_migrate_provider.core.dialects.sqlite import SqliteDialect
from airflow_migrate_provider.errors import MigrateError

_BY_NAME: dict[str, type[Dialect]] = {"postgresql": PostgresDialect, "sqlite": SqliteDialect}


def dialect_named(name: str) -> Dialect:
    """The adapter for a dialect name, without a database (for rendering a plan offline)."""
    try:
        return _BY_NAME[name]()
    except KeyError:
        raise MigrateError(
            f"database dialect '{name}' is not supported yet (supported: {', '.join(sorted(_BY_NAME))})"
        ) from None


def dialect_for(engine: Engine) -> Dialect:
    """The adapter for an engine's database, after preparing the engine for migrations."""
    adapter = dialect_named(engine.dialect.name)
    adapter.prepare(engine)
    return adapter


__all__ = ["Dialect", "PostgresDialect", "SqliteDialect", "dialect_for", "dialect_named"]
