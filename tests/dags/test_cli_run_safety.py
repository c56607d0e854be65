"""`airflow-migrate run` when it must not migrate: a plan locked by another run (refused, exit 3), an Airflow home it
did not create (refused, exit 2), an approval nobody answers (times out, rolls back, exit 1) and a stop by SIGTERM
(rolls back, releases the lock, exit 143), and what it leaves of its temporary Airflow home.

Most commands run in this process (the ``cli`` fixture); the SIGTERM test runs the installed script in its own
process, as a user or a supervisor would stop it.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from e2e_support import USERS, example_plan, seed
from sqlalchemy import create_engine, text

from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
from airflow_migrate_provider.local_home import MARKER

# method="thread": a run that hangs at the approval must end the test, even with pytest-timeout's alarm disarmed
# by Airflow's resetdb (see test_approval_dag.py).
pytestmark = [pytest.mark.dag, pytest.mark.timeout(240, method="thread")]
CLI = str(Path(sys.executable).parent / "airflow-migrate")
IRREVERSIBLE = "archive_user_ids"
APPROVAL_TASK = f"steps.before_{IRREVERSIBLE}.approve"


def write_plan(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / f"{data['id']}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def approval_plan(timeout_hours: float) -> dict:
    """The SQLite example (with its backup) plus a final irreversible step, so the run waits for an approval."""
    def mutate(data: dict) -> None:
        data["approval"] = {"timeout_hours": timeout_hours}
        data["retries"] = 0
        data["steps"].append({
            "id": IRREVERSIBLE, "description": "Archive the user ids.", "irreversible": True,
            "up": "CREATE TABLE legacy_archive AS SELECT id FROM users",
            "verify": ["SELECT count(*) > 0 FROM legacy_archive"],
        })
    return example_plan("sqlite", mutate)


def tables(db) -> set[str]:
    with sqlite3.connect(db.sqlalchemy_url.removeprefix("sqlite:///")) as conn:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def users_columns(db) -> list[str]:
    with sqlite3.connect(db.sqlalchemy_url.removeprefix("sqlite:///")) as conn:
        return [r[1] for r in conn.execute("PRAGMA table_info(users)")]


def ledger_state(db, plan_id: str) -> tuple[dict | None, list[str]]:
    """(the lock row or None, the steps applied)."""
    engine = create_engine(db.sqlalchemy_url)
    try:
        ledger = Ledger(engine, plan_id)
        return ledger.lock_holder(), sorted(ledger.applied())
    finally:
        engine.dispose()


def assert_as_before_the_run(db) -> None:
    assert users_columns(db) == ["id", "email", "name", "theme", "notifications_enabled"]
    assert not {"user_preferences", "legacy_archive"} & tables(db)


# --- refused: the plan is locked by another run ------------------------------------------------------------------

def test_a_run_refused_by_the_lock_exits_3_with_one_line_naming_the_holder(sqlite_database, tmp_path, cli):
    seed(sqlite_database)
    data = example_plan("sqlite")
    plan = write_plan(tmp_path, data)
    other = RunIdentity("other_dag", "manual__other", 1, socket.gethostname(), os.getpid())  # alive: this process
    engine = create_engine(sqlite_database.sqlalchemy_url)
    ledger = Ledger(engine, data["id"])
    ledger.ensure()
    lease = ledger.acquire_lock(other, 600)
    engine.dispose()

    result = cli("run", str(plan), "--conn", f"app_db={sqlite_database.airflow_uri}")

    assert result.returncode == 3, result.stdout[-2000:] + result.stderr[-3000:]
    refusal = [line for line in result.stderr.splitlines() if line.startswith("refused:")]
    assert len(refusal) == 1, result.stderr[-3000:]
    line = refusal[0]
    assert other.describe() in line
    assert lease.expires_at.isoformat()[:19] in line
    assert f"airflow-migrate unlock {plan}" in line and "Wait for that run to finish" in line
    report = [line for line in result.stdout.splitlines() if line.startswith(("DAG run: ", "Task states by phase"))]
    assert report == []  # no report of a "failed" run, no list of tasks that never ran shown as failed
    holder, applied = ledger_state(sqlite_database, data["id"])
    assert holder is not None and holder["holder_run"] == other.run_key  # the other run's lock is untouched
    assert applied == []
    assert_as_before_the_run(sqlite_database)


# --- the Airflow home ------------------------------------------------------------------------------------------

def test_a_non_empty_airflow_home_it_did_not_create_is_refused_before_anything_runs(sqlite_database, tmp_path, cli):
    seed(sqlite_database)
    plan = write_plan(tmp_path, example_plan("sqlite"))
    deployment = tmp_path / "airflow"
    deployment.mkdir()
    (deployment / "airflow.db").write_bytes(b"a real deployment's metadata")

    result = cli("run", str(plan), "--conn", f"app_db={sqlite_database.airflow_uri}", "--airflow-home", str(deployment))

    assert result.returncode == 2, result.stderr[-3000:]
    assert f"--airflow-home {deployment} is not empty and was not created by airflow-migrate" in result.stderr
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in deployment.iterdir()) == ["airflow.db"]
    assert (deployment / "airflow.db").read_bytes() == b"a real deployment's metadata"
    assert "airflow_migrate_lock" not in tables(sqlite_database)  # nothing touched the target either


def test_a_relative_airflow_home_is_created_marked_and_reused_by_the_next_run(sqlite_database, tmp_path, cli,
                                                                               monkeypatch):
    seed(sqlite_database)
    plan = write_plan(tmp_path, example_plan("sqlite"))
    monkeypatch.chdir(tmp_path)
    conn = f"app_db={sqlite_database.airflow_uri}"

    first = cli("run", str(plan), "--conn", conn, "--airflow-home", "homes/run")

    assert first.returncode == 0, first.stderr[-3000:]
    assert "DAG run: success" in first.stdout
    home = tmp_path / "homes" / "run"
    assert (home / MARKER).is_file()
    assert any((home / "migration_backups").iterdir())  # a given home is kept whole

    again = cli("run", str(plan), "--conn", conn, "--airflow-home", "homes/run")
    assert again.returncode == 0, again.stderr[-3000:]  # every step applied already: a no-op run, same home
    assert "DAG run: success" in again.stdout


def test_the_temporary_airflow_home_is_removed_after_the_run_unless_kept(sqlite_database, tmp_path, cli,
                                                                          monkeypatch):
    seed(sqlite_database)
    data = example_plan("sqlite")
    del data["backup"]  # no backup file, so nothing of the home needs keeping
    plan = write_plan(tmp_path, data)
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(temp))
    conn = f"app_db={sqlite_database.airflow_uri}"

    removed = cli("run", str(plan), "--conn", conn)

    assert removed.returncode == 0, removed.stderr[-3000:]
    assert list(temp.iterdir()) == []

    kept = cli("run", str(plan), "--conn", conn, "--keep-home")

    assert kept.returncode == 0, kept.stderr[-3000:]
    homes = list(temp.iterdir())
    assert len(homes) == 1 and (homes[0] / MARKER).is_file()
    assert f"Airflow home of this run (kept): {homes[0]}" in kept.stdout


# --- the approval: a timeout, and a stop by SIGTERM ------------------------------------------------------------

def script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of the installed script: none of the test session's Airflow settings, its own TMPDIR."""
    temp = tmp_path / "tmp"
    temp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST_"))}
    env.update(TMPDIR=str(temp), **extra)
    return env


