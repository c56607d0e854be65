"""rollback_run against real SQLite and PostgreSQL: recorded down SQL, irreversible steps, run scoping."""

from __future__ import annotations

import pytest
from migrate_it_support import fingerprint, make_plan, runner_for, seed_start, table_names, who
from sqlalchemy import text

from airflow_migrate_provider.core.rollback import rollback_run
from airflow_migrate_provider.core.steps import step_checksum
from airflow_migrate_provider.errors import RevertFailed

ABC = """
  - id: a
    up: CREATE TABLE t_a (id INTEGER PRIMARY KEY);
    down: DROP TABLE t_a;
    verify: SELECT count(*) = 0 FROM t_a
  - id: b
    up: CREATE TABLE t_b (id INTEGER PRIMARY KEY);
    down: DROP TABLE t_b;
    verify: SELECT count(*) = 0 FROM t_b
  - id: c
    up: CREATE TABLE t_c (id INTEGER PRIMARY KEY);
    down: DROP TABLE t_c;
    verify: SELECT count(*) = 0 FROM t_c
"""


def test_revert_uses_down_sql_recorded_at_apply_time(engine):
    seed_start(engine)
    before = fingerprint(engine)
    original = make_plan("""
  - id: add_notes
    up: |
      CREATE TABLE notes (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers (id));
      INSERT INTO notes (id, customer_id) VALUES (1, 1);
    down: DROP TABLE notes;
    verify: SELECT count(*) = 1 FROM notes
""")
    me = who()
    ledger, runner = runner_for(engine, original.id, me)
    runner.apply(original.steps[0])

    # later the plan's down is changed to something that would fail if it were used
    changed = make_plan("""
  - id: add_notes
    up: |
      CREATE TABLE notes (id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers (id));
      INSERT INTO notes (id, customer_id) VALUES (1, 1);
    down: DROP TABLE notes_renamed_meanwhile;
    verify: SELECT count(*) = 1 FROM notes
""")
    assert step_checksum(changed.steps[0]) != step_checksum(original.steps[0])

    report = rollback_run(ledger, runner, me)
    assert [r.step_id for r in report.reverted] == ["add_notes"]
    revert = ledger.rows()[-1]
    assert (revert.action, revert.status) == ("revert", "reverted")
    assert revert.actions.statements("undo") == ["DROP TABLE notes"]
    assert revert.checksum == step_checksum(original.steps[0])
    assert fingerprint(engine) == before


def test_rollback_stops_at_irreversible_step(engine):
    seed_start(engine)
    plan = make_plan("""
  - id: a
    up: CREATE TABLE t_a (id INTEGER PRIMARY KEY);
    down: DROP TABLE t_a;
    verify: SELECT count(*) = 0 FROM t_a
  - id: b
    irreversible: true
    up: UPDATE customers SET name = upper(name);
    verify: SELECT count(*) = 2 FROM customers WHERE name IN ('ADA', 'BOB')
  - id: c
    up: CREATE TABLE t_c (id INTEGER PRIMARY KEY);
    down: DROP TABLE t_c;
    verify: SELECT count(*) = 0 FROM t_c
""")
    me = who()
    ledger, runner = runner_for(engine, plan.id, me)
    for step in plan.steps:
        runner.apply(step)

    report = rollback_run(ledger, runner, me)
    assert [r.step_id for r in report.reverted] == ["c"]
    assert report.stopped_at == "b"
    assert report.left_applied == ["b", "a"]
    assert "point of no return 'b'" in report.summary()
    names = table_names(engine)
    assert "t_c" not in names and "t_a" in names
    assert set(ledger.applied()) == {"a", "b"}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM customers ORDER BY id")).scalars().all() == ["ADA", "BOB"]


def test_rollback_only_reverts_this_runs_steps(engine):
    plan = make_plan(ABC)
    run1, run2 = who("r1"), who("r2")
    ledger, runner1 = runner_for(engine, plan.id, run1)
    _, runner2 = runner_for(engine, plan.id, run2)
    runner1.apply(plan.step("a"))
    runner2.apply(plan.step("b"))

    report = rollback_run(ledger, runner2, run2)
    assert [r.step_id for r in report.reverted] == ["b"]
    names = table_names(engine)
    assert "t_a" in names and "t_b" not in names
    assert set(ledger.applied()) == {"a"}
    revert = ledger.rows()[-1]
    assert (revert.step_id, revert.action, revert.run_id) == ("b", "revert", "r2")

    # a run that applied nothing has nothing to revert
    empty = rollback_run(ledger, runner2, run2)
    assert empty.reverted == [] and "nothing to revert" in empty.summary()
    assert "t_a" in table_names(engine)


