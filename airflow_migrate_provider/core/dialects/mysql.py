"""MySQL and MariaDB (one adapter; SQLAlchemy calls them ``mysql`` and ``mariadb``): DDL commits on its own, so
schema steps run statement by statement with progress recorded; InnoDB row locks for write locks; consistent
snapshots; sessions in UTC."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import event, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.mysql import DATETIME
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.interfaces import Dialect as SADialect

from airflow_migrate_provider.core.dialects import (
    mysql_catalog,
    mysql_copy,
    mysql_hashing,
    mysql_restore,
    mysql_resume,
)
from airflow_migrate_provider.core.dialects.base import Dialect
from airflow_migrate_provider.core.dialects.types import (
    RawForeignKey,
    RawIndex,
    ResumeHazard,
    TableDefinition,
    TypeInfo,
    split_name,
)

_PREPARED = "_airflow_migrate_prepared"
# lock wait timeout, deadlock, too many connections, server shutdown, can't connect, gone away, lost connection,
# killed (MariaDB), client idle timeout (MySQL 8)
TRANSIENT_CODES = frozenset({1205, 1213, 1040, 1053, 2002, 2003, 2006, 2013, 1927, 4031})
SESSION = "SET SESSION time_zone = '+00:00'"
DRIVER_EXTRAS = ("charset", "ssl_ca", "ssl_cert", "ssl_key", "ssl_verify_cert", "ssl_verify_identity",
                 "connect_timeout", "read_timeout", "write_timeout", "unix_socket")


def _lock_name(name: str) -> str:
    """GET_LOCK names are server-wide and at most 64 characters."""
    import hashlib

    return "airflow_migrate:" + hashlib.sha1(name.encode()).hexdigest()


class MysqlDialect(Dialect):
    """MySQL 8 and MariaDB 10.6+ through PyMySQL (or another SQLAlchemy driver)."""

    name = "mysql"
    transactional_ddl = False
    conn_types = ("mysql", "mariadb")
    sqlglot_name = "mysql"
    snapshot_reads = True
    backup_strategies = ("snapshot", "mariadb_dump")
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

        if self.driver == "pymysql":
            # the bulk copy streams LOAD DATA LOCAL INFILE: the client must allow it, however the engine was made
            @event.listens_for(engine, "do_connect")
            def _allow_local_infile(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
                cparams.setdefault("local_infile", True)

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
        # A locking read of every row takes shared next-key locks on the whole clustered index, up to its end: other
        # sessions can neither insert, update nor delete, while plain reads (consistent snapshots) go on. USE INDEX ()
        # makes it scan the clustered index: COUNT(*) would pick a small secondary index, whose locks do not stop an
        # update of other columns. LOCK TABLES would block writes too, but it ends the transaction and confines the
        # session to the tables it names.
        for table in quoted_tables:
            conn.exec_driver_sql(f"SELECT COUNT(*) FROM {table} USE INDEX () LOCK IN SHARE MODE")

    @contextmanager
    def presence_lock(self, engine: Engine, name: str) -> Iterator[bool]:
        # GET_LOCK belongs to the session: the server frees it when the session ends, however the worker died
        with engine.connect() as conn:
            named = {"n": _lock_name(name)}
            got = conn.exec_driver_sql(f"SELECT GET_LOCK({self.param('n')}, 0)", named).scalar() == 1
            conn.commit()
            try:
                yield got
            finally:
                if got:
                    conn.exec_driver_sql(f"SELECT RELEASE_LOCK({self.param('n')})", named)

    def presence_held(self, engine: Engine, name: str) -> bool | None:
        with engine.connect() as conn:
            return conn.exec_driver_sql(f"SELECT IS_USED_LOCK({self.param('n')})",
                                        {"n": _lock_name(name)}).scalar() is not None

    @contextmanager
    def working_session(self, engine: Engine, name: str) -> Iterator[int | None]:
        with engine.connect() as conn:
            named = {"n": _lock_name(name)}
            got = conn.exec_driver_sql(f"SELECT GET_LOCK({self.param('n')}, 0), CONNECTION_ID()", named).one()
            conn.commit()
            try:
                yield int(got[1])
            finally:
                if got[0] == 1:
                    conn.exec_driver_sql(f"SELECT RELEASE_LOCK({self.param('n')})", named)

    def backend_alive(self, engine: Engine, backend_id: int) -> bool | None:
        with engine.connect() as conn:
            return conn.exec_driver_sql(f"SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = "
                                        f"{self.param('b')}", {"b": backend_id}).scalar_one() > 0

    def end_sessions(self, engine: Engine, host: str, pid: int, backend_id: int | None) -> list[int]:
        # the holder's own session, if the server still runs something in it (its other sessions have no name)
        if backend_id is None or not self.backend_alive(engine, backend_id):
            return []
        with engine.connect() as conn:
            conn.exec_driver_sql(f"KILL {int(backend_id)}")
        return [backend_id]

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
    def resume_hazard(self, statement: str) -> ResumeHazard | None:
        return mysql_resume.resume_hazard(statement, self.is_mariadb)

    def upsert_clause(self, keys: list[str], others: list[str], excluded: str = "excluded") -> str:
        # VALUES(c) is the row that was to be inserted, for INSERT ... VALUES and INSERT ... SELECT alike
        if not others:
            return f" ON DUPLICATE KEY UPDATE {keys[0]} = {keys[0]}"
        return " ON DUPLICATE KEY UPDATE " + ", ".join(f"{c} = VALUES({c})" for c in others)

    def bytewise(self, expr: str, typname: str | None, category: str | None) -> str:
        # code point order, like Python's str (and PostgreSQL's COLLATE "C"), whatever the column's collation; as
        # bytes, because utf8mb4_bin pads with spaces ('a' = 'a ') while Python's order does not
        return f"CAST(CONVERT({expr} USING utf8mb4) AS BINARY)" if category == "text" else expr

    def write_value(self, value: Any) -> Any:
        if isinstance(value, datetime) and value.tzinfo is not None:
            return value.astimezone(timezone.utc).replace(tzinfo=None)  # the session is in UTC (see prepare)
        return super().write_value(value)

    def stage_like(self, tconn: Connection, stage: str, table: str) -> None:
        tconn.exec_driver_sql(f"CREATE TEMPORARY TABLE IF NOT EXISTS {stage} LIKE {table}", {})

    # -- catalog -------------------------------------------------------------------------------------
    def indexes(self, engine: Engine, table: str) -> list[RawIndex]:
        # a UNIQUE key is the unique constraint itself (reflection lists it twice): it is compared as a constraint,
        # as PostgreSQL's and SQLite's UNIQUE are
        schema, name = split_name(table)
        backing = {u.get("duplicates_index") for u in inspect(engine).get_unique_constraints(name, schema=schema)}
        return [index for index in super().indexes(engine, table) if index.name not in backing]

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

    # -- backups and restore -------------------------------------------------------------------------
    def table_definition(self, conn: Connection, table: str) -> TableDefinition:
        return mysql_catalog.table_definition(conn, table, self.ident(table), self._preparer.quote_identifier)

    @contextmanager
    def restore_session(self, conn: Connection) -> Iterator[None]:
        # rows come back table by table and tables are swapped by renames: InnoDB's checks are off for the
        # restore's session, which checks the restored foreign keys by query instead (foreign_key_links)
        conn.exec_driver_sql("SET SESSION foreign_key_checks = 0")
        conn.commit()
        try:
            yield
        finally:
            conn.exec_driver_sql("SET SESSION foreign_key_checks = 1")  # the pooled connection checks again
            conn.commit()

    def before_rebuild(self, conn: Connection, table: str, definition: TableDefinition, exists: bool,
                       rebuilt: list[str]) -> dict[str, Any]:
        return mysql_restore.handed_out(conn, self.ident(table), exists)

    def after_fill(self, conn: Connection, table: str, state: dict[str, Any]) -> None:
        mysql_restore.continue_auto_increment(conn, self.ident(table), state)

    def diff_keys(self, conn: Connection, table: str, definition: TableDefinition, source: str,
                  index: int) -> str | None:
        return mysql_restore.diff_keys(conn, self.ident(table), definition, source, index,
                                       self._preparer.quote_identifier)

    def delete_diff_sql(self, qt: str, diff: str, match: str) -> str:
        return mysql_restore.delete_diff_sql(qt, diff, match)

    def update_diff_sql(self, qt: str, columns: list[str], source: str, diff: str, target_match: str,
                        source_match: str) -> str:
        return mysql_restore.update_diff_sql(qt, columns, source, diff, target_match, source_match)

    def foreign_key_links(self, conn: Connection, restoring: set[str], dropping: set[str],
                          rebuilt: dict[str, TableDefinition]) -> list[tuple[str, RawForeignKey]]:
        return mysql_restore.foreign_key_links(conn, restoring, dropping, rebuilt)

    def rename_tables(self, conn: Connection, renames: list[tuple[str, str]]) -> None:
        mysql_restore.rename_tables(conn, renames)

    def move_foreign_keys(self, conn: Connection, parked: str, live: str, skip: set[str]) -> None:
        mysql_restore.move_foreign_keys(conn, parked, live, skip, self._preparer.quote_identifier)

    # -- copy fast path ------------------------------------------------------------------------------
    stream_text = "rows formatted by the source server, LOAD DATA LOCAL INFILE into the target (no value in Python)"
    bulk_text = "keyset SELECT batches, LOAD DATA LOCAL INFILE into the target"

    @property
    def copy_fast_path(self) -> bool:
        return self.driver in ("pymysql", "mysqldb")

    def stream_column(self, expr: str, target_type: str) -> str:
        return expr  # the target parses the text of each value into its column's type

    def copy_between(self, sconn: Connection, select_sql: str, params: dict[str, Any], tconn: Connection,
                     into: str, columns: str) -> int:
        return mysql_copy.copy_between(sconn, select_sql, params, tconn, into, columns)

    def copy_rows_into(self, tconn: Connection, into: str, columns: str
                       ) -> AbstractContextManager[Callable[[tuple[Any, ...]], None]]:
        return mysql_copy.copy_rows_into(tconn, into, columns)

    def clear_stage(self, tconn: Connection, stage: str) -> None:
        tconn.exec_driver_sql(f"DELETE FROM {stage}", {})  # TRUNCATE commits the transaction, even of a temp table

    def compare(self, exprs: list[str], op: str, values: tuple[Any, ...], params: dict[str, Any],
                prefix: str) -> str:
        # keyset bounds: the optimizer cannot range-scan a row-value comparison (a, b) > (x, y); the expansion
        # a > x OR (a = x AND b > y) is the same test and uses the key's index
        if len(exprs) == 1:
            return super().compare(exprs, op, values, params, prefix)
        names = []
        for i, value in enumerate(values):
            params[f"{prefix}{i}"] = value
            names.append(self.param(f"{prefix}{i}"))
        return mysql_copy.expand_row_comparison(exprs, op, names)

    # -- hashing -------------------------------------------------------------------------------------
    # verification: values hashed per key segment in SQL (mysql_hashing), and what result types mean
    def stable_session(self, conn: Connection, planner_hints: bool = False) -> None:
        conn.exec_driver_sql(mysql_hashing.SESSION)  # TIMESTAMP values in UTC, also on an unprepared engine

    def describe_type_codes(self, conn: Connection, codes: list[Any]) -> dict[int, TypeInfo]:
        return mysql_hashing.describe_type_codes(codes)

    def result_category(self, info: TypeInfo) -> str | None:
        return mysql_hashing.result_category(info)

    def declared_types(self, engine: Engine, table: str) -> dict[str, str]:
        return mysql_hashing.declared_types(engine, table)

    def column_hash_sql(self, exprs: tuple[str, str], typnames: tuple[str | None, str | None], rule: Any,
                        params: dict[str, Any], prefix: str) -> tuple[str, str] | None:
        return mysql_hashing.column_hash_sql(exprs, typnames, rule, params, prefix)

    def segment_hash_sql(self, fields: list[str], null_exprs: list[str],
                         version: tuple[int, ...] | None) -> str | None:
        return mysql_hashing.segment_hash_sql(fields)

    def segment_bucket(self, key: str, lo: str, width: str, wide: bool) -> str:
        return mysql_hashing.segment_bucket(key, lo, width, wide)

    def table_hash(self, conn: Connection, relation: str, quoted_columns: str) -> tuple[int, int, int] | None:
        return mysql_hashing.table_hash(conn, relation, quoted_columns)

    # -- async ---------------------------------------------------------------------------------------
    def async_url(self, host: str | None, port: int | None, login: str | None, password: str | None,
                  schema: str | None) -> Any:
        from sqlalchemy.engine import URL

        return URL.create("mysql+aiomysql", username=login, password=password, host=host, port=port,
                          database=schema)
