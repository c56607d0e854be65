"""Ledger rows written before actions were typed (format 1) stay readable: a run an older version applied is
checked and reverted by this one. ``fixtures/ledger_format1.json`` holds the rows that version wrote for a
schema step, a backfill and a verify step (made by running it; see its ``sql`` column)."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.actions import ActionPlan, Check, DeleteRows, RunSql
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
from airflow_migrate_provider.core.preflight import ledger_consistency
from airflow_migrate_provider.core.rollback import rollback_run
from airflow_migrate_provider.core.steps import StepRunner
from airflow_migrate_provider.plan.loader import parse_plan
from tests.integration.migrate_it_support import table_names

ROWS = json.loads((Path(__file__).parent / "fixtures" / "ledger_format1.json").read_text())
OLD_RUN = RunIdentity("fmt1", "old_run")
PLAN = parse_plan("""
id: fmt1
connections: {target: app_db}
steps:
  - id: add_notes
    up: |
      CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
      INSERT INTO notes VALUES (1, 'x');
    down: DROP TABLE notes;
    verify: SELECT count(*) = 1 FROM notes
    verify_down: SELECT 1
  - id: copy_users
    kind: backfill
    source: {table: users}
    target: users_v2
    key: id
    watermark: updated_at
  - id: users_equal
    kind: verify
    source: {table: users}
    target: {table: users_v2}
    key: [id]
    checks: [row_counts]
""")


def old_version_applied(engine: Engine) -> Ledger:
    """The database and ledger as the older version left them after applying the three steps."""
    with engine.begin() as conn:
        for table in ("users", "users_v2"):
            conn.exec_driver_sql(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, email VARCHAR(80) NOT NULL, "
                                 "updated_at TIMESTAMP NOT NULL)")
            conn.exec_driver_sql(f"INSERT INTO {table} VALUES (1, 'a@x', '2026-01-01 00:00:00'), "
                                 "(2, 'b@x', '2026-01-01 00:00:00')")
        conn.exec_driver_sql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.exec_driver_sql("INSERT INTO notes VALUES (1, 'x')")
    ledger = Ledger(engine, PLAN.id)
    ledger.ensure()
    for row in ROWS:
        row_id, started = ledger.start(row["step_id"], "apply", row["checksum"], row["sql"], OLD_RUN)
        ledger.finish(row_id, row["status"], started_at=started, verified="[]")
    return ledger


def test_format_1_rows_read_as_typed_actions() -> None:
    schema, backfill, verify = (ActionPlan.from_json(r["sql"]) for r in ROWS)
    assert schema.kind == "schema" and schema.format == 1 and schema.transactional
    assert schema.do == (RunSql("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)"),
                         RunSql("INSERT INTO notes VALUES (1, 'x')"), Check("SELECT count(*) = 1 FROM notes"))
    assert schema.undo == (RunSql("DROP TABLE notes"), Check("SELECT 1"))
    assert backfill.kind == "backfill" and not backfill.transactional
    assert backfill.undo == (DeleteRows("users_v2", "the table was empty when the backfill began"),)
    assert verify.kind == "verify" and verify.undo == ()


def test_this_version_computes_the_checksums_the_older_one_recorded(engine: Engine) -> None:
    ledger = old_version_applied(engine)
    assert ledger_consistency(PLAN, ledger) == []  # no step looks edited after an upgrade


def test_a_run_applied_by_the_older_version_is_reverted_from_its_rows(engine: Engine) -> None:
    ledger = old_version_applied(engine)
    runner = StepRunner(engine, dialect_for(engine), ledger, OLD_RUN)  # no plan: reverts use the rows alone

    report = rollback_run(ledger, runner, OLD_RUN)

    assert [r.step_id for r in report.reverted] == ["users_equal", "copy_users", "add_notes"]
    assert "notes" not in table_names(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM users_v2").scalar() == 0
        assert conn.exec_driver_sql("SELECT count(*) FROM users").scalar() == 2
    assert ledger.applied() == {}


def test_a_backfill_records_every_column_it_copies(engine: Engine) -> None:
    from airflow_migrate_provider.core.actions import CopyRange
    from tests.integration.test_lifecycle_kinds import seed_users

    seed_users(engine)
    ledger = Ledger(engine, PLAN.id)
    ledger.ensure()
    runner = StepRunner(engine, dialect_for(engine), ledger, RunIdentity("fmt2", "new_run"), plan=PLAN)
    runner.apply(PLAN.step("copy_users"))

    recorded = ledger.applied()["copy_users"].actions
    assert recorded.format == 2 and recorded.kind == "backfill"
    copies = [a for a in recorded.do if isinstance(a, CopyRange)]
    assert [c.phase for c in copies] == ["history", "recent", "final"]
    assert all(c.resolved and [name for name, _ in c.columns] == ["id", "email", "updated_at"] for c in copies)
    assert "<every other column" not in "\n".join(recorded.render())
