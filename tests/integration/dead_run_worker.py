"""Runs a plan's steps in a child process the way a run's tasks do (lock, lock keeper, steps in order), so that a
test can SIGKILL it at a chosen point and check what a later run does with what it left.

Usage: ``python dead_run_worker.py '<json config>'`` with the keys ``url``, ``plan`` (YAML text), ``run_id``,
``stall_at`` and ``backup`` (make a snapshot backup first). ``stall_at`` is a point where the worker prints
``stall <point>`` and sleeps, so that the test kills it right there:

- ``before:<step>`` / ``after:<step>``: at a step boundary (the step not begun / applied and committed);
- ``batch:<n>``: inside a backfill, while the n-th batch's transaction is open (n - 1 batches committed);
- ``sql``: (PostgreSQL) while a long statement runs on the server (``pg_sleep``) in a session of this process.

Also: plain helpers (plans, seeding) that test_dead_runs.py shares with the worker; the child imports it by path.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.backfill.state import Checkpoints
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
from airflow_migrate_provider.core.lock_keeper import LockKeeper
from airflow_migrate_provider.core.steps import StepRunner
from airflow_migrate_provider.plan.loader import parse_plan

PLAN_ID = "dead_plan"
SOURCE_ROWS = 1200
BATCH_ROWS = 200
TTL = 600  # long: a takeover in these tests never waits for the expiry


def plan_text(*, failing_last: bool = False, backup: bool = False) -> str:
    """create a table, back-fill it from ``src_items``, then add a column to ``customers`` (whose verify fails
    with ``failing_last``)."""
    verify = "SELECT count(*) = -1 FROM items" if failing_last else "SELECT count(*) = 2 FROM customers"
    backup_block = "backup: {strategy: snapshot, tables: auto}\n" if backup else ""
    return f"""id: {PLAN_ID}
connections: {{target: app_db}}
{backup_block}steps:
  - id: create_items
    up: CREATE TABLE items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, s VARCHAR(40), updated_at TIMESTAMP)
    down: DROP TABLE items
    verify: SELECT count(*) = 0 FROM items
  - kind: backfill
    id: copy_items
    source: {{table: src_items}}
    target: items
    key: id
    watermark: updated_at
    watermark_lag_seconds: 0
    batch: {{rows: {BATCH_ROWS}, seconds: null}}
  - id: flag_customers
    up: ALTER TABLE customers ADD COLUMN flag INTEGER
    down: ALTER TABLE customers DROP COLUMN flag
    verify: "{verify}"
"""


def seed(engine: Engine) -> None:
    """What the application had before any run: customers, and the source of the backfill."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR(40) NOT NULL)")
        conn.exec_driver_sql("INSERT INTO customers (id, name) VALUES (1, 'ada'), (2, 'bob')")
        conn.exec_driver_sql("CREATE TABLE src_items (id INTEGER PRIMARY KEY, n INTEGER NOT NULL, s VARCHAR(40), "
                             "updated_at TIMESTAMP)")
        rows = [{"id": i, "n": i * 7, "s": f"item {i}", "u": f"2024-01-01 00:{i % 60:02d}:00"}
                for i in range(1, SOURCE_ROWS + 1)]
        conn.exec_driver_sql("INSERT INTO src_items (id, n, s, updated_at) VALUES "
                             "(%(id)s, %(n)s, %(s)s, %(u)s)" if dialect_for(engine).pyformat else
                             "INSERT INTO src_items (id, n, s, updated_at) VALUES (:id, :n, :s, :u)", rows)


def identity(run_id: str) -> RunIdentity:
    return RunIdentity("dead_dag", run_id, 1, host=socket.gethostname(), pid=os.getpid())


def apply_steps(runner: StepRunner, plan: Any, stall: Any = lambda point: None) -> None:
    """Every step in plan order, as the run's tasks apply them (``stall`` is told each boundary)."""
    for step in plan.steps:
        stall(f"before:{step.id}")
        runner.apply(step)
        stall(f"after:{step.id}")


def _stall_here(point: str) -> None:
    print(f"stall {point}", flush=True)
    time.sleep(120)
    raise SystemExit(f"not killed at {point}")


def _instrument_batches(stall_at: str) -> None:
    advance = Checkpoints.advance
    seen = {"n": 0}

    def counting(self: Checkpoints, conn: Any, *args: Any, **kwargs: Any) -> None:
        advance(self, conn, *args, **kwargs)
        seen["n"] += 1
        if stall_at == f"batch:{seen['n']}":
            _stall_here(stall_at)

    Checkpoints.advance = counting  # type: ignore[method-assign]


def _long_statement(engine: Engine) -> None:
    """(PostgreSQL) start a two-minute statement in another session of this process; stall once it runs."""
    import threading

    def sleep_on_server() -> None:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_sleep(120)")

    threading.Thread(target=sleep_on_server, daemon=True).start()
    running = ("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep%%' "
               "AND application_name = current_setting('application_name')")
    with engine.connect() as conn:
        while not conn.exec_driver_sql(running).scalar():
            time.sleep(0.05)
    _stall_here("sql")


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[1])
    stall_at = cfg["stall_at"]
    _instrument_batches(stall_at)
    engine = create_engine(cfg["url"])
    dialect = dialect_for(engine)
    plan = parse_plan(cfg["plan"])
    who = identity(cfg["run_id"])
    ledger = Ledger(engine, plan.id)
    ledger.ensure()
    lease = ledger.acquire_lock(who, TTL)
    with LockKeeper(ledger, lease, TTL) as keeper:
        if cfg.get("backup"):
            from airflow_migrate_provider.core.backup.make import make_backup

            make_backup(engine, dialect, plan, who)
        runner = StepRunner(engine, dialect, ledger, who, keeper, plan=plan)
        if stall_at == "sql":
            _long_statement(engine)
        apply_steps(runner, plan, lambda point: _stall_here(point) if point == stall_at else None)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
