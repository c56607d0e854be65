"""The airflow-migrate CLI as a user runs it: demo, run, render, status.

The commands run in the test process through the console script's ``main()`` (the ``cli`` fixture, in
tests/conftest.py and tests/dags/conftest.py): a subprocess per command cost a fresh Airflow import and
metadata DB each. One smoke test runs the installed ``airflow-migrate`` script in a subprocess, with a
clean environment, as a user would.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from e2e_support import break_verify, example_plan, seed

pytestmark = [pytest.mark.dag, pytest.mark.timeout(240)]
CLI = str(Path(sys.executable).parent / "airflow-migrate")


def run_installed_script(*args: str) -> subprocess.CompletedProcess:
    """The console script in its own process, without the test session's Airflow settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST_"))}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=200, env=env)


def write_plan(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / f"{data['id']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_installed_script_runs_the_demo_in_its_own_airflow_home(tmp_path):
    """The smoke test of the entry point: the script sets up a fresh Airflow home (metadata DB included)
    before anything imports Airflow, and runs the demo there."""
    result = run_installed_script("demo", "--workdir", str(tmp_path / "demo"))

    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "demo" / "airflow" / "airflow.db").is_file()
    out = result.stdout
    assert "DAG run: success" in out
    for step in ("create_user_preferences", "index_updated_at", "move_preferences"):
        assert f"steps.{step}" in out
    assert "verify.verify_steps                      success" in out
    assert "move_preferences: 3 verify queries passed" in out
    assert "final verification of all steps (verify.verify_steps): success" in out
    assert "user_preferences(user_id, preferences, updated_at)" in out
    assert "users(id, email, name)" in out
    assert "Traceback" not in out


def test_demo_with_an_injected_failure_rolls_back_and_exits_1(tmp_path, cli):
    result = cli("demo", "--workdir", str(tmp_path / "demo"), "--fail-at", "move_preferences")

    assert result.returncode == 1, result.stderr[-3000:]
    out = result.stdout
    assert "steps.move_preferences                   failed" in out
    assert "Rollback (rollback.revert_applied): success" in out
    assert "DAG run: failed" in out
    assert "users(id, email, name, theme, notifications_enabled)" in out
    assert "user_preferences(" not in out


def test_run_exits_1_when_the_migration_fails_and_status_shows_the_ledger(pg_database, tmp_path, cli):
    seed(pg_database)
    plan = write_plan(tmp_path, example_plan("postgresql", break_verify(2)))
    conn = f"app_db={pg_database.airflow_uri}"

    result = cli("run", str(plan), "--conn", conn, "--airflow-home", str(tmp_path / "home"))

    assert result.returncode == 1, result.stderr[-3000:]
    assert "rollback.revert_applied                  success" in result.stdout
    assert "DAG run: failed" in result.stdout

    status = cli("status", str(plan), "--conn", conn)
    assert status.returncode == 0, status.stderr[-3000:]
    assert "create_user_preferences  not applied" in status.stdout
    assert "last: revert reverted" in status.stdout
    assert "lock: free" in status.stdout


def test_run_without_the_plans_connection_is_refused_before_anything_runs(tmp_path, cli):
    plan = write_plan(tmp_path, example_plan("sqlite"))

    result = cli("run", str(plan))

    assert result.returncode == 1
    assert "connection id(s) not defined: 'app_db'. Pass --conn app_db=URI" in result.stderr
    assert "Traceback" not in result.stderr


def test_render_shows_groups_and_sql_and_masks_secrets(tmp_path, cli):
    plan = write_plan(tmp_path, example_plan("postgresql"))

    result = cli("render", str(plan), "--conn", "app_db=postgresql://app:hunter2@db.internal:5432/app")

    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "dialect postgresql" in out  # from the target's --conn URI
    assert "app_db = postgresql://app:***@db.internal:5432/app" in out
    assert "hunter2" not in out
    for group in ("[preflight]", "[steps]", "[verify]", "[rollback]", "[outcome]"):
        assert group in out
    assert "CREATE TABLE user_preferences (" in out
    assert "DROP TABLE user_preferences" in out
    assert "rollback.revert_applied  <RollbackOperator> (teardown)" in out


def test_render_takes_the_dialect_from_the_target_uri(tmp_path, cli):
    plan = write_plan(tmp_path, example_plan("sqlite"))

    result = cli("render", str(plan), "--conn", f"app_db=sqlite:///{tmp_path}/app.db")

    assert result.returncode == 0, result.stderr[-3000:]
    assert "dialect sqlite" in result.stdout
    assert "    ALTER TABLE users DROP COLUMN theme;" in result.stdout  # one statement per line group


def test_render_of_a_broken_plan_prints_the_problem_not_a_traceback(tmp_path, cli):
    plan = tmp_path / "broken.yaml"
    plan.write_text("id: x\nconnections: {target: a}\nsteps: []\n")

    result = cli("render", str(plan))

    assert result.returncode == 1
    assert f"{plan}:3:1: steps:" in result.stderr
    assert "Traceback" not in result.stderr


