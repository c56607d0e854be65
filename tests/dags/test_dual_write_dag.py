"""Dual write and cutover as a real Airflow run (dag.test) while writer threads keep writing to the application's
table the whole time: capture, mapped history chunks, replay, the deferred catch-up on the triggerer, the
verification, the approval (answered from a thread), the switch, smoke checks, the health gate; then the
failure paths: a failure after the switch (reads switched back, the new side's writes back in the old table),
an approval rejected (nothing switched)."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace
from typing import Any

import pytest
from approval_support import Responder, _preload_orm
from e2e_support import query, states
from sqlalchemy import create_engine

from airflow_migrate_provider.core.dialects import dialect_for
from tests.integration.dual_write_support import Writers, assert_holds_every_write, seed_users

pytestmark = [pytest.mark.dag, pytest.mark.timeout(300, method="thread")]

APPROVE = "steps.switch_users.approve"


def dual_write_plan(plan_id: str, *, fault: str | None = None, gate_window: float = 2.0) -> dict[str, Any]:
    plan: dict[str, Any] = {
        "id": plan_id,
        "connections": {"target": "app_db"},
        "retries": 0,
        "approval": {"timeout_hours": 1},
        "steps": [
            {"id": "create_users_v2",
             "up": "CREATE TABLE users_v2 (id INTEGER PRIMARY KEY, email VARCHAR(120) NOT NULL, theme VARCHAR(20), "
                   "notifications BOOLEAN NOT NULL); CREATE INDEX users_v2_theme ON users_v2 (theme)",
             "down": "DROP TABLE users_v2",
             # after the rename switch the new table is called users: the check holds under either name
             "verify": "SELECT to_regclass('users_v2') IS NOT NULL OR to_regclass('users_old') IS NOT NULL"},
            {"id": "sync_users", "kind": "dual_write", "source": {"table": "users"}, "target": "users_v2",
             "key": "id", "chunks": 3, "batch": {"rows": 300, "seconds": None},
             "replay": {"batch_changes": 300},
             "catch_up": {"max_lag_changes": 20, "max_lag_seconds": 30, "poll_seconds": 0.5, "timeout_minutes": 3}},
            {"id": "switch_users", "kind": "cutover", "dual_write": "sync_users",
             "switch_reads": {"rename": {"old_table_becomes": "users_old"}}, "max_lock_seconds": 5,
             "smoke": [{"name": "users readable", "sql": "SELECT count(*) > 0 FROM users"}]},
            {"id": "app_healthy", "kind": "health_gate",
             "metrics": [{"name": "error_rate", "sql": "SELECT 0.0"}],
             "window_seconds": gate_window, "interval_seconds": 0.5, "baseline_samples": 1},
        ],
    }
    if fault:
        plan["fault_injection"] = {"task": fault}
    return plan


@pytest.fixture
def app_db(pg_database):
    engine = create_engine(pg_database.sqlalchemy_url)
    dialect_for(engine)
    seed_users(engine)
    yield pg_database, engine
    engine.dispose()


def run_with_writers(run_plan, plan: dict[str, Any], db: Any, choice: str) -> tuple[Any, Writers, Responder]:
    responder = Responder(plan["id"], APPROVE, choice)
    responder.start()
    try:
        with Writers(db.sqlalchemy_url) as writers:
            writers.wait_for(30)
            dag_run = run_plan(plan, db)
            writers.wait_for(writers.writes + 100)  # the application goes on writing after the run
    finally:
        responder.finish()
    return dag_run, writers, responder


def test_dual_write_dag_cuts_over_with_live_writers_and_loses_nothing(app_db, run_plan):
    db, engine = app_db
    dag_run, writers, responder = run_with_writers(run_plan, dual_write_plan("dw_dag_ok"), db, "Approve")

    assert dag_run.state == "success", states(dag_run)
    assert responder.answered == [(APPROVE, "Approve")]
    got = states(dag_run)
    assert got["steps.sync_users.catch_up"] == "success" and got["steps.switch_users.switch"] == "success"
    assert got["rollback.revert_applied"] == "skipped"
    for task_id in ("steps.sync_users.catch_up", "steps.switch_users.catch_up"):  # resumed from the triggerer
        result = next(ti for ti in dag_run.get_task_instances() if ti.task_id == task_id).xcom_pull(task_ids=task_id)
        assert result["status"] == "caught_up" and "waited_s" in result and result["lag_changes"] <= 20, result
    # users is now the new table; it holds every write the application was told succeeded
    assert_holds_every_write(writers, engine, "users")
    assert query(db.sqlalchemy_url, "SELECT count(*) FROM pg_indexes WHERE indexname = 'users_v2_theme' "
                                    "AND tablename = 'users'") == [(1,)]
    assert writers.ops["key_update"] > 0 and writers.ops["delete"] > 0
    with pytest.raises(Exception, match="read-only"), engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM users_old WHERE id = 2")
    # the approval showed the verification's summary, rendered from its XCom (the plan's own text stays literal)
    from airflow.models.hitl import HITLDetail
    from airflow.utils.session import create_session

    approve = next(ti for ti in dag_run.get_task_instances() if ti.task_id == APPROVE)
    with create_session() as session:
        body = session.get(HITLDetail, approve.id).body
    assert "**Summary**: users → users_v2: " in body and "rows compared in SQL" in body, body
    # the run can no longer roll back: no capture is left on either table
    assert query(db.sqlalchemy_url, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'am_chg_%'") == [(0,)]
    assert query(db.sqlalchemy_url, "SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'am_cap_%'") == [(0,)]
    applied = query(db.sqlalchemy_url, "SELECT step_id, status FROM airflow_migrate_history WHERE action = 'apply' "
                                       "AND status = 'applied' ORDER BY id")
    assert [s for s, _ in applied] == ["create_users_v2", "sync_users", "switch_users", "app_healthy"]


def test_failure_after_the_switch_switches_back_with_every_write_kept(app_db, run_plan):
    db, engine = app_db
    plan = dual_write_plan("dw_dag_gate_trips", fault="steps.app_healthy")
    dag_run, writers, _ = run_with_writers(run_plan, plan, db, "Approve")

    assert dag_run.state == "failed"
    got = states(dag_run)
    assert got["steps.switch_users.disable_old_writes"] == "success"
    assert got["rollback.revert_applied"] == "success" and got["outcome"] == "failed"
    # users is the old table again, with every write — those made on the new table after the switch too
    assert query(db.sqlalchemy_url, "SELECT to_regclass('users_old') IS NULL, to_regclass('users_v2') IS NULL") \
        == [(True, True)]
    assert_holds_every_write(writers, engine, "users")
    assert query(db.sqlalchemy_url, "SELECT count(*) FROM pg_tables WHERE tablename LIKE 'am_chg_%'") == [(0,)]
    reverted = query(db.sqlalchemy_url, "SELECT step_id FROM airflow_migrate_history WHERE action = 'revert' "
                                        "AND status = 'reverted' ORDER BY id")
    assert [r for (r,) in reverted] == ["app_healthy", "switch_users", "sync_users", "create_users_v2"]


def test_rejected_cutover_switches_nothing_and_rolls_back(app_db, run_plan):
    db, engine = app_db
    dag_run, writers, responder = run_with_writers(run_plan, dual_write_plan("dw_dag_rejected"), db, "Reject")

    assert dag_run.state == "failed"
    assert responder.answered == [(APPROVE, "Reject")]
    got = states(dag_run)
    assert got["steps.switch_users.switch"] in ("upstream_failed", "skipped")
    assert got["rollback.revert_applied"] == "success"
    assert query(db.sqlalchemy_url, "SELECT to_regclass('users_v2') IS NULL") == [(True,)]
    assert_holds_every_write(writers, engine, "users")
    with engine.begin() as conn:  # the old table still takes writes: no guard, no capture left
        conn.exec_driver_sql("DELETE FROM users WHERE id = 3")


class TimeoutSweeper(threading.Thread):
    """Applies approval timeouts the way the scheduler does (dag.test() never does: AIRFLOW_NOTES §10)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()

    def run(self) -> None:
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner

        while not self.stop.wait(0.5):
            SchedulerJobRunner.check_awaiting_input_timeouts(SimpleNamespace(log=logging.getLogger("sweeper")))


