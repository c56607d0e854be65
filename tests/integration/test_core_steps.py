"""StepRunner against real SQLite and PostgreSQL: apply, verify, revert, failures, edits, resumes."""

from __future__ import annotations

import json

import pytest
from migrate_it_support import (
    PLAN_ID,
    fingerprint,
    index_names,
    make_plan,
    runner_for,
    seed_start,
    table_names,
    three_step_yaml,
    who,
)
from sqlalchemy import inspect, text

from airflow_migrate_provider.core.rollback import rollback_run
from airflow_migrate_provider.core.steps import step_checksum
from airflow_migrate_provider.errors import ChecksumMismatch, StepFailed, VerificationFailed
from airflow_migrate_provider.plan.loader import parse_plan

STEP_IDS = ["create_orders", "index_orders", "add_status"]


def test_apply_verify_then_rollback_restores_start(engine, database):
    seed_start(engine)
    before = fingerprint(engine)
    plan = parse_plan(three_step_yaml(database.dialect))
    me = who("r1", 3)
    ledger, runner = runner_for(engine, plan.id, me)

    results = [runner.apply(step) for step in plan.steps]
    assert [r.outcome for r in results] == ["applied"] * 3
    assert [r.statements for r in results] == [2, 1, 2]

    insp = inspect(engine)
    assert {"customers", "orders"} <= set(insp.get_table_names())
    columns = {c["name"] for c in insp.get_columns("orders")}
    assert columns == {"id", "customer_id", "amount", "status"}
    assert "ix_orders_customer" in {i["name"] for i in insp.get_indexes("orders")}
    assert [f["referred_table"] for f in insp.get_foreign_keys("orders")] == ["customers"]
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT id, customer_id, amount, status FROM orders ORDER BY id")).all()
    assert [tuple(r) for r in rows] == [(1, 1, 100, "big"), (2, 1, 250, "big"), (3, 2, 40, "small")]

    history = ledger.rows()
    assert [(r.step_id, r.action, r.status) for r in history] == [(s, "apply", "applied") for s in STEP_IDS]
    for row, step in zip(history, plan.steps, strict=True):
        assert row.plan_id == PLAN_ID
        assert row.checksum == step_checksum(step) and len(row.checksum) == 64
        assert (row.dag_id, row.run_id, row.try_number) == ("d", "r1", 3)
        assert row.finished_at is not None and row.finished_at >= row.started_at
        assert row.duration_s is not None and row.duration_s >= 0
        assert json.loads(row.verified) == [v.strip() for v in step.verify]
        assert row.error is None
        assert row.actions.statements("do")
        assert row.actions.transactional is (database.dialect != "mariadb")  # MariaDB: DDL commits on its own
    assert set(ledger.applied()) == set(STEP_IDS)

    # re-applying is a no-op that writes nothing
    again = [runner.apply(step) for step in plan.steps]
    assert [r.outcome for r in again] == ["already_applied"] * 3
    assert len(ledger.rows()) == 3

    report = rollback_run(ledger, runner, me)
    assert [r.step_id for r in report.reverted] == list(reversed(STEP_IDS))
    assert report.stopped_at is None and report.left_applied == []
    reverts = [r for r in ledger.rows() if r.action == "revert"]
    assert [(r.step_id, r.status) for r in reverts] == [(s, "reverted") for s in reversed(STEP_IDS)]
    assert [r.id for r in reverts] == sorted(r.id for r in reverts)
    assert ledger.applied() == {}
    assert fingerprint(engine) == before


def test_failing_verify_rolls_back_the_step_ddl(engine, database):
    seed_start(engine)
    before = fingerprint(engine)
    plan = parse_plan(three_step_yaml(database.dialect, index_verify="SELECT count(*) = 99 FROM orders"))
    me = who()
    ledger, runner = runner_for(engine, plan.id, me)

    runner.apply(plan.steps[0])
    with pytest.raises(VerificationFailed) as caught:
        runner.apply(plan.steps[1])
    assert caught.value.step_id == "index_orders"
    failed = ledger.rows("index_orders")
    assert [(r.action, r.status) for r in failed] == [("apply", "failed")]
    assert "verification of step 'index_orders' failed" in failed[0].error
    assert "count(*) = 99" in failed[0].error
    assert failed[0].finished_at is not None
    if database.dialect == "mariadb":  # the CREATE INDEX committed on its own: the step counts as applied
        assert "ix_orders_customer" in index_names(engine, "orders")
        assert failed[0].progress == 1
        assert set(ledger.applied()) == {"create_orders", "index_orders"}
    else:
        assert "ix_orders_customer" not in index_names(engine, "orders")  # transactional DDL undone
        assert failed[0].progress == 0
        assert set(ledger.applied()) == {"create_orders"}

    report = rollback_run(ledger, runner, me)
    assert [r.step_id for r in report.reverted] == [*(["index_orders"] if database.dialect == "mariadb" else []),
                                                     "create_orders"]
    assert "orders" not in table_names(engine)
    assert fingerprint(engine) == before


