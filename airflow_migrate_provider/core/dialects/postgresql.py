"""PostgreSQL: transactional DDL, SQLSTATE-based error classification."""

from __future__ import annotations

import math

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.dialects.base import Dialect

# connection exceptions, serialization failure, deadlock, lock not available, shutdown, too many connections
TRANSIENT_SQLSTATES = ("08", "40001", "40P01", "55P03", "57P01", "57P02", "57P03", "53300")


class PostgresDialect(Dialect):
    name = "postgresql"
    transactional_ddl = True

    def is_transient(self, exc: BaseException) -> bool:
        if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
            return True
        orig = getattr(exc, "orig", exc)
        sqlstate = getattr(orig, "sqlstate", None) or ""
        if sqlstate:
            return sqlstate.startswith(TRANSIENT_SQLSTATES)
        return isinstance(exc, (sa_exc.OperationalError, sa_exc.DisconnectionError))  # no SQLSTATE: connection lost

    def lock_against_writes(self, conn: Connection, quoted_tables: list[str], timeout_s: float) -> None:
        # SHARE conflicts with the ROW EXCLUSIVE lock every INSERT/UPDATE/DELETE takes; readers are not blocked
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{max(1, math.ceil(timeout_s * 1000))}ms'")  # 0 = forever
        conn.exec_driver_sql(f"LOCK TABLE {', '.join(quoted_tables)} IN SHARE MODE")