def test_approval_timeout_fails_safe_with_nothing_switched(app_db, run_plan):
    db, engine = app_db
    plan = dual_write_plan("dw_dag_no_answer")
    plan["approval"] = {"timeout_hours": 0.001}  # 3.6 s, and nobody answers
    _preload_orm()
    sweeper = TimeoutSweeper()
    sweeper.start()
    try:
        with Writers(db.sqlalchemy_url) as writers:
            writers.wait_for(30)
            dag_run = run_plan(plan, db)
    finally:
        sweeper.stop.set()
        sweeper.join(timeout=10)

    assert dag_run.state == "failed"
    got = states(dag_run)
    assert got[APPROVE] == "failed" and got["steps.switch_users.switch"] == "upstream_failed"
    assert got["rollback.revert_applied"] == "success"
    assert query(db.sqlalchemy_url, "SELECT to_regclass('users_v2') IS NULL, to_regclass('users_old') IS NULL") \
        == [(True, True)]
    assert_holds_every_write(writers, engine, "users")


def test_cutover_waits_deferred_for_its_window_then_switches(app_db, run_plan):
    """The window opens at the next minute: wait_window defers (DateTimeTrigger) until then, then the cutover runs."""
    from datetime import datetime, timedelta, timezone

    db, engine = app_db
    now = datetime.now(timezone.utc)
    opens = (now + timedelta(minutes=1)).replace(second=0, microsecond=0)
    plan = dual_write_plan("dw_dag_window")
    plan["steps"][2]["window"] = {"start": opens.strftime("%H:%M"),
                                  "end": (opens + timedelta(minutes=30)).strftime("%H:%M"), "timezone": "UTC"}
    dag_run, writers, _ = run_with_writers(run_plan, plan, db, "Approve")

    assert dag_run.state == "success", states(dag_run)
    wait = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "steps.switch_users.wait_window")
    assert wait.end_date >= opens  # it waited for the window to open
    switch = next(ti for ti in dag_run.get_task_instances() if ti.task_id == "steps.switch_users.switch")
    assert switch.start_date >= opens
    assert_holds_every_write(writers, engine, "users")


