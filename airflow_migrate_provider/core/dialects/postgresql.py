"""PostgreSQL: transactional DDL, SQLSTATE-based error classification."""

from __future__ import annotations

from sqlalchemy import exc as sa_exc

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
        return isinstance(exc, (sa_exc.OperationalError, sa_exc.DisconnectionError))
