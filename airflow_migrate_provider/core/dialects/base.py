"""The interface every dialect adapter implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager

import sqlparse
from sqlalchemy.engine import Connection, Engine


class Dialect(ABC):
    """What the engine needs to know about one kind of database.

    ``transactional_ddl`` decides whether a step's statements, its verification and its ledger record
    commit together (PostgreSQL, SQLite) or statement by statement with progress recorded (MySQL).
    """

    name: str
    transactional_ddl: bool

    def prepare(self, engine: Engine) -> None:  # noqa: B027 - optional hook
        """Adjust a freshly created engine (connection pragmas, transaction handling)."""

    def quote(self, conn_or_engine: Connection | Engine, identifier: str) -> str:
        """Quote an identifier with the database's own rules; never interpolate plan values unquoted."""
        return conn_or_engine.dialect.identifier_preparer.quote_identifier(identifier)

    def split(self, sql: str) -> list[str]:
        """Split a SQL text into single statements (drivers like sqlite3 run one at a time)."""
        statements = [s.strip() for s in sqlparse.split(sql)]
        return [s.rstrip(";").rstrip() for s in statements if s and s.strip(";").strip()]

    @abstractmethod
    def is_transient(self, exc: BaseException) -> bool:
        """True when retrying the same work later can succeed (connection lost, lock timeout, deadlock)."""

    @contextmanager
    def lock_wait(self, conn: Connection, timeout_s: float) -> Iterator[None]:
        """While the block runs, taking ``conn``'s next transaction or lock waits at most ``timeout_s``
        (for databases where that is a connection setting rather than part of the lock statement)."""
        yield

    def lock_against_writes(self, conn: Connection, quoted_tables: list[str], timeout_s: float) -> None:
        """Inside ``conn``'s open transaction, block other sessions' writes to ``quoted_tables`` (reads go on)
        until the transaction ends. Waits at most ``timeout_s`` for the lock."""
        raise NotImplementedError(f"{self.name}: locking tables for a final sync is not supported")