MARIADB_TABLES = "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name "


def mariadb_plan(plan_id: str, fault: str | None = None) -> dict[str, Any]:
    """The same plan on MariaDB (its catalog instead of to_regclass)."""
    plan = dual_write_plan(plan_id, fault=fault)
    schema = plan["steps"][0]
    schema["up"] = schema["up"].replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS").replace(
        "CREATE INDEX", "CREATE INDEX IF NOT EXISTS")  # DDL commits statement by statement: resumable
    schema["down"] = "DROP TABLE IF EXISTS users_v2"
    schema["verify"] = f"SELECT count(*) > 0 FROM ({MARIADB_TABLES}IN ('users_v2', 'users_old')) AS t"
    return plan


@pytest.fixture
def mariadb_app_db(mariadb_database):
    engine = create_engine(mariadb_database.sqlalchemy_url)
    dialect_for(engine)
    seed_users(engine)
    yield mariadb_database, engine
    engine.dispose()


@pytest.mark.parametrize("fault", [None, "steps.app_healthy"], ids=["mariadb_cuts_over", "mariadb_switches_back"])
def test_mariadb_dual_write_dag_with_live_writers_loses_nothing(mariadb_app_db, run_plan, fault):
    """MariaDB, one database, a rename switch (RENAME TABLE in one statement): every acknowledged write is in the
    live table after the switch, and after a failure past it switches back."""
    db, engine = mariadb_app_db
    dag_run, writers, _ = run_with_writers(run_plan, mariadb_plan(f"dw_dag_mariadb_{bool(fault)}", fault), db,
                                           "Approve")

    got = states(dag_run)
    assert got["steps.switch_users.disable_old_writes"] == "success", got
    assert_holds_every_write(writers, engine, "users")
    assert writers.ops["key_update"] > 0 and writers.ops["delete"] > 0
    names = sorted(n for (n,) in query(db.sqlalchemy_url, f"{MARIADB_TABLES}LIKE 'users%%'"))
    leftovers = query(db.sqlalchemy_url, f"{MARIADB_TABLES}LIKE 'am\\_%%'")
    if fault is None:
        assert dag_run.state == "success" and names == ["users", "users_old"], (states(dag_run), names)
        with pytest.raises(Exception, match="read-only"), engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM users_old WHERE id = 2")
        assert [n for (n,) in leftovers if not n.startswith("am_ro_")] == [], leftovers  # the old table's guard
    else:
        assert dag_run.state == "failed" and got["rollback.revert_applied"] == "success", got
        assert names == ["users"] and leftovers == [], (names, leftovers)
        with engine.begin() as conn:  # the old table takes writes again
            conn.exec_driver_sql("DELETE FROM users WHERE id = 2")
