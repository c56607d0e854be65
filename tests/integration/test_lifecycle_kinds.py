"""The lifecycle harness (pgroll's start → rollback → start → complete): every registered step kind, on every
dialect, goes apply → rollback → apply → complete against a real database, with the database's fingerprint
checked after each stage and every stage re-run to prove it is a no-op the second time.

A new kind is not done until it has a case here: ``test_every_registered_kind_has_a_lifecycle_case`` fails
until it does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.kinds import kind_of, registered_kinds
from airflow_migrate_provider.core.ledger import Ledger
from airflow_migrate_provider.core.preflight import before_run
from airflow_migrate_provider.core.rollback import rollback_run
from airflow_migrate_provider.core.steps import StepRunner
from tests.integration.migrate_it_support import fingerprint, make_plan, who

USERS = 300


def seed_users(engine: Engine) -> None:
    """An application table with rows, and the empty table a backfill fills."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(80) NOT NULL, "
                             "updated_at TIMESTAMP NOT NULL)")
        conn.exec_driver_sql("CREATE TABLE users_v2 (id INTEGER PRIMARY KEY, email VARCHAR(80) NOT NULL, "
                             "updated_at TIMESTAMP NOT NULL)")
        for start in range(1, USERS + 1, 100):
            values = ", ".join(f"({i}, 'u{i}@example.com', '2026-01-01 00:00:00')"
                               for i in range(start, min(start + 100, USERS + 1)))
            conn.exec_driver_sql(f"INSERT INTO users (id, email, updated_at) VALUES {values}")


@dataclass(frozen=True)
class LifecycleCase:
    steps: str  # the plan's `steps:` body
    setup: Callable[[Engine], None] = seed_users
    changes_data: bool = True


CASES: dict[str, LifecycleCase] = {
    "schema": LifecycleCase("""
  - id: add_notes
    up: |
      CREATE TABLE IF NOT EXISTS notes (
          id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users (id), body VARCHAR(80));
      CREATE INDEX IF NOT EXISTS ix_notes_body ON notes (body);
      INSERT INTO notes (id, user_id, body) SELECT id, id, email FROM users WHERE id <= 10;
      UPDATE users SET email = 'changed@example.com' WHERE id = 1;
    down: |
      UPDATE users SET email = 'u1@example.com' WHERE id = 1;
      DROP TABLE IF EXISTS notes;
    verify: SELECT count(*) = 10 FROM notes
    verify_down: SELECT count(*) = 0 FROM users WHERE email = 'changed@example.com'
"""),
    "backfill": LifecycleCase("""
  - id: copy_users
    kind: backfill
    source: {table: users}
    target: users_v2
    key: id
    watermark: updated_at
    chunks: 3
    batch: {rows: 70, seconds: null}
"""),
    "verify": LifecycleCase("""
  - id: users_equal
    kind: verify
    source: {table: users}
    target: {table: users}
    key: [id]
    checks: [row_counts, schemas, data_sample, checksums]
""", changes_data=False),
    "dual_write": LifecycleCase("""
  - id: sync_users
    kind: dual_write
    source: {table: users}
    target: users_v2
    key: id
    chunks: 2
    batch: {rows: 70, seconds: null}
    catch_up: {max_lag_changes: 0, timeout_minutes: 1}
"""),
    "cutover": LifecycleCase("""
  - id: sync_users
    kind: dual_write
    source: {table: users}
    target: users_v2
    key: id
    catch_up: {max_lag_changes: 0, timeout_minutes: 1}
  - id: switch_users
    kind: cutover
    dual_write: sync_users
    switch_reads: {rename: {old_table_becomes: users_old}}
    approval: false
    smoke: [{name: rows, sql: "SELECT count(*) = 300 FROM users"}]
"""),
    "health_gate": LifecycleCase("""
  - id: app_healthy
    kind: health_gate
    metrics: [{name: error_rate, sql: "SELECT 0.0"}]
    thresholds: [{metric: error_rate, max: 0.01}]
    window_seconds: 0.2
    interval_seconds: 0.1
    baseline_samples: 1
""", changes_data=False),
}


def test_every_registered_kind_has_a_lifecycle_case() -> None:
    assert set(registered_kinds()) == set(CASES), "each step kind needs a case in this harness"


@pytest.mark.parametrize("kind", sorted(CASES))
def test_lifecycle_apply_rollback_apply_complete(kind: str, engine: Engine) -> None:
    case = CASES[kind]
    case.setup(engine)
    plan = make_plan(case.steps, plan_id=f"life_{kind}")
    *before_it, step = plan.steps  # the steps a kind builds on (a cutover's dual_write) come first
    assert kind_of(step).name == kind
    dialect = dialect_for(engine)
    assert kind_of(step).dialect_checklist(step, dialect) == ([], [])  # resumable where DDL is not transactional
    ledger = Ledger(engine, plan.id)
    ledger.ensure()

    def runner(run_id: str) -> StepRunner:
        ctx = RunContext(engine, dialect_for(engine), ledger, who(run_id), plan=plan, sleep=lambda s: None)
        before_run(plan, ctx)  # preflight's hook (a health gate's baseline)
        return StepRunner.of(ctx)

    before = fingerprint(engine)

    # apply, then apply again: a no-op
    first = runner("r1")
    for earlier in before_it:
        first.apply(earlier)
    first.apply(step)
    applied = fingerprint(engine)
    assert (applied != before) is case.changes_data
    assert first.apply(step).outcome in ("already_applied", "applied")
    assert fingerprint(engine) == applied
    assert step.id in ledger.applied()

    # rollback: the database is as before; a second rollback finds nothing to revert
    report = rollback_run(ledger, first, first.who)
    assert [r.step_id for r in report.reverted] == [s.id for s in reversed(plan.steps)]
    assert fingerprint(engine) == before
    assert step.id not in ledger.applied()
    assert rollback_run(ledger, first, first.who).reverted == []
    assert fingerprint(engine) == before

    # apply again, in a new run: the same result as the first time
    second = runner("r2")
    for earlier in before_it:
        second.apply(earlier)
    second.apply(step)
    assert fingerprint(engine) == applied
    second.apply(step)
    assert fingerprint(engine) == applied

    # complete: the final verification holds, changes nothing, and can be repeated
    for _ in range(2):
        assert second.verify(step).outcome == "verified"
        assert fingerprint(engine) == applied
    assert ledger.applied()[step.id].run_id == "r2"
