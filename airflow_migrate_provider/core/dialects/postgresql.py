"""PostgreSQL: transactional DDL, SQLSTATE-based error classification, LOCK TABLE, snapshot reads, COPY,
pg_catalog."""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.dialects import pg_catalog, pg_copy, pg_hashing, pg_restore
from airflow_migrate_provider.core.dialects.base import Dialect, session_tag
from airflow_migrate_provider.core.dialects.types import TableDefinition, TypeInfo

# connection exceptions, serialization failure, deadlock, lock not available, shutdown, too many connections
_PREPARED = "_airflow_migrate_pg_prepared"
TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300")


class PostgresDialect(pg_restore.PgSegmentRestore, Dialect):
    """PostgreSQL through psycopg 3 (the COPY fast path) or any other SQLAlchemy driver."""

    name = "postgresql"
    label = "PostgreSQL"
    transactional_ddl = True
    conn_types = ("postgres", "postgresql")
    gx_datasource = "postgres"
    sqlglot_name = "postgres"
    backup_strategies = ("snapshot", "pg_dump")
    snapshot_reads = True
    insert_overriding = " OVERRIDING SYSTEM VALUE"
    drop_cascade = " CASCADE"

    def prepare(self, engine: Engine) -> None:
        # every session names the process it works for, so that a takeover can end what a dead holder still runs
        if getattr(engine, _PREPARED, False):
            return

        @event.listens_for(engine, "do_connect")
        def _tag_session(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
            cparams.setdefault("application_name", session_tag(socket.gethostname(), os.getpid()))

        setattr(engine, _PREPARED, True)

    @contextmanager
    def working_session(self, engine: Engine, name: str) -> Iterator[int | None]:
        with engine.connect() as conn:
            backend = int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())
            conn.commit()  # idle, not idle in transaction: the server notices at once when the client dies
            yield backend

    def backend_alive(self, engine: Engine, backend_id: int) -> bool | None:
        with engine.connect() as conn:
            return conn.exec_driver_sql("SELECT count(*) FROM pg_stat_activity WHERE pid = %(b)s",
                                        {"b": backend_id}).scalar_one() > 0

    def end_sessions(self, engine: Engine, host: str, pid: int, backend_id: int | None) -> list[int]:
        # PostgreSQL goes on running a statement whose client died until it finishes: end it (waiting up to 10 s).
        # Found by the session name the dead process gave its sessions, never by the backend pid alone: the
        # operating system reuses a dead backend's pid for new sessions.
        # (First select, then end one by one: in one statement the planner may call pg_terminate_backend on rows
        # before the WHERE clause has ruled them out.)
        find = "SELECT pid FROM pg_stat_activity WHERE application_name = %(tag)s AND pid <> pg_backend_pid()"
        with engine.connect() as conn:
            found = [int(r[0]) for r in conn.exec_driver_sql(find, {"tag": session_tag(host, pid)})]
            ended = [backend for backend in found if conn.exec_driver_sql(
                "SELECT pg_terminate_backend(%(p)s, 10000)", {"p": backend}).scalar()]
            conn.commit()
        return ended

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
        orig = getattr(exc, "orig", exc)
        sqlstate = getattr(orig, "sqlstate", None) or ""
        if sqlstate:
            return sqlstate.startswith(TRANSIENT_SQLSTATES)
        return isinstance(exc, (sa_exc.OperationalError, sa_exc.DisconnectionError))  # no SQLSTATE: connection lost

    def _lock_tables(self, conn: Connection, quoted_tables: list[str], timeout_s: float) -> None:
        # SHARE conflicts with the ROW EXCLUSIVE lock every INSERT/UPDATE/DELETE takes; readers are not blocked
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{max(1, math.ceil(timeout_s * 1000))}ms'")  # 0 = forever
        conn.exec_driver_sql(f"LOCK TABLE {', '.join(quoted_tables)} IN SHARE MODE")

    @contextmanager
    def snapshot_reader(self, bind: Engine | Connection) -> Iterator[Connection]:
        """A REPEATABLE READ, READ ONLY transaction. A connection passed in keeps that isolation level until it
        goes back to the pool (SQLAlchemy resets it there)."""
        with ExitStack() as stack:
            conn = stack.enter_context(bind.connect()) if isinstance(bind, Engine) else bind
            conn.execution_options(isolation_level="REPEATABLE READ")  # also right on an AUTOCOMMIT engine
            conn.begin()
            try:
                conn.exec_driver_sql("SET TRANSACTION READ ONLY")
                # the snapshot is taken by the transaction's first query, not by BEGIN: take it now
                conn.exec_driver_sql("SELECT 1")
                yield conn
            finally:
                conn.rollback()

    # -- SQL text ------------------------------------------------------------------------------------
    def read_json_as_text(self, expr: str) -> str:
        return f"CAST(({expr}) AS text)"

    def bytewise(self, expr: str, typname: str | None, category: str | None) -> str:
        return f'{expr} COLLATE "C"' if pg_hashing.is_text(typname, category) else expr

    # -- catalog -------------------------------------------------------------------------------------
    def table_exists(self, conn: Connection, table: str) -> bool:
        return pg_catalog.table_exists(conn, self.ident(table))

    def declared_types(self, engine: Engine, table: str) -> dict[str, str]:
        return pg_catalog.engine_declared_types(engine, self.ident(table))

    def cast_types(self, conn: Connection, table: str) -> dict[str, str]:
        return pg_catalog.declared_types(conn, self.ident(table))

    def describe_type_codes(self, conn: Connection, codes: list[Any]) -> dict[int, TypeInfo]:
        return pg_catalog.describe_type_codes(conn, codes)

    def relation_size(self, conn: Connection, table: str) -> int | None:
        return pg_catalog.relation_size(conn, self.ident(table))

    def table_definition(self, conn: Connection, table: str) -> TableDefinition:
        return pg_catalog.table_definition(conn, self.ident(table), self._preparer.quote_identifier)

    def sample_keys(self, conn: Connection, keys: str, from_sql: str, where: str, table: bool, size: int,
                    seed: int) -> tuple[list[tuple[Any, ...]], str]:
        return pg_catalog.sample_keys(conn, keys, from_sql, where, table, size, seed)

    # -- sessions and hashing ------------------------------------------------------------------------
    def stable_session(self, conn: Connection, planner_hints: bool = False) -> None:
        conn.exec_driver_sql(pg_hashing.SESSION + (pg_hashing.PLANNER if planner_hints else ""))

    def result_category(self, info: TypeInfo) -> str:
        return pg_hashing.result_category(info)

    def column_hash_sql(self, exprs: tuple[str, str], typnames: tuple[str | None, str | None], rule: Any,
                        params: dict[str, Any], prefix: str) -> tuple[str, str] | None:
        return pg_hashing.column_hash_sql(exprs, typnames, rule, params, prefix)

    def segment_hash_sql(self, fields: list[str], null_exprs: list[str],
                         version: tuple[int, ...] | None) -> str | None:
        return pg_hashing.segment_hash_sql(fields, null_exprs, version)

    def prefer_hash_grouping(self, conn: Connection) -> None:
        conn.exec_driver_sql("SELECT set_config('enable_sort', 'off', true)")  # few groups: hash them

    def table_hash(self, conn: Connection, relation: str, quoted_columns: str) -> tuple[int, int, int] | None:
        return pg_hashing.table_hash(conn, relation, quoted_columns)

    # -- copy fast path ------------------------------------------------------------------------------
    @property
    def copy_fast_path(self) -> bool:
        return self.driver == "psycopg"

    def copy_between(self, sconn: Connection, select_sql: str, params: dict[str, Any], tconn: Connection,
                     into: str, columns: str) -> int:
        return pg_copy.copy_between(sconn, select_sql, params, tconn, into, columns)

    def copy_rows_into(self, tconn: Connection, into: str, columns: str
                       ) -> AbstractContextManager[Callable[[tuple[Any, ...]], None]]:
        return pg_copy.copy_rows_into(tconn, into, columns)

    def stage_like(self, tconn: Connection, stage: str, table: str) -> None:
        tconn.exec_driver_sql(f"CREATE TEMP TABLE IF NOT EXISTS {stage} (LIKE {table} INCLUDING DEFAULTS)", {})

    # -- restore -------------------------------------------------------------------------------------
    def before_rebuild(self, conn: Connection, table: str, definition: TableDefinition, exists: bool,
                       rebuilt: list[str]) -> dict[str, Any]:
        return pg_restore.before_rebuild(conn, self.ident(table), definition, exists, rebuilt,
                                         self._preparer.quote_identifier, self._preparer)

    def before_create(self, conn: Connection, table: str, definition: TableDefinition,
                      state: dict[str, Any]) -> None:
        state["sequences"] = pg_restore.create_missing_sequences(conn, definition)

    def after_fill(self, conn: Connection, table: str, state: dict[str, Any]) -> None:
        pg_restore.continue_sequences(conn, self.ident(table), state["sequences"], state["handed_out"],
                                      self._preparer.quote_identifier)

    def after_constraints(self, conn: Connection, table: str, definition: TableDefinition) -> None:
        pg_restore.own_sequences(conn, self.ident(table), definition, self._preparer.quote_identifier)

    def diff_keys(self, conn: Connection, table: str, definition: TableDefinition, source: str,
                  index: int) -> str | None:
        return pg_restore.diff_keys(conn, self.ident(table), definition, source, index,
                                    self._preparer.quote_identifier)

    def refuse_cascades(self, conn: Connection, table: str, definition: TableDefinition, source: str,
                        restoring: set[str]) -> None:
        pg_restore.refuse_cascades(conn, table, self.ident(table), definition, source, restoring,
                                   self._preparer.quote_identifier, self._preparer)

    # -- async ---------------------------------------------------------------------------------------
    def async_url(self, host: str | None, port: int | None, login: str | None, password: str | None,
                  schema: str | None) -> Any:
        from sqlalchemy.engine import URL

        return URL.create("postgresql+psycopg_async", username=login, password=password, host=host, port=port,
                          database=schema)
