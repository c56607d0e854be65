"""Shared helpers for the backfill integration tests (plain functions and one context manager, no fixtures).

A backfill moves rows between two engines: these helpers open them (PostgreSQL and MariaDB databases from the
``pg_urls``/``mariadb_urls`` fixtures, SQLite files under a temporary directory), build a plan, and read back
the ledger and checkpoint tables the way a user inspecting the target would.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
from airflow_migrate_provider.core.steps import StepRunner
from airflow_migrate_provider.plan.model import Plan

PLAN_ID = "bf_plan"
CHECKPOINT_TABLE = "airflow_migrate_backfill"
# source → target pairs: "same" means source and target tables live in one database
PAIRS = ["pg-pg", "pg-same", "pg-sqlite", "sqlite-pg", "sqlite-sqlite", "sqlite-same"]
MARIADB_PAIRS = ["mariadb-mariadb", "mariadb-same", "pg-mariadb", "mariadb-pg", "sqlite-mariadb"]
MYSQL_NAMES = ("mysql", "mariadb")  # SQLAlchemy's dialect names of a MariaDB server


def is_mysql(dialect_name: str) -> bool:
    return dialect_name in MYSQL_NAMES


def server_urls(request: Any, kind: str) -> dict[str, list[str] | None]:
    """The keyword arguments of :func:`open_pair` for ``kind``: the module's databases of each server it needs."""
    return {"pg_urls": request.getfixturevalue("pg_urls") if "pg" in kind else None,
            "mariadb_urls": request.getfixturevalue("mariadb_urls") if "mariadb" in kind else None}


@dataclass
class Pair:
    """A source and a target engine (the same engine object for the "same database" pairs)."""

    kind: str
    source: Engine
    target: Engine

    @property
    def src_dialect(self) -> str:
        return self.source.dialect.name

    @property
    def tgt_dialect(self) -> str:
        return self.target.dialect.name

    @property
    def same_database(self) -> bool:
        return self.source is self.target


@contextmanager
def open_pair(kind: str, pg_urls: list[str] | None, tmp_path: Path,
              mariadb_urls: list[str] | None = None) -> Iterator[Pair]:
    """Empty databases for one pair kind. PostgreSQL and MariaDB ones are taken from ``pg_urls`` and
    ``mariadb_urls`` (databases kept for a whole module, emptied here first); SQLite files are created under
    ``tmp_path``. Engines are disposed afterwards (their pooled sessions may hold the copier's temporary
    staging tables)."""
    engines: list[Engine] = []
    free_pg = list(pg_urls or [])
    free_mariadb = list(mariadb_urls or [])

    def pg() -> Engine:
        engine = sa.create_engine(free_pg.pop(0))
        engines.append(engine)
        run_sql(engine, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
        return engine

    def mariadb() -> Engine:
        engine = sa.create_engine(free_mariadb.pop(0))
        engines.append(engine)
        empty_mariadb(engine)
        return engine

    def lite(name: str) -> Engine:
        engines.append(sa.create_engine(f"sqlite:///{(tmp_path / name).resolve()}"))
        return engines[-1]

    try:
        src_kind, _, tgt_kind = kind.partition("-")
        opener = {"pg": pg, "mariadb": mariadb}
        source = opener[src_kind]() if src_kind in opener else lite("source.sqlite")
        target = source if tgt_kind == "same" else opener[tgt_kind]() if tgt_kind in opener else lite("target.sqlite")
        for engine in engines:
            dialect_for(engine)
        yield Pair(kind, source, target)
    finally:
        for engine in engines:
            engine.dispose()


def empty_mariadb(engine: Engine) -> None:
    """Drop every table of the engine's MariaDB database (the module's databases are reused by its tests)."""
    with engine.begin() as conn:
        tables = conn.exec_driver_sql("SELECT table_name FROM information_schema.tables "
                                      "WHERE table_schema = DATABASE()").scalars().all()
        conn.exec_driver_sql("SET SESSION foreign_key_checks = 0")
        for table in tables:
            conn.exec_driver_sql(f"DROP TABLE `{table}`")
        conn.exec_driver_sql("SET SESSION foreign_key_checks = 1")


def backfill_plan(*steps: dict[str, Any], plan_id: str = PLAN_ID) -> Plan:
    """A plan of backfill steps (``kind: backfill`` added to each)."""
    return Plan.model_validate({"id": plan_id, "connections": {"target": "tgt", "source": "src"},
                                "steps": [{"kind": "backfill", **s} for s in steps]})


def who(run_id: str = "run1", try_number: int = 1) -> RunIdentity:
    return RunIdentity(PLAN_ID, run_id, try_number, host="it-host", pid=4242)


def runner_for(pair: Pair, plan: Plan, run_id: str = "run1") -> tuple[Ledger, RunIdentity, StepRunner]:
    ledger = Ledger(pair.target, plan.id)
    ledger.ensure()
    me = who(run_id)
    return ledger, me, StepRunner(pair.target, dialect_for(pair.target), ledger, me, plan=plan,
                                  source=pair.source)


def run_sql(engine: Engine, *statements: str) -> None:
    """Run DDL/DML text in one transaction (no bound parameters: write ``%`` as is)."""
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement, execution_options={"no_parameters": True})


def insert_rows(engine: Engine, sql: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        with engine.begin() as conn:
            conn.execute(sa.text(sql), rows)


def count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())


def fetch(engine: Engine, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(sa.text(sql), params or {})]


def checkpoint_rows(engine: Engine, step_id: str, plan_id: str = PLAN_ID) -> list[dict[str, Any]]:
    """The step's checkpoint rows (chunk -1 is the step's phase state); [] when the table is missing."""
    if CHECKPOINT_TABLE not in sa.inspect(engine).get_table_names():
        return []
    with engine.connect() as conn:
        rows = conn.execute(sa.text(
            f"SELECT chunk, rows_total, rows_copied, status FROM {CHECKPOINT_TABLE} "
            "WHERE plan_id = :p AND step_id = :s ORDER BY chunk"), {"p": plan_id, "s": step_id})
        return [dict(r._mapping) for r in rows]


def history(ledger: Ledger, step_id: str) -> list[tuple[str, str]]:
    """(action, status) of every ledger row of a step, oldest first."""
    if not ledger.exists():
        return []
    return [(r.action, r.status) for r in ledger.rows(step_id)]

