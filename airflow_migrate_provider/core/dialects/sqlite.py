"""SQLite: transactional DDL once pysqlite's implicit transaction handling is switched off."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.dialects.base import Dialect

_PREPARED = "_airflow_migrate_prepared"
_BUSY_TIMEOUT_MS = 10_000
# primary result codes (the low byte of an extended code) that mean "try again later"
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6
# sqlite3 before Python 3.11 has no error codes: match the start of SQLite's own messages instead
_TRANSIENT_MESSAGES = ("database is locked", "database table is locked", "database schema is locked")


class SqliteDialect(Dialect):
    name = "sqlite"
    transactional_ddl = True

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
    def lock_wait(self, conn: Connection, timeout_s: float) -> Iterator[None]:
        # BEGIN IMMEDIATE waits for the write lock up to the busy timeout: set it on the driver connection
        # before any transaction begins, and put the usual one back for the pool
        raw = conn.connection.driver_connection
        raw.execute(f"PRAGMA busy_timeout = {max(1, math.ceil(timeout_s * 1000))}")
        try:
            yield
        finally:
            raw.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")

    def lock_against_writes(self, conn: Connection, quoted_tables: list[str], timeout_s: float) -> None:
        # the transaction began with BEGIN IMMEDIATE (see prepare): it already holds the database's write
        # lock, which is the finest lock SQLite has; make sure of it with a write that changes nothing
        conn.exec_driver_sql(f"DELETE FROM {quoted_tables[0]} WHERE 0")
