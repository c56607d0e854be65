"""Shared helpers for the core integration tests (plain functions, no fixtures).

Kept in its own module (not a conftest) so that ``multiprocessing`` children started with the
'spawn' context can import the worker functions by name.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
from airflow_migrate_provider.core.steps import StepRunner
from airflow_migrate_provider.errors import LockHeld
from airflow_migrate_provider.plan.loader import parse_plan
from airflow_migrate_provider.plan.model import Plan

PLAN_ID = "it_plan"
LEDGER_PREFIX = "airflow_migrate_"


def who(run_id: str = "r1", try_number: int = 1, dag_id: str = "d") -> RunIdentity:
    return RunIdentity(dag_id, run_id, try_number, host="it-host", pid=4242)


def plan_yaml(steps: str, *, plan_id: str = PLAN_ID, connections: str = "{target: app_db}") -> str:
    """A plan document around an already-indented ``steps:`` body (items indented by 2 spaces)."""
    return f"id: {plan_id}\nconnections: {connections}\nsteps:\n{textwrap.dedent(steps).strip(chr(10))}\n"


def make_plan(steps: str, **kwargs: Any) -> Plan:
    return parse_plan(plan_yaml(steps, **kwargs))


def index_exists_sql(dialect: str, name: str) -> str:
    if dialect == "sqlite":
        return f"SELECT count(*) = 1 FROM sqlite_master WHERE type = 'index' AND name = '{name}'"
    if dialect == "mariadb":
        return (f"SELECT count(*) = 1 FROM information_schema.statistics "
                f"WHERE table_schema = DATABASE() AND index_name = '{name}' AND seq_in_index = 1")
    return f"SELECT count(*) = 1 FROM pg_indexes WHERE indexname = '{name}'"


def index_absent_sql(dialect: str, name: str) -> str:
    return index_exists_sql(dialect, name).replace("count(*) = 1", "count(*) = 0")


def three_step_yaml(dialect: str, *, index_verify: str | None = None) -> str:
    """create table + rows; add index; add column + backfill. ``index_verify`` overrides step 2's verify.
    (On MariaDB the index does not start with customer_id: the foreign key would adopt it, and then it could not
    be dropped.)"""
    index_verify = index_verify or index_exists_sql(dialect, "ix_orders_customer")
    return resumable(dialect, plan_yaml(f"""
  - id: create_orders
    up: |
      CREATE TABLE orders (
          id          INTEGER PRIMARY KEY,
          customer_id INTEGER NOT NULL REFERENCES customers (id),
          amount      INTEGER NOT NULL
      );
      INSERT INTO orders (id, customer_id, amount) VALUES (1, 1, 100), (2, 1, 250), (3, 2, 40);
    down: DROP TABLE orders;
    verify:
      - SELECT count(*) = 3 FROM orders
      - SELECT sum(amount) = 390 FROM orders
  - id: index_orders
    up: CREATE INDEX ix_orders_customer ON orders ({"amount, customer_id" if dialect == "mariadb" else "customer_id"});
    down: DROP INDEX ix_orders_customer{" ON orders" if dialect == "mariadb" else ""};
    verify: "{index_verify}"
    verify_down: "{index_absent_sql(dialect, 'ix_orders_customer')}"
  - id: add_status
    up: |
      ALTER TABLE orders ADD COLUMN status VARCHAR(20);
      UPDATE orders SET status = CASE WHEN amount >= 100 THEN 'big' ELSE 'small' END;
    down: ALTER TABLE orders DROP COLUMN status;
    verify:
      - SELECT count(*) = 0 FROM orders WHERE status IS NULL
      - SELECT count(*) = 2 FROM orders WHERE status = 'big'