def test_rollback_covers_every_try_of_the_run(engine):
    plan = make_plan(ABC)
    try1, try2 = who("r1", 1), who("r1", 2)
    ledger, runner1 = runner_for(engine, plan.id, try1)
    _, runner2 = runner_for(engine, plan.id, try2)
    runner1.apply(plan.step("a"))
    assert runner2.apply(plan.step("a")).outcome == "already_applied"
    runner2.apply(plan.step("b"))
    assert [(r.step_id, r.try_number) for r in ledger.rows()] == [("a", 1), ("b", 2)]

    report = rollback_run(ledger, runner2, try2)
    assert [r.step_id for r in report.reverted] == ["b", "a"]
    assert [(r.step_id, r.action, r.try_number) for r in ledger.rows()[2:]] == [
        ("b", "revert", 2), ("a", "revert", 2)]
    assert not {"t_a", "t_b", "t_c"} & table_names(engine)
    assert ledger.applied() == {}


def test_failed_revert_reports_progress_and_keeps_step_applied(engine):
    plan = make_plan(ABC)
    me = who()
    ledger, runner = runner_for(engine, plan.id, me)
    for step in plan.steps:
        runner.apply(step)
    with engine.begin() as conn:  # someone drops t_b by hand: b's down (DROP TABLE t_b) will fail
        conn.exec_driver_sql("DROP TABLE t_b")

    with pytest.raises(RevertFailed) as caught:
        rollback_run(ledger, runner, me)
    message = str(caught.value)
    assert "reverting step 'b' failed" in message
    assert "reverted so far: ['c']" in message and "['b', 'a']" in message
    assert set(ledger.applied()) == {"a", "b"}
    assert [(r.step_id, r.status) for r in ledger.rows() if r.action == "revert"] == [
        ("c", "reverted"), ("b", "failed")]


NON_TRANSACTIONAL_REVERT = """
  - id: nt_pair
    transactional: false
    up: |
      CREATE TABLE r_first (id INTEGER PRIMARY KEY);
      CREATE TABLE r_second (id INTEGER PRIMARY KEY);
    down: |
      DROP TABLE r_second;
      DROP TABLE r_first;
      INSERT INTO r_audit (note) VALUES ('reverted nt_pair');
    verify: SELECT count(*) = 0 FROM r_second
"""


def test_failed_non_transactional_revert_records_progress(engine):
    plan = make_plan(NON_TRANSACTIONAL_REVERT)
    me = who()
    ledger, runner = runner_for(engine, plan.id, me)
    runner.apply(plan.steps[0])

    with pytest.raises(RevertFailed, match="r_audit"):
        rollback_run(ledger, runner, me)
    assert not {"r_first", "r_second"} & table_names(engine)  # statements 1-2 of down committed
    revert = ledger.rows()[-1]
    assert (revert.action, revert.status, revert.progress) == ("revert", "failed", 2)
    assert set(ledger.applied()) == {"nt_pair"}  # not (fully) reverted


def test_retried_non_transactional_revert_resumes_where_it_stopped(engine):
    plan = make_plan(NON_TRANSACTIONAL_REVERT)
    me = who()
    ledger, runner = runner_for(engine, plan.id, me)
    runner.apply(plan.steps[0])
    with pytest.raises(RevertFailed):
        rollback_run(ledger, runner, me)

    # the operator fixes the cause (the audit table was missing) and clears the rollback task
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE r_audit (note VARCHAR(100))")
    report = rollback_run(ledger, runner, me)  # today: DROP TABLE r_second runs again and fails
    assert [r.step_id for r in report.reverted] == ["nt_pair"]
    assert ledger.applied() == {}
    assert (ledger.rows()[-1].status, ledger.rows()[-1].progress) == ("reverted", 3)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM r_audit")).scalar_one() == 1