@pytest.mark.timeout(330, method="thread")  # a new interpreter imports Airflow and creates its metadata DB
def test_an_approval_nobody_answers_times_out_rolls_back_and_exits_1(sqlite_database, tmp_path):
    """The installed script, as a user runs it: with no scheduler, the command applies the plan's timeout itself."""
    seed(sqlite_database)
    data = approval_plan(timeout_hours=0.0005)  # 1.8 s
    plan = write_plan(tmp_path, data)

    result = subprocess.run([CLI, "run", str(plan), "--conn", f"app_db={sqlite_database.airflow_uri}"],
                            capture_output=True, text=True, timeout=300, env=script_env(tmp_path))

    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]
    assert (f"approval {APPROVAL_TASK}: no answer within 0.0005 h, the approval timed out; the run failed and rolled "
            f"back what it applied") in result.stdout
    assert f"waiting for approval of {APPROVAL_TASK}" in result.stderr
    assert f"steps.{IRREVERSIBLE:<34} upstream_failed" in result.stdout  # nothing past the approval ran
    assert "Rollback (rollback.revert_applied): success" in result.stdout
    assert "DAG run: failed" in result.stdout
    holder, applied = ledger_state(sqlite_database, data["id"])
    assert holder is None and applied == []
    assert_as_before_the_run(sqlite_database)


