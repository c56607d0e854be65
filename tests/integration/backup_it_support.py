"""Shared helpers for the backup / restore integration tests (plain functions, no fixtures).

A ``Target`` is one empty test database (PostgreSQL, MariaDB or SQLite) with one backup strategy and a backup folder
under the test's tmp_path; ``STRATEGY_CASES`` lists every strategy on every dialect it supports.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, inspect
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.backup.catalog import Backup, BackupCatalog
from airflow_migrate_provider.core.backup.make import make_backup
from airflow_migrate_provider.core.backup.strategies import SNAPSHOT_PREFIX
from airflow_migrate_provider.core.dialects import Dialect, dialect_for
from airflow_migrate_provider.core.ledger import RunIdentity
from airflow_migrate_provider.plan.model import Plan

PLAN_ID = "bak_plan"

STRATEGY_CASES = [
    pytest.param(("postgresql", "snapshot"), id="pg-snapshot"),
    pytest.param(("postgresql", "pg_dump"), id="pg-pg_dump"),
    pytest.param(("sqlite", "snapshot"), id="sqlite-snapshot"),
    pytest.param(("sqlite", "sqlite_backup"), id="sqlite-sqlite_backup"),
    pytest.param(("mariadb", "snapshot"), id="mariadb-snapshot"),
    pytest.param(("mariadb", "mariadb_dump"), id="mariadb-mariadb_dump"),
]
DATABASE_FIXTURES = {"postgresql": "pg_database", "sqlite": "sqlite_database", "mariadb": "mariadb_database"}


def database_of(request: Any, dialect: str) -> Any:
    """The empty test database of ``dialect`` (postgresql, sqlite, mariadb) for this test."""
    return request.getfixturevalue(DATABASE_FIXTURES[dialect])


def who(run: str = "run", try_number: int = 1) -> RunIdentity:
    return RunIdentity("dag", run, try_number)


@dataclass
class Target:
    db: Any  # the TestDatabase of tests/conftest.py (compared with the `fingerprint` fixture)
    engine: Engine
    dialect: Dialect
    strategy: str
    location: Path

    @property
    def pg(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @property
    def mariadb(self) -> bool:
        return self.engine.dialect.name in ("mysql", "mariadb")

    def plan(self, *ups: str, strategy: str | None = None, **backup: Any) -> Plan:
        """A plan with one schema step per ``ups`` entry, backed up with this target's strategy."""
        spec = {"strategy": strategy or self.strategy, "location": str(self.location), **backup}
        steps = [{"id": f"s{i}", "up": up, "down": "SELECT 1", "verify": "SELECT 1"} for i, up in enumerate(ups)]
        return Plan.model_validate({"id": PLAN_ID, "connections": {"target": "app_db"}, "backup": spec,
                                    "steps": steps})

    def backup(self, *ups: str, run: str = "run", **backup: Any) -> Backup:
        return make_backup(self.engine, self.dialect, self.plan(*ups, **backup), who(run))

    def sql(self, *statements: str) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)

    def rows(self, query: str) -> list[tuple]:
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql(query)]

    def scalar(self, query: str) -> Any:
        with self.engine.connect() as conn:
            return conn.exec_driver_sql(query).scalar()

    def tables(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())

    def snapshot_tables(self) -> list[str]:
        return [t for t in self.tables() if t.startswith(SNAPSHOT_PREFIX)]

    def files(self) -> list[str]:
        return sorted(p.name for p in self.location.iterdir()) if self.location.exists() else []

    def catalog(self) -> list[Backup]:
        return BackupCatalog(self.engine, PLAN_ID).all()

    def try_write(self, statement: str, wait_s: float = 0.3) -> str:
        """Run ``statement`` from another session, waiting at most ``wait_s`` for locks: "written" or
        "blocked"."""
        if self.pg or self.mariadb:
            other = create_engine(self.db.sqlalchemy_url)
        else:
            other = create_engine(self.db.sqlalchemy_url, connect_args={"timeout": wait_s})
        try:
            with other.begin() as conn:
                if self.pg:
                    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{int(wait_s * 1000)}ms'")
                if self.mariadb:  # whole seconds only
                    conn.exec_driver_sql("SET SESSION innodb_lock_wait_timeout = 1, lock_wait_timeout = 1")
                conn.exec_driver_sql(statement)
            return "written"
        except sa_exc.OperationalError as exc:
            assert "lock" in str(exc).lower(), exc
            return "blocked"
        finally:
            other.dispose()


