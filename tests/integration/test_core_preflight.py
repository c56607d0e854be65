"""run_preflight against real SQLite and PostgreSQL, and against databases that are not there."""

from __future__ import annotations

import traceback

import pytest
from migrate_it_support import (
    make_plan,
    plan_yaml,
    resumable,
    runner_for,
    seed_start,
    table_names,
    three_step_yaml,
    who,
)
from sqlalchemy import create_engine

from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.ledger import HISTORY_TABLE, LOCK_TABLE, Ledger
from airflow_migrate_provider.core.preflight import run_preflight
from airflow_migrate_provider.errors import ConnectionUnavailable, LockHeld, PreflightFailed
from airflow_migrate_provider.plan.loader import parse_plan

UNREACHABLE_PG = "postgresql+psycopg://postgres:s3cret@127.0.0.1:1/nowhere?connect_timeout=2"
ONE_STEP = """
  - id: only
    up: CREATE TABLE only_table (id INTEGER PRIMARY KEY);
    down: DROP TABLE only_table;
    verify: SELECT count(*) = 0 FROM only_table
"""


def _unreachable_engine():
    eng = create_engine(UNREACHABLE_PG)
    dialect_for(eng)
    return eng


def _full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def test_preflight_passes_and_takes_the_lock(engine, database):
    plan = parse_plan(resumable(database.dialect, plan_yaml(ONE_STEP)))
    ledger = Ledger(engine, plan.id)
    report = run_preflight(plan, engine, ledger, who())
    assert report.lease is not None and not report.lease.reentered
    assert "connections reachable" in report.passed
    assert any(p.startswith("run lock acquired until") for p in report.passed)
    assert "ledger consistent with the plan (no applied step was edited)" in report.passed
    assert ledger.exists() and ledger.lock_holder()["holder_run"] == "d/r1"
    assert ledger.rows() == []

    again = run_preflight(plan, engine, ledger, who("r1", 2))
    assert again.lease.reentered
    with pytest.raises(LockHeld) as held:
        run_preflight(plan, engine, ledger, who("r2"))
    assert "run 'r1'" in str(held.value)


def test_preflight_lists_edited_applied_step(engine, database):
    seed_start(engine)
    plan = parse_plan(three_step_yaml(database.dialect))
    ledger, runner = runner_for(engine, plan.id, who("r1"))
    runner.apply(plan.steps[0])
    runner.apply(plan.steps[1])
    rows_before = ledger.rows()

    edited = parse_plan(three_step_yaml(database.dialect).replace("ON orders (", "ON orders (id, "))
    with pytest.raises(PreflightFailed) as caught:
        run_preflight(edited, engine, ledger, who("r2"))
    failures = caught.value.failures
    assert len(failures) == 1
    assert failures[0].startswith("step 'index_orders' was applied by dag 'd' run 'r1' try 1")
    assert "edited" in failures[0]
    assert "index_orders" in str(caught.value)
    assert ledger.rows() == rows_before  # no history written


def test_unreachable_target_names_connection_not_password():
    plan = make_plan(ONE_STEP, connections="{target: warehouse_db}")
    target = _unreachable_engine()
    try:
        with pytest.raises(ConnectionUnavailable) as caught:
            run_preflight(plan, target, Ledger(target, plan.id), who())
    finally:
        target.dispose()
    message = str(caught.value)
    assert "'warehouse_db'" in message and "target" in message
    assert "s3cret" not in message
    assert "s3cret" not in _full_text(caught.value)


def test_unreachable_sqlite_target_names_connection(tmp_path):
    plan = make_plan(ONE_STEP, connections="{target: file_db}")
    target = create_engine(f"sqlite:///{tmp_path / 'missing_dir' / 'db.sqlite'}")
    dialect_for(target)
    try:
        with pytest.raises(ConnectionUnavailable, match="'file_db'"):
            run_preflight(plan, target, Ledger(target, plan.id), who())
    finally:
        target.dispose()


def test_unreachable_source_writes_nothing_to_target(engine):
    plan = make_plan(ONE_STEP, connections="{target: app_db, source: legacy_db}")
    source = _unreachable_engine()
    try:
        with pytest.raises(ConnectionUnavailable) as caught:
            run_preflight(plan, engine, Ledger(engine, plan.id), who(), source=source)
    finally:
        source.dispose()
    message = str(caught.value)
    assert "'legacy_db'" in message and "source" in message
    assert "s3cret" not in message and "s3cret" not in _full_text(caught.value)
    assert not {HISTORY_TABLE, LOCK_TABLE} & table_names(engine)


@pytest.mark.parametrize("database", ["mariadb"], indirect=True)
def test_mariadb_preflight_refuses_ddl_a_resumed_step_could_not_run_again(engine):
    """MariaDB commits each DDL statement on its own: a crash between that commit and the ledger's record would make
    the resumed step run it twice, so an unguarded statement is refused before anything changes."""
    plan = make_plan("""
  - id: add_audit
    up: |
      CREATE TABLE audit (id INTEGER PRIMARY KEY);
      CREATE INDEX IF NOT EXISTS ix_audit ON audit (id);
      INSERT INTO audit (id) VALUES (1);
      ALTER TABLE audit ADD COLUMN note TEXT, MODIFY id BIGINT;
      ALTER TABLE audit ADD COLUMN IF NOT EXISTS seen INTEGER, MODIFY id BIGINT;
    down: DROP TABLE IF EXISTS audit;
    verify: SELECT count(*) = 1 FROM audit
""")
    ledger = Ledger(engine, plan.id)
    with pytest.raises(PreflightFailed) as caught:
        run_preflight(plan, engine, ledger, who())
    failures = caught.value.failures
    assert len(failures) == 2, failures
    assert failures[0].startswith("step 'add_audit' up statement 1 (CREATE TABLE audit")
    assert "write `CREATE TABLE IF NOT EXISTS …`" in failures[0]
    assert failures[1].startswith("step 'add_audit' up statement 4 (ALTER TABLE audit ADD COLUMN note TEXT")
    assert "IF NOT EXISTS" in failures[1]
    assert "audit" not in table_names(engine)  # nothing ran
    assert ledger.lock_holder() is None  # and the lock is not left behind
