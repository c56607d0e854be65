"""kill -9 in the middle of a multi-statement DDL step on MariaDB (issue 14), where each DDL statement commits on
its own: the step records its progress statement by statement, a resumed apply (the task's retry) continues
exactly where it stopped — a guarded DDL statement that committed unrecorded runs again as a no-op, a data change
that had not committed runs once — and a revert killed half-way resumes after its last committed statement.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from migrate_it_support import fingerprint, plan_yaml, runner_for, seed_start, who
from sqlalchemy import text

from airflow_migrate_provider.core.rollback import rollback_run
from airflow_migrate_provider.plan.loader import parse_plan

WORKER = Path(__file__).with_name("mariadb_ddl_kill_worker.py")
STEP = plan_yaml("""
  - id: add_audit
    up: |
      CREATE TABLE IF NOT EXISTS audit (id INTEGER PRIMARY KEY, note VARCHAR(20) NOT NULL);
      INSERT INTO audit (id, note) VALUES (1, 'a'), (2, 'b');
      ALTER TABLE audit ADD COLUMN IF NOT EXISTS seen INTEGER NOT NULL DEFAULT 0;
      UPDATE audit SET seen = seen + 1;
      CREATE INDEX IF NOT EXISTS ix_audit_seen ON audit (seen);
    down: |
      DROP INDEX IF EXISTS ix_audit_seen ON audit;
      ALTER TABLE audit DROP COLUMN IF EXISTS seen;
      DROP TABLE IF EXISTS audit;
    verify: SELECT count(*) = 2 AND sum(seen) = 2 FROM audit
    verify_down: >-
      SELECT count(*) = 0 FROM information_schema.tables
      WHERE table_schema = DATABASE() AND table_name = 'audit'
""", plan_id="ddl_kill")


def _run_until_stall(url: str, action: str, try_number: int, stall_after: int) -> list[str]:
    """Start the worker, wait for it to stall after statement ``stall_after``, SIGKILL it; its stdout lines."""
    config = {"url": url, "plan": STEP, "run_id": "r1", "try_number": try_number, "action": action,
              "stall_after": stall_after}
    child = subprocess.Popen([sys.executable, str(WORKER), json.dumps(config)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=WORKER.parent)
    lines = []
    try:
        assert child.stdout is not None
        for line in child.stdout:
            lines.append(line.strip())
            if line.startswith("stall"):
                child.kill()
                break
    finally:
        child.kill()
        _, err = child.communicate(timeout=30)
    assert lines and lines[-1] == f"stall {stall_after}", (lines, err[-2000:])
    return lines


@pytest.mark.parametrize("database", ["mariadb"], indirect=True)
def test_mariadb_kill_mid_ddl_step_resumes_exactly_and_reverts(engine, database):
    seed_start(engine)
    before = fingerprint(engine)
    url = database.sqlalchemy_url
    plan = parse_plan(STEP)
    ledger, _ = runner_for(engine, plan.id, who())

    # try 1 dies right after the CREATE TABLE committed (the ledger still says 0 statements done)
    assert _run_until_stall(url, "apply", 1, stall_after=1) == ["ran 1", "stall 1"]
    (row,) = ledger.rows()
    assert (row.status, row.progress) == ("running", 0)
    # try 2 starts over (nothing recorded): the guarded CREATE runs again as a no-op; it dies after the ADD COLUMN
    assert _run_until_stall(url, "apply", 2, stall_after=3)[-1] == "stall 3"
    assert ledger.rows()[-1].progress == 2  # the INSERT committed with its record; the ALTER committed unrecorded
    # try 3 resumes at statement 3 (again a no-op) and dies inside the UPDATE's transaction, before it commits
    lines = _run_until_stall(url, "apply", 3, stall_after=2)  # 2nd statement it runs = statement 4 (the UPDATE)
    assert lines == ["ran 1", "ran 2", "stall 2"]
    assert ledger.rows()[-1].progress == 3
    with engine.connect() as conn:  # the killed UPDATE did not commit
        assert conn.execute(text("SELECT sum(seen) FROM audit")).scalar() == 0

    # try 4 (the task's last retry) finishes: the UPDATE ran exactly once, the step verified
    _, runner = runner_for(engine, plan.id, who("r1", 4))
    assert runner.apply(plan.steps[0]).outcome == "applied"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id, note, seen FROM audit ORDER BY id")).all() == [(1, "a", 1), (2, "b", 1)]
    assert ledger.rows()[-1].status == "applied" and ledger.rows()[-1].progress == 5

    # the rollback dies after the first down statement committed unrecorded, then resumes and completes
    assert _run_until_stall(url, "revert", 5, stall_after=2)[-1] == "stall 2"
    revert = ledger.rows()[-1]
    assert (revert.action, revert.status, revert.progress) == ("revert", "running", 1)
    _, runner = runner_for(engine, plan.id, who("r1", 6))
    report = rollback_run(ledger, runner, who("r1", 6))
    assert [r.step_id for r in report.reverted] == ["add_audit"]
    assert ledger.applied() == {}
    assert fingerprint(engine) == before
