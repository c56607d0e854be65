"""MySQL and MariaDB (one adapter; SQLAlchemy calls them ``mysql`` and ``mariadb``): DDL commits on its own, so
schema steps run statement by statement with progress recorded; InnoDB row locks for write locks; consistent
snapshots; sessions in UTC."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects.mysql import DATETIME
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.interfaces import Dialect as SADialect

from airflow_migrate_provider.core.dialects.base import Dialect

_PREPARED = "_airflow_migrate_prepared"
# lock wait timeout, deadlock, too many connections, server shutdown, can't connect, gone away, lost connection,
# killed (MariaDB), client idle timeout (MySQL 8)
TRANSIENT_CODES = frozenset({1205, 1213, 1040, 1053, 2002, 2003, 2006, 2013, 1927, 4031})
SESSION = "SET SESSION time_zone = '+00:00'"
DRIVER_EXTRAS = ("charset", "ssl_ca", "ssl_cert", "ssl_key", "ssl_verify_cert", "ssl_verify_identity",
                 "connect_timeout", "read_timeout", "write_timeout", "unix_socket")


class MysqlDialect(Dialect):
    """MySQL 8 and MariaDB 10.6+ through PyMySQL (or another SQLAlchemy driver)."""

    name = "mysql"
    transactional_ddl = False
    conn_types = ("mysql", "mariadb")
    sqlglot_name = "mysql"
    snapshot_reads = True
    precise_timestamp_type = staticmethod(lambda: DATETIME(fsp=6))

    def __init__(self, sa_dialect: SADialect | None = None):
        super().__init__(sa_dialect)
        self.is_mariadb = bool(getattr(self.sa_dialect, "is_mariadb", False)) or self.sa_dialect.name == "mariadb"
        self.label = "MariaDB" if self.is_mariadb else "MySQL"

    @classmethod
    def connection_url(cls, host: str | None, port: int | None, login: str | None, password: str | None,
                       schema: str | None, extra: dict[str, Any]) -> Any:
        # Airflow's MySQL provider needs mysqlclient, which builds against system headers: PyMySQL is pure Python.
        # Extras other than Airflow's own go to the driver (charset, ssl_ca, ...).
        from sqlalchemy.engine import URL

        query = {"charset": "utf8mb4", "local_infile": "1"}
        query.update({k: str(v) for k, v in extra.items() if k in DRIVER_EXTRAS})
        return URL.create("mysql+pymysql", username=login, password=password, host=host or "localhost",
                          port=port, database=schema or None, query=query)

    def prepare(self, engine: Engine) -> None:
        # every session reads and writes TIMESTAMP values in UTC, whatever the server's time zone: values copied
        # or compared between databases do not shift with a server setting
        if getattr(engine, _PREPARED, False):
            return

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute(SESSION)
            cursor.close()

        setattr(engine, _PREPARED, True)
        engine.dispose()  # connections made before the listener existed must not be reused

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
        orig = getattr(exc, "orig", exc)
        code = orig.args[0] if getattr(orig, "args", None) and isinstance(orig.args[0], int) else None
        if code is not None:
            return code in TRANSIENT_CODES
        return isinstance(exc, sa_exc.DisconnectionError)

    # -- locks ---------------------------------------------------------------------------------------
    @contextmanager
    def _lock_wait(self, conn: Connection, timeout_s: float) -> Iterator[None]:
        # row locks (innodb_lock_wait_timeout) and metadata locks (lock_wait_timeout) both wait whole seconds
        seconds = max(1, math.ceil(timeout_s))
        before = conn.exec_driver_sql("SELECT @@SESSION.innodb_lock_wait_timeout, @@SESSION.lock_wait_timeout").one()
        conn.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {seconds}, lock_wait_timeout = {seconds}")
        conn.commit()
        # gap locks (which keep inserts out) exist only in REPEATABLE READ and SERIALIZABLE
        conn.execution_options(isolation_level="REPEATABLE READ")
        try:
            yield
        finally:
            conn.exec_driver_sql(f"SET SESSION innodb_lock_wait_timeout = {int(before[0])}, "
                                 f"lock_wait_timeout = {int(before[1])}")

    def _lock_tables(self, conn: Connection, quoted_tables: list[str], timeout_s: float) -> None:
        # A locking read of every row takes shared next-key locks on the whole index, up to its end: other sessions
        # can neither insert, update nor delete, while plain reads (consistent snapshots) go on. LOCK TABLES would
        # block writes too, but it ends the transaction and confines the session to the tables it names.
        for table in quoted_tables:
            conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table} LOCK IN SHARE MODE")

    @contextmanager
    def snapshot_reader(self, bind: Engine | Connection) -> Iterator[Connection]:
        with ExitStack() as stack:
            conn = stack.enter_context(bind.connect()) if isinstance(bind, Engine) else bind
            conn.execution_options(isolation_level="REPEATABLE READ")
            conn.begin()
            try:
                # the snapshot is taken here, not at the first read
                conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
                yield conn
            finally:
                conn.rollback()

    # -- SQL text and values -------------------------------------------------------------------------
    def upsert_clause(self, keys: list[str], others: list[str], excluded: str = "excluded") -> str:
        # VALUES(c) is the row that was to be inserted, for INSERT ... VALUES and INSERT ... SELECT alike
        if not others:
            return f" ON DUPLICATE KEY UPDATE {keys[0]} = {keys[0]}"
        return " ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in others)

    def bytewise(self, expr: str, typname: str | None, category: str | None) -> str:
        # code point order, like Python's str (and PostgreSQL's COLLATE "C"), whatever the column's collation
        return f"CONVERT({expr} USING utf8mb4) COLLATE utf8mb4_bin" if category == "text" else expr

    def write_value(self, value: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(timezone.utc).replace(tzinfo=None)  # the session is in UTC (see prepare)
        return super().write_value(value)

    def stage_like(self, tconn: Connection, stage: str, table: str) -> None:
        tconn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} LIKE {table}", {})

    # -- catalog -------------------------------------------------------------------------------------
    def relation_size(self, conn: Connection, table: str) -> int | None:
        schema, _, name = table.rpartition(".")
        row = conn.exec_driver_sql(
            "SELECT data_length + index_length FROM information_schema.tables "
            "WHERE table_schema = COALESCE(%(schema)s, DATABASE()) AND table_name = %(name)s"
            if self.pyformat else
            "SELECT data_length + index_length FROM information_schema.tables "
            "WHERE table_schema = COALESCE(:schema, DATABASE()) AND table_name = :name",
            {"schema": schema or None, "name": name}).first()
        return int(row[0]) if row and row[0] is not None else None

    # -- async ---------------------------------------------------------------------------------------
    def async_url(self, host: str | None, port: int | None, login: str | None, password: str | None,
                  schema: str | None) -> Any:
        from sqlalchemy.engine import URL

        return URL.create("mysql+aiomysql", username=login, password=password, host=host, port=port,
                          database=schema)
