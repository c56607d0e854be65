"""End-to-end: real Airflow runs (dag.test) of the example plans against SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace

import pytest
from e2e_support import FIXED_DATE, USERS, break_verify, example_plan, seed, states
from sqlalchemy import create_engine, text

from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.ledger import Ledger, RunIdentity

pytestmark = [pytest.mark.dag, pytest.mark.timeout(240)]


def ledger_rows(db, plan_id):
    eng = create_engine(db.sqlalchemy_url)
    dialect_for(eng)
    try:
        return Ledger(eng, plan_id).rows()
    finally:
        eng.dispose()


def scalar(db, sql):
    eng = create_engine(db.sqlalchemy_url)
    try:
        with eng.connect() as conn:
            return conn.execute(text(sql)).scalar()
    finally:
        eng.dispose()


def test_success_run_applies_every_step(database, run_plan):
    seed(database)
    plan = example_plan(database.dialect)
    dag_run = run_plan(plan, database)

    assert dag_run.state == "success"
    got = states(dag_run)
    assert got.pop("rollback.revert_applied") == "skipped"
    assert set(got.values()) == {"success"}, got
    assert scalar(database, "SELECT count(*) FROM user_preferences") == USERS
    applied = [(r.step_id, r.action, r.status) for r in ledger_rows(database, plan["id"])]
    assert applied == [(s["id"], "apply", "applied") for s in plan["steps"]]


def test_failure_in_step_2_reverts_step_1_and_fails_the_run(database, run_plan, fingerprint):
    seed(database)
    before = fingerprint(database)
    plan = example_plan(database.dialect, break_verify(1))

    dag_run = run_plan(plan, database)

    got = states(dag_run)
    assert dag_run.state == "failed"
    assert got["steps.create_user_preferences"] == "success"
    assert got["steps.index_updated_at"] == "failed"
    assert got["steps.move_preferences"] == "upstream_failed"
    assert got["rollback.revert_applied"] == "success"
    assert got["outcome"] == "failed"
    assert fingerprint(database) == before
    rows = [(r.step_id, r.action, r.status) for r in ledger_rows(database, plan["id"])]
    # on MariaDB the CREATE INDEX committed before its verification failed: the rollback reverts it too
    half_applied = [("index_updated_at", "revert", "reverted")] if database.dialect == "mariadb" else []
    assert rows == [("create_user_preferences", "apply", "applied"), ("index_updated_at", "apply", "failed"),
                    *half_applied, ("create_user_preferences", "revert", "reverted")]


@pytest.mark.parametrize("failing", [0, 2, "verify"])
def test_any_failing_phase_restores_the_starting_state(database, run_plan, fingerprint, failing):
    seed(database)
    before = fingerprint(database)
    if failing == "verify":  # the steps pass, the final verification does not
        plan = example_plan(database.dialect)
        plan["steps"][0]["verify"].append("SELECT (SELECT count(*) FROM user_preferences) = 0")
        applied_before_failure = [s["id"] for s in plan["steps"]]
    else:
        plan = example_plan(database.dialect, break_verify(failing))
        # on MariaDB the failing step's statements committed before its verification: it is reverted too
        applied_before_failure = [s["id"] for s in plan["steps"][:failing + (database.dialect == "mariadb")]]

    dag_run = run_plan(plan, database)

    assert dag_run.state == "failed"
    assert states(dag_run)["rollback.revert_applied"] == "success"
    assert fingerprint(database) == before
    reverted = [r.step_id for r in ledger_rows(database, plan["id"]) if r.action == "revert"]
    assert reverted == applied_before_failure[::-1]


def test_clear_and_rerun_after_fixing_the_plan_converges(database, run_plan, fingerprint):
    seed(database)
    broken = example_plan(database.dialect, break_verify(2))
    run_after = FIXED_DATE + timedelta(minutes=5)
    first = run_plan(broken, database, logical_date=FIXED_DATE, run_after=run_after)
    assert first.state == "failed"
    assert states(first)["rollback.revert_applied"] == "success"

    fixed = example_plan(database.dialect)
    fixed["id"] = broken["id"]
    second = run_plan(fixed, database, logical_date=FIXED_DATE, run_after=run_after)

    assert second.run_id == first.run_id  # the same run, cleared and re-run
    assert second.state == "success", states(second)
    assert scalar(database, "SELECT count(*) FROM user_preferences") == USERS
    applies = [(r.step_id, r.run_id) for r in ledger_rows(database, fixed["id"])
               if r.action == "apply" and r.status == "applied"]
    assert [s for s, _ in applies] == ["create_user_preferences", "index_updated_at", "create_user_preferences",
                                       "index_updated_at", "move_preferences"]
    assert {run for _, run in applies} == {first.run_id}


def test_second_run_is_a_no_op(sqlite_database, run_plan):
    seed(sqlite_database)
    plan = example_plan("sqlite")
    assert run_plan(plan, sqlite_database).state == "success"
    rows_after_first = len(ledger_rows(sqlite_database, plan["id"]))

    again = run_plan(plan, sqlite_database)

    assert again.state == "success"
    assert len(ledger_rows(sqlite_database, plan["id"])) == rows_after_first


def test_run_blocked_by_another_runs_lock_changes_nothing(database, run_plan, fingerprint):
    seed(database)
    plan = example_plan(database.dialect)
    eng = create_engine(database.sqlalchemy_url)
    dialect_for(eng)
    ledger = Ledger(eng, plan["id"])
    ledger.ensure()
    other = RunIdentity(plan["id"], "scheduled__other", 1, "worker-7", 4242)
    ledger.acquire_lock(other, 3600)
    before = fingerprint(database)

    dag_run = run_plan(plan, database)

    got = states(dag_run)
    assert dag_run.state == "failed"
    assert got["preflight.check"] == "failed"
    # the rollback never runs when preflight failed: the other run's work is not ours to revert
    assert got["rollback.revert_applied"] in ("skipped", "upstream_failed")
    assert not [r for r in ledger.rows() if r.action == "revert"]
    assert fingerprint(database) == before
    assert ledger.lock_holder()["holder_run"] == other.run_key  # not released by our outcome task
    eng.dispose()


def test_edited_applied_step_is_refused_before_any_change(sqlite_database, run_plan, fingerprint):
    seed(sqlite_database)
    plan = example_plan("sqlite")
    assert run_plan(plan, sqlite_database).state == "success"
    before = fingerprint(sqlite_database)
    plan["steps"][0]["up"] = plan["steps"][0]["up"].replace("DEFAULT '{}'", "DEFAULT '[]'")

    dag_run = run_plan(plan, sqlite_database)

    assert dag_run.state == "failed"
    assert states(dag_run)["preflight.check"] == "failed"
    assert fingerprint(sqlite_database) == before


def test_unreachable_target_fails_preflight_without_leaking_the_password(run_plan, capfd):
    plan = example_plan("postgresql")
    plan["retries"] = 0
    unreachable = SimpleNamespace(dialect="postgresql", airflow_uri="postgresql://postgres:s3cret@127.0.0.1:1/none")
    dag_run = run_plan(plan, unreachable)
    assert dag_run.state == "failed"
    assert states(dag_run)["preflight.check"] == "failed"
    logs = "".join(capfd.readouterr())
    assert "(Airflow connection 'app_db') is unreachable" in logs
    assert "s3cret" not in logs


def test_undefined_connection_fails_without_retry(run_plan, monkeypatch, capfd):
    plan = example_plan("sqlite")
    plan["connections"]["target"] = "no_such_conn"
    monkeypatch.delenv("AIRFLOW_CONN_NO_SUCH_CONN", raising=False)
    dag_run = run_plan(plan, SimpleNamespace(dialect="sqlite", airflow_uri="sqlite:////nonexistent/x.db"),
                       conn_override=False)
    assert dag_run.state == "failed"
    assert "Airflow connection 'no_such_conn' is not defined" in "".join(capfd.readouterr())
    assert states(dag_run)["preflight.check"] == "failed"
