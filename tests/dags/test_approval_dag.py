"""The approval hold before an irreversible step, end to end under dag.test() on the SQLite example plan.

The plan is the SQLite example (with its ``sqlite_backup``) plus a final irreversible step, so the DAG has
``steps.before_<id>.verify`` (verification gate) and ``steps.before_<id>.approve`` (Airflow's ApprovalOperator)
right before it. dag.test() blocks forever at an ApprovalOperator (AIRFLOW_NOTES §10), so every run here has a
``Responder`` thread that answers it the way the REST endpoint does. The responder has its own deadline: past it,
it rejects whatever waits (so the run ends instead of hanging) and records the timeout, which the test asserts on.
"""

from __future__ import annotations

import json
import re
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import yaml
from approval_support import Responder
from e2e_support import USERS, example_plan, query, scalar, seed, states
from sqlalchemy import create_engine

from airflow_migrate_provider.core.ledger import Ledger
from airflow_migrate_provider.dag_builder import (
    OUTCOME_TASK,
    ROLLBACK_TASK,
    VERIFY_TASK,
    build_dag,
    gate_task_ids,
    step_task_id,
)
from airflow_migrate_provider.plan.loader import parse_plan

# method="thread": the default signal method is disarmed for the first test of a session that sets up the
# `airflow_db` fixture (Airflow's resetdb runs under `timeout_with_traceback`, which ends with `signal.alarm(0)`),
# so a run hung at the approval sat there past 10 min. The thread method dumps the stacks and ends the session.
pytestmark = [pytest.mark.dag, pytest.mark.timeout(240, method="thread")]

IRREVERSIBLE = "archive_user_ids"
GATE_VERIFY, GATE_APPROVE = gate_task_ids(IRREVERSIBLE)
IRREVERSIBLE_TASK = step_task_id(IRREVERSIBLE)
LAST_REVERSIBLE = "move_preferences"  # the example's last step, right before the gate
EXAMPLE_STEPS = ["create_user_preferences", "index_updated_at", "move_preferences"]


# --- the plan --------------------------------------------------------------------------------------------------------

def approval_plan(fault_task: str | None = None) -> dict:
    """The SQLite example + a final irreversible step (a point of no return), with a backup."""
    def mutate(data: dict) -> None:
        data["backup"] = {"strategy": "sqlite_backup"}
        data["approval"] = {"timeout_hours": 2}
        data["retries"] = 0
        data["steps"].append({
            "id": IRREVERSIBLE,
            "description": "Archive the user ids into a table no rollback removes.",
            "irreversible": True,
            "up": "CREATE TABLE legacy_archive AS SELECT id FROM users",
            "verify": ["SELECT count(*) > 0 FROM legacy_archive",
                       "SELECT (SELECT count(*) FROM legacy_archive) = (SELECT count(*) FROM users)"],
        })
        if fault_task is not None:
            data["fault_injection"] = {"task": fault_task}
    return example_plan("sqlite", mutate)


def dag_of(plan_data: dict) -> Any:
    return build_dag(parse_plan(yaml.safe_dump(plan_data, sort_keys=False), f"{plan_data['id']}.yaml"))