def open_target(db: Any, strategy: str, location: Path) -> Target:
    engine = create_engine(db.sqlalchemy_url)
    return Target(db, engine, dialect_for(engine), strategy, location)


@contextmanager
def target_of(request: Any, tmp_path: Path) -> Iterator[Target]:
    """For a fixture parametrized with STRATEGY_CASES: an empty database of the case's dialect."""
    dialect, strategy = request.param
    db = database_of(request, dialect)
    t = open_target(db, strategy, tmp_path / "backups")
    try:
        yield t
    finally:
        t.engine.dispose()


def sqlite_file_rows(path: str | Path, query: str) -> list[tuple]:
    conn = sqlite3.connect(str(path))
    try:
        return [tuple(r) for r in conn.execute(query)]
    finally:
        conn.close()


def seed_users(t: Target) -> None:
    """``users`` with a serial key (PostgreSQL, MariaDB), a unique email, an index, and values of many types
    (NULLs, unicode, numeric(10,2), timestamptz, jsonb, bytea / their SQLite and MariaDB counterparts)."""
    if t.mariadb:
        t.sql("CREATE TABLE users (id BIGINT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(100) NOT NULL UNIQUE, "
              "theme TEXT, balance DECIMAL(10,2), seen DATETIME(6), prefs JSON, avatar BLOB)",
              "CREATE INDEX users_seen ON users (seen)",
              "INSERT INTO users (email, theme, balance, seen, prefs, avatar) VALUES "
              "('ann@x', 'dark', 1.50, '2024-03-01 08:00:00', '{\"a\": 1, \"b\": [1, 2]}', x'00ff10'), "
              "('bob@x', NULL, NULL, NULL, NULL, NULL), "
              "('zoë@x', 'ünïcødé ✓ 漢字', 2.00, '2024-12-31 23:59:59.123456', '{\"nested\": {\"k\": null}}', "
              "x'')")
    elif t.pg:
        t.sql("CREATE TABLE users (id bigserial PRIMARY KEY, email text NOT NULL UNIQUE, theme text, "
              "balance numeric(10,2), seen timestamptz, prefs jsonb, avatar bytea)",
              "CREATE INDEX users_seen ON users (seen)",
              "INSERT INTO users (email, theme, balance, seen, prefs, avatar) VALUES "
              "('ann@x', 'dark', 1.50, '2024-03-01 10:00:00+02', '{\"a\": 1, \"b\": [1, 2]}', '\\x00ff10'), "
              "('bob@x', NULL, NULL, NULL, NULL, NULL), "
              "('zoë@x', 'ünïcødé ✓ 漢字', 2.00, '2024-12-31 23:59:59.123456+00', '{\"nested\": {\"k\": null}}', "
              "'\\x')")
    else:
        t.sql("CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT NOT NULL UNIQUE, theme TEXT, "
              "balance NUMERIC(10,2), seen TIMESTAMP, prefs JSON, avatar BLOB)",
              "CREATE INDEX users_seen ON users (seen)",
              "INSERT INTO users (email, theme, balance, seen, prefs, avatar) VALUES "
              "('ann@x', 'dark', 1.50, '2024-03-01 08:00:00', '{\"a\": 1, \"b\": [1, 2]}', x'00ff10'), "
              "('bob@x', NULL, NULL, NULL, NULL, NULL), "
              "('zoë@x', 'ünïcødé ✓ 漢字', 2.00, '2024-12-31 23:59:59.123456', '{\"nested\": {\"k\": null}}', "
              "x'')")


def seed_customers_orders(t: Target, on_delete: str = "CASCADE") -> None:
    """``customers`` (backed up) and ``orders`` (not backed up) whose foreign key points at customers."""
    t.sql("CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR(40) NOT NULL)",
          "INSERT INTO customers VALUES (1, 'ann'), (2, 'bob'), (3, 'cy')",
          "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer_id INTEGER NOT NULL "
          f"REFERENCES customers (id) ON DELETE {on_delete}, amount INTEGER)",
          "INSERT INTO orders VALUES (10, 1, 100), (11, 1, 110), (12, 2, 120), (13, 3, 130)")


def seed_other(t: Target) -> None:
    """A table no step writes: never part of a backup."""
    t.sql("CREATE TABLE untouched (id INTEGER PRIMARY KEY, v VARCHAR(10))",
          "INSERT INTO untouched VALUES (1, 'keep')")
