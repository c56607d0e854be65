"""SQLite: transactional DDL once pysqlite's implicit transaction handling is switched off; one writer per
database file; introspection through pragmas (sqlite_catalog.py); values bound as text (sqlite_values.py)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.dialects import sqlite_catalog, sqlite_values
from airflow_migrate_provider.core.dialects.base import Dialect
from airflow_migrate_provider.core.dialects.types import RawForeignKey, RawIndex, TableDefinition
from airflow_migrate_provider.errors import RestoreFailed

_PREPARED = "_airflow_migrate_prepared"
_BUSY_TIMEOUT_MS = 10_000
# primary result codes (the low byte of an extended code) that mean "try again later"
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
# sqlite3 before Python 3.11 has no error codes: match the start of SQLite's own messages instead
_TRANSIENT_MESSAGES = ("database is locked", "database table is locked", "database schema is locked")


_RANK_FUNCTION = "airflow_migrate_sample_rank"


class SqliteDialect(Dialect):
    """SQLite through the standard library's sqlite3 (pysqlite)."""

    name = "sqlite"
    label = "SQLite"
    transactional_ddl = True
    conn_types = ("sqlite",)
    gx_datasource = "sqlite"
    sqlglot_name = "sqlite"
    backup_strategies = ("snapshot", "sqlite_backup")
    single_writer = True
    # in the default rollback-journal mode an open read transaction keeps writers from committing: counting
    # "after the lock" in one would hold them up just the same, so SQLite is read under the lock
    snapshot_reads = False
    untyped_results = True
    main_schema = "main."

    def prepare(self, engine: Engine) -> None:
        # pysqlite commits DDL outside of any transaction unless we take over BEGIN ourselves
        # (the recipe in SQLAlchemy's SQLite dialect docs); without this a failed step would leave
        # half its DDL behind.
        if getattr(engine, _PREPARED, False):
            return

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")

        setattr(engine, _PREPARED, True)
        engine.dispose()  # connections made before the listeners existed must not be reused

    def is_transient(self, exc: BaseException) -> bool:
        if not isinstance(exc, sa_exc.OperationalError):
            return False
        orig = getattr(exc, "orig", exc)
        code = getattr(orig, "sqlite_errorcode", None)
        if isinstance(code, int):
            return code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED)
        return str(orig).strip().lower().startswith(_TRANSIENT_MESSAGES)

    @contextmanager
    def _lock_wait(self, conn: Connection, timeout_s: float) -> Iterator[None]:
        # BEGIN IMMEDIATE waits for the write lock up to the busy timeout: set it on the driver connection
        # before any transaction begins, and put the usual one back for the pool
        raw = conn.connection.driver_connection
        raw.execute(f"PRAGMA busy_timeout = {max(1, math.ceil(timeout_s * 1000))}")
        try:
            yield
        finally:
            raw.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")

    def _lock_tables(self, conn: Connection, quoted_tables: list[str], timeout_s: float) -> None:
        # the transaction began with BEGIN IMMEDIATE (see prepare): it already holds the database's write
        # lock, which is the finest lock SQLite has; make sure of it with a write that changes nothing
        conn.exec_driver_sql(f"DELETE FROM {quoted_tables[0]} WHERE 0")

    # -- SQL text and values -------------------------------------------------------------------------
    def in_list(self, tuples: list[str], width: int) -> str:
        return f"VALUES {', '.join(tuples)}" if width > 1 else ", ".join(tuples)

    def bytewise(self, expr: str, typname: str | None, category: str | None) -> str:
        return f"{expr} COLLATE BINARY" if category == "text" else expr

    def write_value(self, value: Any) -> Any:
        return sqlite_values.write_value(value)

    def key_value(self, value: Any) -> Any:
        return sqlite_values.key_value(value)

    def bound_value(self, value: Any) -> Any:
        return sqlite_values.bound_value(value)

    def in_memory(self, engine: Engine) -> bool:
        return engine.url.database in (None, "", ":memory:")

    def sample_keys(self, conn: Connection, keys: str, from_sql: str, where: str, table: bool, size: int,
                    seed: int) -> tuple[list[tuple[Any, ...]], str]:
        conn.connection.driver_connection.create_function(_RANK_FUNCTION, -1, sqlite_values.rank, deterministic=True)
        rows = conn.exec_driver_sql(f"SELECT {keys} FROM {from_sql}{where} ORDER BY "
                                    f"{_RANK_FUNCTION}({int(seed)}, {keys}) LIMIT {int(size)}", {}).all()
        return [tuple(r) for r in rows], "seeded hash of the key"

    # -- catalog -------------------------------------------------------------------------------------
    def table_exists(self, conn: Connection, table: str) -> bool:
        return sqlite_catalog.table_exists(conn, table, self._preparer.quote_identifier)

    def declared_types(self, engine: Engine, table: str) -> dict[str, str]:
        return sqlite_catalog.declared_types(engine, table, self._preparer.quote_identifier)

    def is_rowid_alias(self, primary_key: list[str], column: str, declared: str) -> bool:
        return primary_key == [column] and declared.upper() == "INTEGER"

    def indexes(self, engine: Engine, table: str) -> list[RawIndex]:
        return sqlite_catalog.indexes(engine, table, self._preparer.quote_identifier)

    def foreign_keys(self, engine: Engine, table: str) -> list[RawForeignKey]:
        return sqlite_catalog.foreign_keys(engine, table, self._preparer.quote_identifier)

    def unique_constraints(self, engine: Engine, table: str) -> list[tuple[str, ...]]:
        return sqlite_catalog.unique_constraints(engine, table, self._preparer.quote_identifier)

    def relation_size(self, conn: Connection, table: str) -> int | None:
        return sqlite_catalog.relation_size(conn, table)

    def table_definition(self, conn: Connection, table: str) -> TableDefinition:
        return sqlite_catalog.table_definition(conn, table, self._preparer.quote_identifier)

    # -- restore -------------------------------------------------------------------------------------
    @contextmanager
    def restore_session(self, conn: Connection) -> Iterator[None]:
        raw = conn.connection.driver_connection
        raw.execute("PRAGMA foreign_keys = OFF")  # before any transaction: SQLite ignores it inside one
        try:
            yield
        finally:
            raw.execute("PRAGMA foreign_keys = ON")  # the pooled connection must not keep foreign keys off

    def check_restored_foreign_keys(self, conn: Connection) -> None:
        problems = conn.execute(text("PRAGMA foreign_key_check")).all()
        if problems:
            shown = "; ".join(f"{r[0]} row {r[1]} → {r[2]}" for r in problems[:5])
            raise RestoreFailed(f"the restored tables break foreign keys ({len(problems)} row(s): {shown}); the "
                                f"restore was rolled back. Restore the referencing tables too (add them to "
                                f"backup.tables).")

    # -- async ---------------------------------------------------------------------------------------
    def async_url(self, host: str | None, port: int | None, login: str | None, password: str | None,
                  schema: str | None) -> Any:
        from sqlalchemy.engine import URL

        return URL.create("sqlite+aiosqlite", database=host or schema)

    def async_fragment(self, plan_sql: str) -> str:
        return plan_sql