@pytest.fixture
def reports(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AIRFLOW_MIGRATE_BACKUPS", str(tmp_path / "backups"))
    monkeypatch.setenv("AIRFLOW_MIGRATE_REPORTS", str(tmp_path / "reports"))
    return tmp_path / "reports"


@pytest.fixture
def run_with_answer(run_plan):
    """``run_with_answer(plan, db, choice)`` → (DagRun, Responder): runs the plan's DAG while a responder answers
    its approval task with ``choice`` ("Approve"/"Reject"; None: it must never be asked, reject if it is)."""
    def run(plan: dict, db: Any, choice: str | None) -> tuple[Any, Responder]:
        responder = Responder(plan["id"], GATE_APPROVE, choice)
        responder.start()
        try:
            dag_run = run_plan(plan, db)
        finally:
            responder.finish()
        return dag_run, responder
    return run


# --- helpers over the target database ----------------------------------------------------------------------------

def ledger_applied(db: Any, plan_id: str) -> list[str]:
    engine = create_engine(db.sqlalchemy_url)
    try:
        return sorted(Ledger(engine, plan_id).applied())
    finally:
        engine.dispose()


def table_exists(db: Any, table: str) -> bool:
    sql = f"SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = '{table}'"
    return bool(scalar(db.sqlalchemy_url, sql))


def rollback_report(reports: Path) -> dict:
    found = list(reports.rglob("rollback.json"))
    assert len(found) == 1, f"expected one rollback.json under {reports}, found {found}"
    return json.loads(found[0].read_text())


def hitl_answer(dag_run: Any) -> dict:
    from airflow.models import TaskInstance as TI
    from airflow.models.hitl import HITLDetail
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        ti = session.scalar(select(TI).where(TI.dag_id == dag_run.dag_id, TI.run_id == dag_run.run_id,
                                             TI.task_id == GATE_APPROVE))
        detail = session.get(HITLDetail, ti.id)
        return {"chosen": detail.chosen_options, "by": detail.responded_by, "subject": detail.subject,
                "body": detail.body}


# --- tests -------------------------------------------------------------------------------------------------------

def test_the_gate_sits_right_before_the_irreversible_step():
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    plan = approval_plan()
    dag = dag_of(plan)
    verify, approve, step = dag.get_task(GATE_VERIFY), dag.get_task(GATE_APPROVE), dag.get_task(IRREVERSIBLE_TASK)
    assert verify.upstream_task_ids == {step_task_id(LAST_REVERSIBLE)}
    assert verify.downstream_task_ids == {GATE_APPROVE}
    assert approve.upstream_task_ids == {GATE_VERIFY}
    assert approve.downstream_task_ids == {IRREVERSIBLE_TASK}
    assert step.upstream_task_ids == {GATE_APPROVE}
    assert step.downstream_task_ids == {VERIFY_TASK}
    assert isinstance(approve, ApprovalOperator)
    assert approve.fail_on_reject is True
    assert approve.response_timeout.total_seconds() == 2 * 3600
    assert verify.before_step == IRREVERSIBLE
    assert [s.id for s in verify._steps()] == EXAMPLE_STEPS
    # only the irreversible step gets a gate
    assert sorted(t for t in dag.task_ids if ".before_" in t) == sorted([GATE_VERIFY, GATE_APPROVE])


def test_approve_runs_the_irreversible_step_and_the_run_succeeds(sqlite_database, run_with_answer, reports):
    db = sqlite_database
    seed(db)
    plan = approval_plan()

    dag_run, responder = run_with_answer(plan, db, "Approve")

    got = states(dag_run)
    assert responder.answered == [(GATE_APPROVE, "Approve")]
    assert dag_run.state == "success", got
    assert got[GATE_VERIFY] == "success"
    assert got[GATE_APPROVE] == "success"
    assert got[IRREVERSIBLE_TASK] == "success"
    assert got[VERIFY_TASK] == "success"
    assert got[ROLLBACK_TASK] == "skipped"
    assert got[OUTCOME_TASK] == "success"
    assert query(db.sqlalchemy_url, "SELECT count(*) FROM legacy_archive") == [(USERS,)]
    assert ledger_applied(db, plan["id"]) == sorted([*EXAMPLE_STEPS, IRREVERSIBLE])
    answer = hitl_answer(dag_run)
    assert answer["chosen"] == ["Approve"]
    assert answer["by"]["id"] == "pytest"
    assert IRREVERSIBLE in answer["subject"]
    # the templated body names this run's verified backup
    assert "{{" not in answer["body"] and re.search(r"Backup: `[^`]+` \(verified\)", answer["body"]), answer["body"]
    assert not list(reports.rglob("rollback.json"))
    tis = {ti.task_id: ti for ti in dag_run.get_task_instances()}  # and they ran in that order
    order = [step_task_id(LAST_REVERSIBLE), GATE_VERIFY, GATE_APPROVE, IRREVERSIBLE_TASK, VERIFY_TASK]
    for before, after in pairwise(order):
        assert tis[before].end_date <= tis[after].start_date, (before, after)


def test_reject_fails_the_run_and_rolls_back_to_before_the_run(sqlite_database, run_with_answer, reports,
                                                               fingerprint):
    db = sqlite_database
    seed(db)
    plan = approval_plan()
    before = fingerprint(db)

    dag_run, responder = run_with_answer(plan, db, "Reject")

    got = states(dag_run)
    assert responder.answered == [(GATE_APPROVE, "Reject")]
    assert dag_run.state == "failed", got
    assert got[GATE_VERIFY] == "success"
    assert got[GATE_APPROVE] == "failed"
    assert got[IRREVERSIBLE_TASK] == "upstream_failed"
    assert got[ROLLBACK_TASK] == "success"
    assert got[OUTCOME_TASK] == "failed"
    assert not table_exists(db, "legacy_archive"), "the irreversible step ran although it was rejected"
    assert fingerprint(db) == before, "the rollback did not bring the tables back to their state before the run"
    assert ledger_applied(db, plan["id"]) == []
    report = rollback_report(reports)
    assert report["stopped_at"] is None
    assert report["left_applied"] == []
    assert sorted(report["reverted"]) == sorted(EXAMPLE_STEPS)
    assert report["backup"] is not None
    assert report["tables"] and all(t["equal"] for t in report["tables"]), report["tables"]


def test_a_fault_after_the_approved_step_stops_rollback_at_the_point_of_no_return(
        sqlite_database, run_with_answer, reports, fingerprint, caplog, capfd):
    db = sqlite_database
    seed(db)
    plan = approval_plan(fault_task=VERIFY_TASK)
    before = fingerprint(db)

    dag_run, responder = run_with_answer(plan, db, "Approve")

    got = states(dag_run)
    assert responder.answered == [(GATE_APPROVE, "Approve")]
    assert dag_run.state == "failed", got
    assert got[GATE_APPROVE] == "success"
    assert got[IRREVERSIBLE_TASK] == "success"
    assert got[VERIFY_TASK] == "failed"
    assert got[ROLLBACK_TASK] == "success"
    assert got[OUTCOME_TASK] == "failed"
    report = rollback_report(reports)
    assert report["stopped_at"] == IRREVERSIBLE
    assert report["reverted"] == []  # the irreversible step is the newest: nothing before it is reverted either
    assert sorted(report["left_applied"]) == sorted([*EXAMPLE_STEPS, IRREVERSIBLE])
    assert report["left_applied"][0] == IRREVERSIBLE
    assert report["backup"] is not None, "the run made a backup"
    assert report["restored_from"] is None, "a restore would have undone the irreversible step"
    assert IRREVERSIBLE in ledger_applied(db, plan["id"])
    assert ledger_applied(db, plan["id"]) == sorted([*EXAMPLE_STEPS, IRREVERSIBLE])
    assert query(db.sqlalchemy_url, "SELECT count(*) FROM legacy_archive") == [(USERS,)]
    assert fingerprint(db) != before  # past the point of no return the tables are meant to differ
    out = capfd.readouterr()
    logs = out.out + out.err + caplog.text
    assert f"stopped at the point of no return '{IRREVERSIBLE}'" in logs
    assert "automatic rollback stops here" in logs


def test_a_failed_verification_gate_never_asks_for_approval_and_rolls_back(sqlite_database, run_with_answer,
                                                                           reports, fingerprint):
    db = sqlite_database
    seed(db)
    plan = approval_plan(fault_task=GATE_VERIFY)
    before = fingerprint(db)

    dag_run, responder = run_with_answer(plan, db, None)  # None: must never be asked (rejects if it is)

    got = states(dag_run)
    assert responder.answered == [], "approval was asked although the verification gate failed"
    assert dag_run.state == "failed", got
    assert got[GATE_VERIFY] == "failed"
    assert got[GATE_APPROVE] == "upstream_failed"
    assert got[IRREVERSIBLE_TASK] == "upstream_failed"
    assert got[ROLLBACK_TASK] == "success"
    assert got[OUTCOME_TASK] == "failed"
    assert hitl_detail_count(dag_run) == 0
    assert not table_exists(db, "legacy_archive")
    assert fingerprint(db) == before, "the rollback did not bring the tables back to their state before the run"
    assert ledger_applied(db, plan["id"]) == []
    report = rollback_report(reports)
    assert report["stopped_at"] is None
    assert sorted(report["reverted"]) == sorted(EXAMPLE_STEPS)
    assert report["tables"] and all(t["equal"] for t in report["tables"]), report["tables"]


def hitl_detail_count(dag_run: Any) -> int:
    from airflow.models import TaskInstance as TI
    from airflow.models.hitl import HITLDetail
    from airflow.utils.session import create_session
    from sqlalchemy import func, select

    with create_session() as session:
        return session.scalar(select(func.count()).select_from(HITLDetail).join(TI, TI.id == HITLDetail.ti_id)
                              .where(TI.dag_id == dag_run.dag_id))
