"""Dialect adapters: everything that differs between databases (PostgreSQL, MySQL/MariaDB, SQLite).

Get one with :func:`dialect_for` (an engine, prepared for migrations), :func:`dialect_of` (an engine or
connection, as it is) or :func:`dialect_named` (no database: rendering a plan offline). An unsupported
database is an :class:`~airflow_migrate_provider.errors.UnsupportedDatabase` naming the plan field.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.dialects.base import Dialect
from airflow_migrate_provider.core.dialects.mysql import MysqlDialect
from airflow_migrate_provider.core.dialects.postgresql import PostgresDialect
from airflow_migrate_provider.core.dialects.sqlite import SqliteDialect
from airflow_migrate_provider.errors import UnsupportedDatabase

_BY_NAME: dict[str, type[Dialect]] = {"mariadb": MysqlDialect, "mysql": MysqlDialect, "postgresql": PostgresDialect,
                                      "sqlite": SqliteDialect}
SUPPORTED = tuple(sorted(_BY_NAME))


def _unsupported(name: str, field: str | None, conn_id: str | None) -> UnsupportedDatabase:
    where = f"{field}: " if field else ""
    if conn_id:
        return UnsupportedDatabase(f"{where}connection '{conn_id}' is a {name} database; supported: "
                                   f"{', '.join(SUPPORTED)}")
    return UnsupportedDatabase(f"{where}database dialect '{name}' is not supported yet (supported: "
                               f"{', '.join(SUPPORTED)})")


def dialect_named(name: str, field: str | None = None) -> Dialect:
    """The adapter for a dialect name, without a database (for rendering a plan offline)."""
    try:
        cls = _BY_NAME[name]
    except KeyError:
        raise _unsupported(name, field, None) from None
    if name == cls.name:
        return cls()
    from sqlalchemy.dialects import registry

    loaded = registry.load(name)  # one adapter for several SQLAlchemy dialects (mysql, mariadb)
    return cls(loaded() if isinstance(loaded, type) else loaded)


def dialect_of(bind: Engine | Connection, field: str | None = None, conn_id: str | None = None) -> Dialect:
    """The adapter for an engine's or connection's database (driver quoting and placeholders included)."""
    sa_dialect = bind.dialect
    try:
        cls = _BY_NAME[sa_dialect.name]
    except KeyError:
        raise _unsupported(sa_dialect.name, field, conn_id) from None
    return cls(sa_dialect)


def dialect_for_conn_type(conn_type: str, field: str | None = None) -> Dialect:
    """The adapter for an Airflow connection type (``postgres``, ``sqlite``), without a database."""
    for cls in _BY_NAME.values():
        if conn_type in cls.conn_types:
            return cls()
    raise _unsupported(conn_type, field, None)


def own_connection_url(conn_type: str, host: str | None, port: int | None, login: str | None,
                       password: str | None, schema: str | None, extra: dict[str, Any]) -> Any:
    """The SQLAlchemy URL our adapter builds for an Airflow connection whose provider hook we do not use (MySQL,
    MariaDB: the provider needs mysqlclient); None: use the connection's provider hook."""
    for cls in _BY_NAME.values():
        if conn_type in cls.conn_types:
            return cls.connection_url(host, port, login, password, schema, extra)
    return None


def dialect_name_of_uri(uri: str, field: str | None = None, conn_id: str | None = None,
                        default: str = "postgresql") -> str:
    """The dialect name of a connection URI's scheme (``postgres://``, ``sqlite:///``); ``default`` when there
    is no URI. An unsupported scheme is an UnsupportedDatabase naming ``field`` and ``conn_id``."""
    scheme = uri.split(":", 1)[0].split("+", 1)[0].lower() if uri else ""
    if not scheme:
        return default
    if scheme in _BY_NAME:
        return scheme
    for name, cls in _BY_NAME.items():
        if scheme in cls.conn_types:
            return name
    raise _unsupported(scheme, field, conn_id or "?")


def precise_timestamp() -> Any:
    """The column type the ledger stores times in: a time zone-aware DateTime, with sub-second precision on
    every database (MySQL's DATETIME keeps whole seconds unless told otherwise)."""
    from sqlalchemy import DateTime

    column_type: Any = DateTime(timezone=True)
    for name, cls in _BY_NAME.items():
        if cls.precise_timestamp_type is not None:
            column_type = column_type.with_variant(cls.precise_timestamp_type(), name)
    return column_type


def is_transient(bind: Engine | Connection, exc: BaseException) -> bool:
    """Whether retrying can cure ``exc`` raised by ``bind``'s database: its dialect decides; for a database
    without one, a lost connection is transient and anything else is not."""
    try:
        return dialect_of(bind).is_transient(exc)
    except UnsupportedDatabase:
        return (isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated) or isinstance(
            exc, sa_exc.DisconnectionError)


def dialect_for(engine: Engine, field: str | None = None, conn_id: str | None = None) -> Dialect:
    """The adapter for an engine's database, after preparing the engine for migrations. ``field`` and
    ``conn_id`` (the plan field naming the connection, and its id) go into the error for an unsupported one."""
    adapter = dialect_of(engine, field, conn_id)
    adapter.prepare(engine)
    return adapter


__all__ = ["SUPPORTED", "Dialect", "MysqlDialect", "PostgresDialect", "SqliteDialect", "dialect_for",
           "dialect_for_conn_type",
           "dialect_name_of_uri", "dialect_named", "dialect_of", "is_transient", "own_connection_url",
           "precise_timestamp"]