"""))


def resumable(dialect: str, plan_text: str) -> str:
    """On MariaDB (DDL commits statement by statement) the guarded forms a resumed step can run twice."""
    if dialect != "mariadb":
        return plan_text
    for plain, guarded in (("CREATE TABLE ", "CREATE TABLE IF NOT EXISTS "),
                           ("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS "),
                           ("DROP TABLE ", "DROP TABLE IF EXISTS "), ("DROP INDEX ", "DROP INDEX IF EXISTS "),
                           ("ADD COLUMN ", "ADD COLUMN IF NOT EXISTS "), ("DROP COLUMN ", "DROP COLUMN IF EXISTS ")):
        plan_text = plan_text.replace(plain, guarded)
    return plan_text


def seed_start(engine: Engine) -> None:
    """The pre-existing application schema every scenario starts from."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE customers (id INTEGER PRIMARY KEY, name VARCHAR(40) NOT NULL)")
        conn.exec_driver_sql("CREATE UNIQUE INDEX ux_customers_name ON customers (name)")
        conn.exec_driver_sql("INSERT INTO customers (id, name) VALUES (1, 'ada'), (2, 'bob')")


def _norm_type(value: Any) -> str:
    return re.sub(r"\s+", "", str(value)).upper()


def fingerprint(engine: Engine) -> dict[str, Any]:
    """Schema and data of every application table (the ledger tables excluded), comparable by ==."""
    insp = inspect(engine)
    out: dict[str, Any] = {}
    for table in sorted(insp.get_table_names()):
        if table.startswith(LEDGER_PREFIX):
            continue
        columns = [(c["name"], _norm_type(c["type"]), bool(c["nullable"])) for c in insp.get_columns(table)]
        indexes = sorted(
            (i["name"], tuple(i.get("column_names") or ()), bool(i["unique"]))
            for i in insp.get_indexes(table)
        )
        fks = sorted(
            (tuple(f["constrained_columns"]), f["referred_table"], tuple(f["referred_columns"]))
            for f in insp.get_foreign_keys(table)
        )
        pk = tuple(insp.get_pk_constraint(table).get("constrained_columns") or ())
        quoted = engine.dialect.identifier_preparer.quote(table)
        with engine.connect() as conn:
            rows = sorted((tuple(r) for r in conn.execute(text(f"SELECT * FROM {quoted}"))), key=repr)
        out[table] = {"columns": columns, "pk": pk, "indexes": indexes, "fks": fks, "rows": rows}
    return out


def table_names(engine: Engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def index_names(engine: Engine, table: str) -> set[str]:
    insp = inspect(engine)
    if table not in insp.get_table_names():
        return set()
    return {i["name"] for i in insp.get_indexes(table)}


def runner_for(engine: Engine, plan_id: str, identity: RunIdentity) -> tuple[Ledger, StepRunner]:
    dialect = dialect_for(engine)
    ledger = Ledger(engine, plan_id)
    ledger.ensure()
    return ledger, StepRunner(engine, dialect, ledger, identity)


# -- multiprocessing workers (spawn context: must be importable top-level functions) ---------------

def race_worker(url: str, run_id: str, rounds: int, barrier: Any, results: Any) -> None:
    """Race another process: first Ledger.ensure() on a fresh database, then ``rounds`` lock grabs."""
    engine = create_engine(url)
    try:
        dialect_for(engine)
        try:
            barrier.wait(timeout=60)
            Ledger(engine, "race_0").ensure()
            results.put(("ensure", run_id, 0, "ok"))
        except Exception as exc:  # report, don't hang the other side
            results.put(("ensure", run_id, 0, f"error: {type(exc).__name__}: {exc}"))
        for n in range(rounds):
            ledger = Ledger(engine, f"race_{n}")
            barrier.wait(timeout=60)
            try:
                ledger.acquire_lock(who(run_id), 60)
                results.put(("lock", run_id, n, "won"))
            except LockHeld as exc:
                results.put(("lock", run_id, n, f"held: {exc}"))
            except Exception as exc:
                results.put(("lock", run_id, n, f"error: {type(exc).__name__}: {exc}"))
    finally:
        engine.dispose()