def test_run_against_an_unreachable_database_is_one_clear_message(tmp_path, cli):
    plan = write_plan(tmp_path, example_plan("postgresql"))

    result = cli("run", str(plan), "--conn", "app_db=postgresql://app:hunter2@127.0.0.1:1/app")

    assert result.returncode == 1
    assert "error: the target database (Airflow connection 'app_db') is unreachable" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "hunter2" not in result.stderr + result.stdout


def test_demo_backfill_example_copies_in_mapped_chunks(tmp_path, cli):
    result = cli("demo", "--workdir", str(tmp_path / "demo"), "--example", "backfill_users", "--users", "3000")

    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "steps.copy_users.copy_chunk              success" in out
    assert "copy_users: 1 verify query passed" in out
    assert "row counts match: source 3,000 = target 3,000 (under lock, after the final sync)" in out
    assert "chunk 4/4 (2250, 3000]  done    750/750" in out  # the status table's chunk progress
    assert "users_v2(id, email, name, preferences)" in out
    assert "backfill step 'copy_users' phase 1 chunk 2/4" in result.stdout + result.stderr  # per-batch progress


def test_demo_backfill_with_a_bad_row_fails_one_chunk_and_rolls_back(tmp_path, cli):
    result = cli("demo", "--workdir", str(tmp_path / "demo"), "--example", "backfill_users",
                 "--fail-at", "copy_users", "--users", "400")

    assert result.returncode == 1, result.stderr[-3000:]
    out = result.stdout
    assert "steps.copy_users.copy_chunk              failed (1 failed, 3 success)" in out
    assert "Rollback (rollback.revert_applied): success" in out
    assert "users_v2(" not in out  # the copied rows were deleted and the new table dropped
    assert "integer overflow" in result.stdout + result.stderr


def test_demo_dual_write_switches_the_live_writer_and_loses_no_write(tmp_path, cli):
    result = cli("demo", "--workdir", str(tmp_path / "demo"), "--example", "dual_write_users", "--users", "500")

    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "steps.switch_users.switch                success" in out
    assert re.search(r"writer: [\d,]+ writes to users, [\d,]+ to users_v2 while the migration ran", out), out
    assert "the application now uses users_v2" in out and "every write is there" in out
    assert "users is read-only (since the switch)" in out


def test_demo_dual_write_failing_after_the_switch_brings_every_write_back(tmp_path, cli):
    result = cli("demo", "--workdir", str(tmp_path / "demo"), "--example", "dual_write_users", "--users", "500",
                 "--fail-at", "switch_users")

    assert result.returncode == 1, result.stderr[-3000:]
    out = result.stdout
    assert "steps.switch_users.smoke                 failed" in out
    assert "Rollback (rollback.revert_applied): success" in out
    assert "the application now uses users:" in out and "every write is there" in out, out[-1500:]
    assert "users_v2(" not in out  # emptied and dropped by the rollback


def test_render_of_a_backfill_lists_its_tasks(tmp_path, cli):
    plan = Path(__file__).resolve().parents[2] / "dags" / "plans" / "backfill_users_pg.yaml"

    result = cli("render", str(plan))

    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "steps.copy_users.copy_chunk  <BackfillOperator, mapped>" in out
    assert "splits phase 1 into 4 chunk(s)" in out
    assert "locks users against writes (max 5 s)" in out
    assert "jsonb_build_object('theme', theme, 'notifications_enabled', notifications_enabled)" in out


def test_mariadb_run_and_status_through_a_mysql_uri(mariadb_database, tmp_path, cli):
    """The whole CLI path on MariaDB: a `mysql://` URI (PyMySQL underneath, never printed), the example plan run
    statement by statement, the ledger shown by status, and render marking the steps as such."""
    seed(mariadb_database)
    plan = write_plan(tmp_path, example_plan("mariadb"))
    conn = f"app_db_mariadb={mariadb_database.airflow_uri}"

    rendered = cli("render", str(plan), "--conn", "app_db_mariadb=mysql://app:hunter2@db.internal:3306/app")
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert "dialect mysql" in rendered.stdout and "statement by statement" in rendered.stdout
    assert "app_db_mariadb = mysql://app:***@db.internal:3306/app" in rendered.stdout
    assert "hunter2" not in rendered.stdout and "NOT RESUMABLE" not in rendered.stdout

    result = cli("run", str(plan), "--conn", conn, "--airflow-home", str(tmp_path / "home"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "DAG run: success" in result.stdout

    status = cli("status", str(plan), "--conn", conn)
    assert status.returncode == 0, status.stderr[-3000:]
    assert "move_preferences" in status.stdout and "applied" in status.stdout
    assert "lock: free" in status.stdout
