"""status_table against real SQLite and PostgreSQL ledgers."""

from __future__ import annotations

import pytest
from migrate_it_support import make_plan, runner_for, who

from airflow_migrate_provider.core.ledger import Ledger
from airflow_migrate_provider.core.status import status_table
from airflow_migrate_provider.errors import StepFailed

STEPS = """
  - id: first
    up: CREATE TABLE s_first (id INTEGER PRIMARY KEY);
    down: DROP TABLE s_first;
    verify: SELECT count(*) = 0 FROM s_first
  - id: second
    up: CREATE TABLE s_second (id INTEGER PRIMARY KEY);
    down: DROP TABLE s_second;
    verify: SELECT count(*) = 0 FROM s_second
  - id: third
    up: CREATE TABLE s_third (id INTEGER PRIMARY KEY);
    down: DROP TABLE s_third;
    verify: SELECT count(*) = 0 FROM s_third
  - id: fourth
    transactional: false
    up: |
      CREATE TABLE s_fourth (id INTEGER PRIMARY KEY);
      INSERT INTO s_missing (id) VALUES (1);
    down: DROP TABLE s_fourth;
    verify: SELECT 1
"""


def _line(table: str, step_id: str) -> str:
    (line,) = [ln for ln in table.splitlines() if ln.startswith(f"{step_id} ")]
    return line


def test_status_table_shows_applied_edited_and_lock_holder(engine):
    plan = make_plan(STEPS)
    assert "no ledger in the target yet" in status_table(plan, Ledger(engine, plan.id))

    ledger, runner = runner_for(engine, plan.id, who("r1", 2))
    runner.apply(plan.step("first"))
    runner.apply(plan.step("second"))
    with pytest.raises(StepFailed):
        runner.apply(plan.step("fourth"))
    ledger.acquire_lock(who("r1", 2), 600)

    edited = make_plan(STEPS.replace("CREATE TABLE s_second (id INTEGER PRIMARY KEY)",
                                     "CREATE TABLE s_second (id INTEGER PRIMARY KEY, note TEXT)"))
    table = status_table(edited, ledger)

    first, second, third, fourth = (_line(table, s) for s in ("first", "second", "third", "fourth"))
    assert "applied" in first and "(ok)" in first and "dag 'd' run 'r1' try 2" in first
    assert "EDITED since applied" in second and "dag 'd' run 'r1' try 2" in second
    assert "not applied" in third and "never run" in third
    assert "partly applied" in fourth
    assert f"plan '{plan.id}'" in table
    lock_line = table.splitlines()[-1]
    assert lock_line.startswith("lock: held by dag 'd' run 'r1' try 2 on it-host pid 4242 until ")

    ledger.release_lock(who("r1"))
    assert status_table(edited, ledger).splitlines()[-1] == "lock: free"