def _wait_for(path: Path, text: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in path.read_text(errors="replace"):
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended (rc {process.returncode}) before '{text}':\n"
                                 f"{path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)
    raise AssertionError(f"no '{text}' within {timeout:g} s:\n{path.read_text(errors='replace')[-3000:]}")


@pytest.mark.timeout(330, method="thread")
def test_sigterm_while_waiting_for_approval_rolls_back_frees_the_lock_and_exits_143(sqlite_database, tmp_path):
    """The installed script in its own process, with no Airflow settings but a metadata DB URL inherited from the
    environment (a real deployment's, say): the run must use its own home's DB and never touch that one."""
    seed(sqlite_database)
    data = approval_plan(timeout_hours=1)
    plan = write_plan(tmp_path, data)
    inherited_db = tmp_path / "deployment.db"
    with sqlite3.connect(inherited_db) as conn:
        conn.execute("CREATE TABLE dag (dag_id TEXT)")
        conn.execute("INSERT INTO dag VALUES ('production_dag')")
    env = script_env(tmp_path, AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{inherited_db}")
    temp = Path(env["TMPDIR"])
    err, out = tmp_path / "stderr.txt", tmp_path / "stdout.txt"
    with err.open("w") as stderr, out.open("w") as stdout:
        process = subprocess.Popen([CLI, "run", str(plan), "--conn", f"app_db={sqlite_database.airflow_uri}"],
                                   stdout=stdout, stderr=stderr, env=env)
        try:
            _wait_for(err, f"waiting for approval of {APPROVAL_TASK}", process, timeout=270)
            assert ledger_state(sqlite_database, data["id"])[0] is not None  # the run holds the lock
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            returncode = process.wait(timeout=30)
            took = time.monotonic() - signalled
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    output, errors = out.read_text(), err.read_text()
    assert returncode == 143, output[-3000:] + errors[-3000:]
    assert took < 20, f"took {took:.1f} s to stop"
    assert "SIGTERM received: stopping the run" in errors
    assert ("interrupted by SIGTERM: the run was stopped and rolled back what it applied (see the rollback above); "
            "the plan's run lock is released") in output
    assert "Rollback (rollback.revert_applied): success" in output
    assert "Traceback" not in errors
    holder, applied = ledger_state(sqlite_database, data["id"])
    assert holder is None, holder
    assert applied == []
    assert_as_before_the_run(sqlite_database)
    with sqlite3.connect(inherited_db) as conn:
        assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["dag"]
        assert conn.execute("SELECT dag_id FROM dag").fetchall() == [("production_dag",)]
    homes = list(temp.glob("airflow-migrate-home-*"))
    assert len(homes) == 1 and os.listdir(homes[0]) == ["migration_backups"]  # only the backup the ledger names
    assert f"kept this run's backup files in {homes[0] / 'migration_backups'}" in output
    assert len(users_of(sqlite_database)) == USERS


def users_of(db) -> list[tuple]:
    with sqlite3.connect(db.sqlalchemy_url.removeprefix("sqlite:///")) as conn:
        return conn.execute("SELECT id, theme FROM users").fetchall()


def test_ctrl_c_while_waiting_for_approval_rolls_back_and_exits_130(sqlite_database, tmp_path, cli):
    """SIGINT, as Ctrl-C sends it, in this process: once the approval waits, a thread signals the process."""
    import threading

    from approval_support import _preload_orm

    seed(sqlite_database)
    data = approval_plan(timeout_hours=1)
    plan = write_plan(tmp_path, data)
    _preload_orm()
    sent = threading.Event()

    def interrupt_when_waiting() -> None:
        from airflow.models import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not sent.is_set():
            with create_session() as session:
                waiting = session.scalar(select(TaskInstance.id).where(
                    TaskInstance.dag_id == data["id"], TaskInstance.state == TaskInstanceState.AWAITING_INPUT))
            if waiting is not None:
                time.sleep(0.5)
                os.kill(os.getpid(), signal.SIGINT)
                sent.set()
            time.sleep(0.2)

    thread = threading.Thread(target=interrupt_when_waiting, daemon=True)
    before = signal.getsignal(signal.SIGINT)
    thread.start()
    result = cli("run", str(plan), "--conn", f"app_db={sqlite_database.airflow_uri}")
    thread.join(timeout=5)

    assert sent.is_set()
    assert result.returncode == 130, result.stdout[-3000:] + result.stderr[-3000:]
    assert "SIGINT received: stopping the run" in result.stderr
    assert ("interrupted by SIGINT: the run was stopped and rolled back what it applied (see the rollback above); "
            "the plan's run lock is released") in result.stdout
    holder, applied = ledger_state(sqlite_database, data["id"])
    assert holder is None and applied == []
    assert_as_before_the_run(sqlite_database)
    assert signal.getsignal(signal.SIGINT) is before  # Ctrl-C works as before afterwards


def _signal_when_applying(db: Any, plan_id: str, step_id: str, signum: int, sent: Any) -> None:
    """In a thread: send ``signum`` to this process once the ledger shows ``step_id`` being applied (its task
    started its work, not just its run)."""
    engine = create_engine(db.sqlalchemy_url)
    ledger = Ledger(engine, plan_id)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:
            if ledger.exists() and any(r.status == "running" for r in ledger.rows(step_id)):
                os.kill(os.getpid(), signum)
                sent.set()
                return
            time.sleep(0.1)
    finally:
        engine.dispose()


def test_sigterm_during_a_step_lets_it_finish_then_stops_and_rolls_back(pg_database, tmp_path, cli):
    """A task already running finishes; the next one refuses to start; the rollback reverts both applied steps."""
    import threading
    import uuid


    data = {"id": f"stop_mid_step_{uuid.uuid4().hex[:8]}", "connections": {"target": "app_db"}, "retries": 0,
            "steps": [
                {"id": "create_a", "up": "CREATE TABLE stop_a (id int)", "down": "DROP TABLE stop_a",
                 "verify": "SELECT to_regclass('stop_a') IS NOT NULL"},
                {"id": "slow", "up": "CREATE TABLE stop_slow AS SELECT 1 AS id, pg_sleep(4)::text AS slept",
                 "down": "DROP TABLE stop_slow", "verify": "SELECT to_regclass('stop_slow') IS NOT NULL"},
                {"id": "create_b", "up": "CREATE TABLE stop_b (id int)", "down": "DROP TABLE stop_b",
                 "verify": "SELECT to_regclass('stop_b') IS NOT NULL"},
            ]}
    plan = write_plan(tmp_path, data)
    sent = threading.Event()
    thread = threading.Thread(target=_signal_when_applying, args=(pg_database, data["id"], "slow", signal.SIGTERM,
                                                                  sent), daemon=True)
    thread.start()

    result = cli("run", str(plan), "--conn", f"app_db={pg_database.airflow_uri}")
    thread.join(timeout=5)

    assert sent.is_set()
    assert result.returncode == 143, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"steps.{'slow':<34} success" in result.stdout  # the running task finished
    assert f"steps.{'create_b':<34} failed" in result.stdout  # the next one refused to start
    assert "task steps.create_b did not start" in result.stdout + result.stderr  # its log says why
    assert "interrupted by SIGTERM: the run was stopped and rolled back what it applied" in result.stdout
    engine = create_engine(pg_database.sqlalchemy_url)
    try:
        ledger = Ledger(engine, data["id"])
        assert ledger.lock_holder() is None and ledger.applied() == {}
        with engine.connect() as conn:
            left = conn.execute(text("SELECT table_name FROM information_schema.tables WHERE table_name "
                                     "IN ('stop_a', 'stop_slow', 'stop_b')")).all()
    finally:
        engine.dispose()
    assert left == []
