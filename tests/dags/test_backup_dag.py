"""The backup in real runs (dag.test): a revert whose verification fails hands over to a restore from the backup,
a lossy down is caught by the table-by-table comparison, a backup that cannot be made stops the run before any
step changes data, and no data-changing task runs without the run's verified backup."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml
from e2e_support import MARIADB_EXAMPLE, REPO, query, seed, states

from airflow_migrate_provider.demo import example_plan_path
from airflow_migrate_provider.errors import BackupFailed

pytestmark = [pytest.mark.dag, pytest.mark.timeout(300)]
PLANS = {"sqlite": example_plan_path("add_user_preferences.yaml"),
         "postgresql": REPO / "dags" / "plans" / "add_user_preferences.yaml",
         "mariadb": MARIADB_EXAMPLE}
DATABASES = {"sqlite": "sqlite_database", "postgresql": "pg_database", "mariadb": "mariadb_database"}
_ids = itertools.count(1)


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AIRFLOW_MIGRATE_BACKUPS", str(tmp_path / "backups"))
    monkeypatch.setenv("AIRFLOW_MIGRATE_REPORTS", str(tmp_path / "reports"))
    return tmp_path


def plan_for(dialect: str, strategy: str, **backup: object) -> dict:
    data = yaml.safe_load(PLANS[dialect].read_text())
    data["id"] = f"bk_{dialect[:2]}_{next(_ids)}"
    data["backup"] = {"strategy": strategy, **backup}
    return data


def rollback_report(workdir: Path) -> dict:
    return json.loads(next((workdir / "reports").rglob("rollback.json")).read_text())


def database(request, dialect: str):
    db = request.getfixturevalue(DATABASES[dialect])
    seed(db)
    return db


STRATEGIES = [("sqlite", "sqlite_backup"), ("sqlite", "snapshot"), ("postgresql", "pg_dump"),
              ("postgresql", "snapshot"), ("mariadb", "mariadb_dump"), ("mariadb", "snapshot")]


@pytest.mark.parametrize(("dialect", "strategy"), STRATEGIES)
def test_failed_revert_verification_restores_from_the_backup(dialect, strategy, request, run_plan, fingerprint,
                                                             workdir):
    db = database(request, dialect)
    plan = plan_for(dialect, strategy)
    plan["steps"][2]["verify_down"] = ["SELECT 1 = 0"]  # the down of move_preferences cannot be proven
    plan["fault_injection"] = {"task": "verify.verify_steps"}
    before = fingerprint(db)

    dag_run = run_plan(plan, db)

    got = states(dag_run)
    assert dag_run.state == "failed"
    assert got["rollback.revert_applied"] == "success", got
    assert fingerprint(db) == before
    report = rollback_report(workdir)
    assert report["revert_failed"].startswith("move_preferences")
    assert report["restored_from"] == report["backup"]
    actions = {t["table"]: t["action"] for t in report["tables"]}
    assert actions["user_preferences"] == "dropped"  # created by the run: absent before it
    assert actions["users"] in ("rebuilt", "synchronised")
    assert all(t["equal"] for t in report["tables"])
    notes = query(db.sqlalchemy_url, "SELECT step_id, verified FROM airflow_migrate_history WHERE action = 'revert' "
                                     "AND status = 'reverted' ORDER BY id")
    assert [n[0] for n in notes] == ["move_preferences", "index_updated_at", "create_user_preferences"]
    assert all("restored the tables from backup" in n[1] for n in notes)


def lossy_down(plan: dict) -> None:
    """A down that brings the columns back but not every value (themes of dark users are lost)."""
    down = plan["steps"][2]["down"]
    assert "DELETE FROM user_preferences;" in down
    plan["steps"][2]["down"] = down.replace("DELETE FROM user_preferences;", "UPDATE users SET theme = NULL WHERE "
                                            "theme = 'dark';\nDELETE FROM user_preferences;")


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql", "mariadb"])
def test_lossy_down_is_caught_and_the_table_restored(dialect, request, run_plan, fingerprint, workdir):
    db = database(request, dialect)
    plan = plan_for(dialect, "snapshot")
    lossy_down(plan)
    plan["fault_injection"] = {"task": "verify.verify_steps"}
    before = fingerprint(db)

    dag_run = run_plan(plan, db)

    assert dag_run.state == "failed"
    assert states(dag_run)["rollback.revert_applied"] == "success"
    assert fingerprint(db) == before
    report = rollback_report(workdir)
    assert report["revert_failed"] is None
    assert report["restored_from"] == report["backup"]
    assert {t["table"]: t["action"] for t in report["tables"]}["users"] == "synchronised"


def test_lossy_down_with_restore_on_difference_off_fails_the_rollback_clearly(sqlite_database, run_plan, workdir):
    seed(sqlite_database)
    plan = plan_for("sqlite", "snapshot", restore_on_difference=False)
    lossy_down(plan)
    plan["fault_injection"] = {"task": "verify.verify_steps"}
    dark_before = query(sqlite_database.sqlalchemy_url, "SELECT count(*) FROM users WHERE theme = 'dark'")

    dag_run = run_plan(plan, sqlite_database)

    got = states(dag_run)
    assert dag_run.state == "failed"
    assert got["rollback.revert_applied"] == "failed"
    assert got["outcome"] == "failed"
    # nothing restored behind the user's back: the lossy down's result stands until they decide
    assert query(sqlite_database.sqlalchemy_url, "SELECT count(*) FROM users WHERE theme = 'dark'") == [(0,)]
    assert dark_before[0][0] > 0


def test_backup_that_cannot_be_made_stops_the_run_before_any_change(sqlite_database, run_plan, fingerprint,
                                                                     workdir):
    seed(sqlite_database)
    blocker = workdir / "not_a_folder"
    blocker.write_text("a file where the backup folder should be")
    plan = plan_for("sqlite", "sqlite_backup", location=str(blocker / "backups"))
    before = fingerprint(sqlite_database)

    dag_run = run_plan(plan, sqlite_database)

    got = states(dag_run)
    assert dag_run.state == "failed"
    assert got["backup.create"] == "failed"
    assert {got[f"steps.{s['id']}"] for s in plan["steps"]} == {"upstream_failed"}
    assert fingerprint(sqlite_database) == before
    history = query(sqlite_database.sqlalchemy_url, "SELECT count(*) FROM airflow_migrate_history")
    assert history == [(0,)]


def test_data_changing_task_refuses_to_run_without_the_runs_verified_backup(sqlite_database):
    from sqlalchemy import create_engine

    from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
    from airflow_migrate_provider.operators import ApplyStepOperator, VerifyStepsOperator

    seed(sqlite_database)
    plan = plan_for("sqlite", "snapshot")
    engine = create_engine(sqlite_database.sqlalchemy_url)
    Ledger(engine, plan["id"]).ensure()
    who = RunIdentity(plan["id"], "manual__1")
    apply = ApplyStepOperator(task_id="steps.create_user_preferences", step_id="create_user_preferences",
                              plan=plan)
    with pytest.raises(BackupFailed, match="requires a verified backup before any step changes data"):
        apply.require_backup(engine, who)
    assert apply.changes_data and not VerifyStepsOperator(task_id="v", plan=plan).changes_data
    optional = {**plan, "backup": {"strategy": "snapshot", "required": False}}
    ApplyStepOperator(task_id="a", step_id="create_user_preferences", plan=optional).require_backup(engine, who)
    engine.dispose()