def test_sql_error_in_up_is_permanent_and_leaves_nothing(engine, database):
    seed_start(engine)
    before = fingerprint(engine)
    plan = make_plan("""
  - id: broken
    up: |
      CREATE TABLE audit (id INTEGER PRIMARY KEY, note VARCHAR(50));
      INSERT INTO audit (id, note) VALUES (1, 'first');
      INSERT INTO no_such_table (id) SELECT id FROM customers;
    down: DROP TABLE audit;
    verify: SELECT count(*) = 1 FROM audit
""")
    ledger, runner = runner_for(engine, plan.id, who())
    with pytest.raises(StepFailed) as caught:
        runner.apply(plan.steps[0])
    err = caught.value
    assert err.transient is False
    assert err.step_id == "broken" and err.action == "apply"
    assert "no_such_table" in err.statement and "no_such_table" in str(err)
    (row,) = ledger.rows()
    assert "no_such_table" in row.error
    if database.dialect == "mariadb":
        # statements commit one by one there: the first two stay, recorded, and the rollback takes them back
        assert (row.status, row.progress) == ("failed", 2)
        assert "audit" in table_names(engine)
        report = rollback_run(ledger, runner, who())
        assert [r.step_id for r in report.reverted] == ["broken"]
    else:
        assert (row.status, row.progress) == ("failed", 0)
    assert "audit" not in table_names(engine)
    assert fingerprint(engine) == before
    assert ledger.applied() == {}


@pytest.mark.parametrize("database", ["sqlite"], indirect=True)
def test_sqlite_missing_table_named_locked_is_not_transient(engine):
    plan = make_plan("""
  - id: touch_locked_accounts
    up: INSERT INTO locked_accounts (id) VALUES (1);
    down: DELETE FROM locked_accounts WHERE id = 1;
    verify: SELECT 1
""")
    _, runner = runner_for(engine, plan.id, who())
    with pytest.raises(StepFailed) as caught:
        runner.apply(plan.steps[0])
    assert "no such table" in str(caught.value)
    assert caught.value.transient is False


def test_edited_applied_step_is_refused(engine, database):
    seed_start(engine)
    plan = parse_plan(three_step_yaml(database.dialect))
    ledger, runner = runner_for(engine, plan.id, who("r1", 2))
    runner.apply(plan.steps[0])
    assert len(ledger.rows("create_orders")) == 1

    edited = parse_plan(three_step_yaml(database.dialect).replace("(3, 2, 40)", "(3, 2, 41)"))
    assert step_checksum(edited.steps[0]) != step_checksum(plan.steps[0])
    _, other_runner = runner_for(engine, plan.id, who("r2"))
    with pytest.raises(ChecksumMismatch) as caught:
        other_runner.apply(edited.steps[0])
    message = str(caught.value)
    assert "'create_orders'" in message
    assert "dag 'd' run 'r1' try 2" in message
    assert caught.value.applied_checksum == step_checksum(plan.steps[0])
    assert caught.value.current_checksum == step_checksum(edited.steps[0])
    assert len(ledger.rows("create_orders")) == 1  # nothing written
    with engine.connect() as conn:
        assert conn.execute(text("SELECT amount FROM orders WHERE id = 3")).scalar_one() == 40


def test_trailing_whitespace_does_not_count_as_an_edit(engine, database):
    seed_start(engine)
    plan = parse_plan(three_step_yaml(database.dialect))
    ledger, runner = runner_for(engine, plan.id, who())
    runner.apply(plan.steps[0])
    padded_yaml = three_step_yaml(database.dialect).replace("(3, 2, 40);\n", "(3, 2, 40);   \n")
    padded = parse_plan(padded_yaml)
    assert padded.steps[0].up != plan.steps[0].up  # the literal block keeps the trailing blanks
    assert runner.apply(padded.steps[0]).outcome == "already_applied"
    assert len(ledger.rows()) == 1


NON_TRANSACTIONAL = """
  - id: three_statements
    transactional: false
    up: |
      CREATE TABLE nt_first (id INTEGER PRIMARY KEY);
      CREATE TABLE nt_second (id INTEGER PRIMARY KEY);
      INSERT INTO nt_audit (note) VALUES ('created nt_first and nt_second');
    down: |
      DELETE FROM nt_audit;
      DROP TABLE nt_second;
      DROP TABLE nt_first;
    verify: SELECT count(*) = 1 FROM nt_audit
"""


def test_non_transactional_step_commits_per_statement_and_resumes(engine):
    plan = make_plan(NON_TRANSACTIONAL)
    step = plan.steps[0]
    me = who()
    ledger, runner = runner_for(engine, plan.id, me)

    with pytest.raises(StepFailed) as caught:
        runner.apply(step)
    assert caught.value.transient is False and "nt_audit" in caught.value.statement
    assert {"nt_first", "nt_second"} <= table_names(engine)  # statements 1-2 committed
    (row,) = ledger.rows()
    assert (row.status, row.progress) == ("failed", 2)
    assert row.actions.transactional is False
    assert ledger.applied()["three_statements"].id == row.id  # counts as partly applied
    assert [r.step_id for r in ledger.applied_by_run(me)] == ["three_statements"]

    # the missing table appears (outside the plan); the same step resumes at statement 3. Re-running
    # statements 1-2 would fail: CREATE TABLE without IF NOT EXISTS.
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE nt_audit (note VARCHAR(100))")
    result = runner.apply(step)
    assert result.outcome == "applied"
    rows = ledger.rows()
    assert [(r.status, r.progress) for r in rows] == [("failed", 2), ("applied", 3)]
    assert json.loads(rows[1].verified) == ["SELECT count(*) = 1 FROM nt_audit"]
    assert ledger.applied()["three_statements"].status == "applied"
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM nt_audit")).scalar_one() == 1
    assert runner.apply(step).outcome == "already_applied"

    report = rollback_run(ledger, runner, me)
    assert [r.step_id for r in report.reverted] == ["three_statements"]
    assert not {"nt_first", "nt_second"} & table_names(engine)


def test_verify_only_changes_nothing(engine, database):
    seed_start(engine)
    plan = parse_plan(three_step_yaml(database.dialect))
    ledger, runner = runner_for(engine, plan.id, who())
    runner.apply(plan.steps[0])
    snapshot = fingerprint(engine)
    result = runner.verify(plan.steps[0])
    assert result.outcome == "verified" and len(result.verified) == 2
    with pytest.raises(VerificationFailed):
        runner.verify(plan.steps[1])  # index not created yet
    assert fingerprint(engine) == snapshot
    assert len(ledger.rows()) == 1


def test_apply_through_reapplies_predecessors_a_rollback_reverted(engine, database):
    seed_start(engine)
    plan = parse_plan(three_step_yaml(database.dialect))
    me = who("r1")
    ledger, runner = runner_for(engine, plan.id, me)
    runner.apply(plan.steps[0])
    runner.apply(plan.steps[1])
    rollback_run(ledger, runner, me)
    assert ledger.applied() == {}

    results = runner.apply_through(plan, "add_status")  # e.g. only the failed task was cleared

    assert [(r.step_id, r.outcome) for r in results] == [(s, "applied") for s in STEP_IDS]
    assert set(ledger.applied()) == set(STEP_IDS)
    assert runner.apply_through(plan, "index_orders")[-1].outcome == "already_applied"
    assert len(runner.apply_through(plan, "index_orders")) == 1  # applied predecessors are not touched


def test_plan_sql_is_run_verbatim_percent_and_question_marks_included(engine, database):
    json_check = {"postgresql": "'{\"a\": 1}'::jsonb ? 'a'",
                  "mariadb": "json_exists('{\"a\": 1}', '$.a') AND '?' = '?'"}.get(
        database.dialect, "json_type('{\"a\": 1}', '$.a') IS NOT NULL")
    plan = make_plan(f"""
  - id: literal_sql
    up: CREATE TABLE emails (address text); INSERT INTO emails VALUES ('a@example.com'), ('100% real?')
    down: DROP TABLE emails
    verify:
      - SELECT count(*) = 2 FROM emails WHERE address LIKE '%@%' OR address LIKE '%!%%' ESCAPE '!'
      - |
        SELECT {json_check}
""")
    _, runner = runner_for(engine, plan.id, who())

    assert runner.apply(plan.steps[0]).outcome == "applied"


def test_a_step_another_task_of_the_run_applied_meanwhile_is_not_applied_twice(engine):
    seed_start(engine)
    plan = make_plan("""
  - id: create_audit
    up: CREATE TABLE audit (id INTEGER PRIMARY KEY)
    down: DROP TABLE audit
    verify: SELECT count(*) = 0 FROM audit
""")
    ledger, first = runner_for(engine, plan.id, who(try_number=1))
    _, second = runner_for(engine, plan.id, who(try_number=2))
    step = plan.steps[0]
    real_applied = second.ledger.applied
    stale_views = [{}]  # the second task's first look: before the first task committed
    second.ledger.applied = lambda: stale_views.pop() if stale_views else real_applied()

    first.apply(step)
    result = second.apply(step)  # its CREATE TABLE fails: the table exists, applied by the first task

    assert result.outcome == "already_applied"
    assert [(r.action, r.status) for r in ledger.rows()] == [("apply", "applied"), ("apply", "failed")]
    assert set(ledger.applied()) == {"create_audit"}


def test_a_failing_step_still_fails_when_nobody_else_applied_it(engine):
    seed_start(engine)
    plan = make_plan("""
  - id: create_customers_again
    up: CREATE TABLE customers (id INTEGER PRIMARY KEY)
    down: DROP TABLE customers
    verify: SELECT 1
""")
    _, runner = runner_for(engine, plan.id, who())
    with pytest.raises(StepFailed):
        runner.apply(plan.steps[0])
