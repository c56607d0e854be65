"""A real Airflow deployment: api-server, scheduler (LocalExecutor), dag-processor and triggerer, driven over REST.

dag.test() runs tasks in-process from the DAG object; here, as in production, the dag-processor parses
the dags folder (loader + per-plan DAG files) and every task runs in its own worker process that parses
its plan file again. Covers: one broken plan is one import error; a successful run; a failed run that
rolls back, then a plan fix and a manual clear of the failed task that makes the same run converge; a dual
write and rename cutover while writer threads keep writing, its catch-up deferred to the triggerer, then a
failure after the switch that switches back with every write kept.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from e2e_support import REPO, USERS, break_verify, seed
from sqlalchemy import create_engine, text

from airflow_migrate_provider.core.dialects import dialect_for
from tests.integration.dual_write_support import Writers, assert_holds_every_write, seed_users

pytestmark = [pytest.mark.scheduler, pytest.mark.timeout(420)]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
GOOD_PLAN = REPO / "dags" / "plans" / "add_user_preferences.yaml"
BACKFILL_PLAN = REPO / "dags" / "plans" / "backfill_users_pg.yaml"
BAD_NAME = "CASE WHEN id = 777 THEN name || (1 / (id - 777))::text ELSE name END"  # fails in chunk 4 only
DUAL_OK, DUAL_GATE_TRIPS = "dual_write_cutover_sched", "dual_write_gate_trips_sched"


def dual_write_plan(plan_id: str, conn_id: str, *, fault: str | None = None) -> dict[str, Any]:
    """Like test_dual_write_dag.dual_write_plan: users → users_v2 by dual write, then a rename switch (users_v2
    takes the name users, so the writers writing users follow it) without an approval, then a health gate."""
    plan: dict[str, Any] = {
        "id": plan_id,
        "connections": {"target": conn_id},
        "retries": 0,
        "steps": [
            {"id": "create_users_v2",
             "up": "CREATE TABLE users_v2 (id INTEGER PRIMARY KEY, email VARCHAR(120) NOT NULL, theme VARCHAR(20), "
                   "notifications BOOLEAN NOT NULL); CREATE INDEX users_v2_theme ON users_v2 (theme)",
             "down": "DROP TABLE users_v2",
             "verify": "SELECT to_regclass('users_v2') IS NOT NULL OR to_regclass('users_old') IS NOT NULL"},
            {"id": "sync_users", "kind": "dual_write", "source": {"table": "users"}, "target": "users_v2",
             "key": "id", "chunks": 3, "batch": {"rows": 300, "seconds": None},
             "replay": {"batch_changes": 300},
             "catch_up": {"max_lag_changes": 20, "max_lag_seconds": 30, "poll_seconds": 0.5, "timeout_minutes": 3}},
            {"id": "switch_users", "kind": "cutover", "dual_write": "sync_users", "approval": False,
             "switch_reads": {"rename": {"old_table_becomes": "users_old"}}, "max_lock_seconds": 5,
             "smoke": [{"name": "users readable", "sql": "SELECT count(*) > 0 FROM users"}]},
            {"id": "app_healthy", "kind": "health_gate",
             "metrics": [{"name": "error_rate", "sql": "SELECT 0.0"}],
             "window_seconds": 2, "interval_seconds": 0.5, "baseline_samples": 1},
        ],
    }
    if fault:
        plan["fault_injection"] = {"task": fault}
    return plan


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Deployment:
    """The running Airflow components and a REST client for them."""

    def __init__(self, home: Path, port: int, env: dict[str, str]):
        self.home, self.port, self.env = home, port, env
        self.base = f"http://127.0.0.1:{port}"
        self.procs: list[subprocess.Popen] = []
        self.client: httpx.Client | None = None

    def start(self) -> None:
        for name, args in (("api", ["api-server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]),
                           ("scheduler", ["scheduler", "--skip-serve-logs"]), ("dag-processor", ["dag-processor"]),
                           ("triggerer", ["triggerer", "--skip-serve-logs"])):  # deferred tasks resume there
            log = open(self.home / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            self.procs.append(subprocess.Popen([AIRFLOW, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))
        self._wait(lambda: httpx.get(f"{self.base}/api/v2/monitor/health", timeout=2).status_code == 200, 120,
                   "the api-server to answer")
        token = httpx.get(f"{self.base}/auth/token", timeout=10).json()["access_token"]
        self.client = httpx.Client(base_url=f"{self.base}/api/v2", timeout=30,
                                   headers={"Authorization": f"Bearer {token}"})
        self._wait(self._all_healthy, 120, "the scheduler, dag-processor and triggerer to report healthy")
        started = (self.home / "triggerer.log").read_text()
        assert "Starting the triggerer" in started and "Traceback" not in started, started

    def _all_healthy(self) -> bool:
        """Every component still running and heartbeating (the triggerer included: a deferred task waits for
        it forever otherwise)."""
        exited = [p.args[1] for p in self.procs if p.poll() is not None]
        if exited:
            raise AssertionError(f"{', '.join(exited)} exited at start\n{self.logs()}")
        health = httpx.get(f"{self.base}/api/v2/monitor/health", timeout=2).json()
        return all((health.get(c) or {}).get("status") == "healthy"
                   for c in ("metadatabase", "scheduler", "dag_processor", "triggerer"))

    def stop(self) -> None:
        if self.client:
            self.client.close()
        for proc in self.procs:
            with suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 40
        for proc in self.procs:
            try:
                proc.wait(timeout=max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.home.glob("*.log")))

    def _wait(self, ready, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                value = ready()
                if value:
                    return value
            except (httpx.HTTPError, KeyError):
                pass
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.logs()}")

    def wait_for_dag(self, dag_id: str) -> None:
        self._wait(lambda: self.client.get(f"/dags/{dag_id}").status_code == 200, 120, f"DAG {dag_id} to be parsed")
        self.client.patch(f"/dags/{dag_id}", json={"is_paused": False}).raise_for_status()

    def wait_for_import_errors(self) -> list[dict[str, Any]]:
        """The import errors once there are any: the dag processor parses files in its own order, so the good
        DAGs can be listed before a broken file's error is stored."""
        return self._wait(lambda: self.client.get("/importErrors").json()["import_errors"], 120,
                          "an import error to be recorded")

    def trigger(self, dag_id: str) -> str:
        response = self.client.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None})
        response.raise_for_status()
        return response.json()["dag_run_id"]

    def wait_for_run(self, dag_id: str, run_id: str) -> str:
        def finished() -> str | None:
            state = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"]
            return state if state in ("success", "failed") else None
        return self._wait(finished, 180, f"run {run_id} of {dag_id} to finish")

    def mapped_states(self, dag_id: str, run_id: str, task_id: str) -> dict[int, tuple[str, int]]:
        """{map index: (state, try number)} of a mapped task."""
        body = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/listMapped").json()
        return {t["map_index"]: (t["state"], t["try_number"]) for t in body["task_instances"]}

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        body = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances").json()
        return {t["task_id"]: t["state"] for t in body["task_instances"]}

    def return_value(self, dag_id: str, run_id: str, task_id: str) -> Any:
        response = self.client.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/"
                                   "return_value")
        response.raise_for_status()
        return response.json()["value"]


@pytest.fixture(scope="module")
def deployment(pg_database_factory, tmp_path_factory) -> Iterator[tuple[Deployment, Any, Any]]:
    home = tmp_path_factory.mktemp("airflow-deployment")
    plans = home / "dags" / "plans"
    plans.mkdir(parents=True)
    shutil.copy(REPO / "dags" / "migration_plans.py", home / "dags")
    shutil.copy(GOOD_PLAN, plans / "add_user_preferences.yaml")
    failing = yaml.safe_load(GOOD_PLAN.read_text())
    failing.update(id="add_user_preferences_failing", connections={"target": "app_db_2"})
    break_verify(2)(failing)
    (plans / "failing.yaml").write_text(yaml.safe_dump(failing, sort_keys=False))
    backfill = yaml.safe_load(BACKFILL_PLAN.read_text())
    backfill.update(id="backfill_failing_chunk", connections={"target": "app_db_3"})
    backfill["steps"][1]["columns"]["name"] = BAD_NAME
    (plans / "backfill_failing.yaml").write_text(yaml.safe_dump(backfill, sort_keys=False))
    for plan in (dual_write_plan(DUAL_OK, "app_db_4"),
                 dual_write_plan(DUAL_GATE_TRIPS, "app_db_5", fault="steps.app_healthy")):
        (plans / f"{plan['id']}.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    (plans / "broken.yaml").write_text("id: broken\nconnections: {target: app_db}\nsteps:\n"
                                       "  - id: a\n    up: SELECT 1\n    verify: SELECT 1\n")
    with pg_database_factory() as meta, pg_database_factory() as app, pg_database_factory() as app2, \
            pg_database_factory() as app3, pg_database_factory() as app4, pg_database_factory() as app5:
        seed(app)
        seed(app2)
        seed(app3)
        for db in (app4, app5):  # the dual-write plans' application table (not the e2e users table)
            engine = create_engine(db.sqlalchemy_url)
            dialect_for(engine)
            seed_users(engine)
            engine.dispose()
        port = _free_port()
        env = {**os.environ,
               "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
               "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": meta.sqlalchemy_url,
               "AIRFLOW__CORE__EXECUTOR": "LocalExecutor", "AIRFLOW__CORE__PARALLELISM": "4",
               "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
               "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
               "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
               "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
               "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
               "AIRFLOW_CONN_APP_DB": app.airflow_uri, "AIRFLOW_CONN_APP_DB_2": app2.airflow_uri,
               "AIRFLOW_CONN_APP_DB_3": app3.airflow_uri, "AIRFLOW_CONN_APP_DB_4": app4.airflow_uri,
               "AIRFLOW_CONN_APP_DB_5": app5.airflow_uri}
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=180)
        dep = Deployment(home, port, env)
        try:
            dep.start()
            dep.app3, dep.app4, dep.app5 = app3, app4, app5
            yield dep, app, app2
        finally:
            dep.stop()


def test_broken_plan_is_one_import_error_and_the_others_load(deployment):
    dep, _, _ = deployment
    dep.wait_for_dag("add_user_preferences_pg")
    dep.wait_for_dag("add_user_preferences_failing")

    errors = dep.wait_for_import_errors()

    assert [e["filename"] for e in errors] == ["plans/broken.py"]
    assert "broken.yaml:4:5: steps.0: step 'a' has no `down`" in errors[0]["stack_trace"]


def test_run_under_the_scheduler_succeeds(deployment):
    dep, app, _ = deployment
    dep.wait_for_dag("add_user_preferences_pg")

    run_id = dep.trigger("add_user_preferences_pg")

    assert dep.wait_for_run("add_user_preferences_pg", run_id) == "success", dep.logs()
    states = dep.task_states("add_user_preferences_pg", run_id)
    assert states.pop("rollback.revert_applied") == "skipped"
    assert set(states.values()) == {"success"}
    eng = create_engine(app.sqlalchemy_url)
    with eng.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM user_preferences")).scalar() == USERS
    eng.dispose()


def test_failed_run_rolls_back_then_fix_and_clear_converges(deployment):
    dep, _, app2 = deployment
    dag_id = "add_user_preferences_failing"
    dep.wait_for_dag(dag_id)
    run_id = dep.trigger(dag_id)

    assert dep.wait_for_run(dag_id, run_id) == "failed"
    states = dep.task_states(dag_id, run_id)
    assert states["steps.move_preferences"] == "failed"
    assert states["rollback.revert_applied"] == "success"
    assert states["outcome"] == "failed"

    plan_file = dep.home / "dags" / "plans" / "failing.yaml"
    fixed = yaml.safe_load(plan_file.read_text())
    fixed["steps"][2]["verify"] = yaml.safe_load(GOOD_PLAN.read_text())["steps"][2]["verify"]
    plan_file.write_text(yaml.safe_dump(fixed, sort_keys=False))
    dep.client.post(f"/dags/{dag_id}/clearTaskInstances", json={
        "dry_run": False, "dag_run_id": run_id, "task_ids": ["steps.move_preferences"],
        "include_downstream": True, "only_failed": False}).raise_for_status()
    dep._wait(lambda: dep.client.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"] != "failed", 30,
              "the cleared run to be scheduled again")

    assert dep.wait_for_run(dag_id, run_id) == "success", dep.logs()
    eng = create_engine(app2.sqlalchemy_url)
    with eng.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM user_preferences")).scalar() == USERS
    eng.dispose()


def test_failed_chunk_rolls_back_then_clearing_only_that_chunk_converges(deployment):
    dep, _, _ = deployment
    dag_id, chunk_task = "backfill_failing_chunk", "steps.copy_users.copy_chunk"
    dep.wait_for_dag(dag_id)
    run_id = dep.trigger(dag_id)

    assert dep.wait_for_run(dag_id, run_id) == "failed"
    chunks = dep.mapped_states(dag_id, run_id, chunk_task)
    assert chunks == {0: ("success", 1), 1: ("success", 1), 2: ("success", 1), 3: ("failed", 1)}
    states = dep.task_states(dag_id, run_id)
    assert states["rollback.revert_applied"] == "success"
    assert states["outcome"] == "failed"
    eng = create_engine(dep.app3.sqlalchemy_url)
    with eng.connect() as conn:
        assert conn.execute(text("SELECT to_regclass('users_v2') IS NULL")).scalar()  # rolled back

    plan_file = dep.home / "dags" / "plans" / "backfill_failing.yaml"
    fixed = yaml.safe_load(plan_file.read_text())
    del fixed["steps"][1]["columns"]["name"]
    plan_file.write_text(yaml.safe_dump(fixed, sort_keys=False))
    dep.client.post(f"/dags/{dag_id}/clearTaskInstances", json={
        "dry_run": False, "dag_run_id": run_id, "task_ids": [[chunk_task, 3]],
        "include_downstream": True, "only_failed": False}).raise_for_status()
    dep._wait(lambda: dep.client.get(f"/dags/{dag_id}/dagRuns/{run_id}").json()["state"] != "failed", 30,
              "the cleared run to be scheduled again")

    assert dep.wait_for_run(dag_id, run_id) == "success", dep.logs()
    chunks = dep.mapped_states(dag_id, run_id, chunk_task)
    assert chunks == {0: ("success", 1), 1: ("success", 1), 2: ("success", 1), 3: ("success", 2)}
    with eng.connect() as conn:
        copied = conn.execute(text("SELECT count(*), sum(hashtextextended(u::text, 0)) FROM "
                                   "(SELECT id, email, name, updated_at FROM users_v2) u")).one()
        source = conn.execute(text("SELECT count(*), sum(hashtextextended(u::text, 0)) FROM "
                                   "(SELECT id, email, name, updated_at FROM users) u")).one()
    eng.dispose()
    assert tuple(copied) == tuple(source)


def run_with_writers(dep: Deployment, dag_id: str, db: Any) -> tuple[str, str, Writers]:
    """Writers write users the whole time: before the run is triggered, during it, and a while after it."""
    dep.wait_for_dag(dag_id)
    with Writers(db.sqlalchemy_url) as writers:
        writers.wait_for(30)
        run_id = dep.trigger(dag_id)
        state = dep.wait_for_run(dag_id, run_id)
        writers.wait_for(writers.writes + 100)
    return state, run_id, writers


def test_dual_write_cutover_under_the_scheduler_with_live_writers(deployment):
    dep = deployment[0]
    state, run_id, writers = run_with_writers(dep, DUAL_OK, dep.app4)

    assert state == "success", dep.logs()
    states = dep.task_states(DUAL_OK, run_id)
    assert states.pop("rollback.revert_applied") == "skipped"
    assert set(states.values()) == {"success"}, states
    # both catch-ups deferred and resumed from the triggerer: only its event carries waited_s
    for task_id in ("steps.sync_users.catch_up", "steps.switch_users.catch_up"):
        result = dep.return_value(DUAL_OK, run_id, task_id)
        assert result["status"] == "caught_up" and "waited_s" in result and result["lag_changes"] <= 20, result
    engine = create_engine(dep.app4.sqlalchemy_url)
    try:
        # users is now the new table (users_v2 renamed); it holds every write the writers were told succeeded
        assert_holds_every_write(writers, engine, "users")
        assert writers.ops["key_update"] > 0 and writers.ops["delete"] > 0, writers.ops
        with engine.connect() as conn:
            assert conn.execute(text("SELECT to_regclass('users_v2') IS NULL AND EXISTS (SELECT FROM pg_indexes "
                                     "WHERE indexname = 'users_v2_theme' AND tablename = 'users')")).scalar()
        with pytest.raises(Exception, match="read-only"), engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM users_old WHERE id = 2")
    finally:
        engine.dispose()


def test_failure_after_the_cutover_switches_back_under_the_scheduler_with_every_write_kept(deployment):
    dep = deployment[0]
    state, run_id, writers = run_with_writers(dep, DUAL_GATE_TRIPS, dep.app5)

    assert state == "failed", dep.logs()
    states = dep.task_states(DUAL_GATE_TRIPS, run_id)
    assert states["steps.switch_users.switch"] == "success"
    assert states["steps.switch_users.disable_old_writes"] == "success"
    assert states["steps.app_healthy"] == "failed"
    assert states["rollback.revert_applied"] == "success" and states["outcome"] == "failed"
    engine = create_engine(dep.app5.sqlalchemy_url)
    try:
        with engine.connect() as conn:  # users is the old table again
            assert conn.execute(text("SELECT to_regclass('users_old') IS NULL AND to_regclass('users_v2') IS NULL "
                                     "AND NOT EXISTS (SELECT FROM pg_tables WHERE tablename LIKE 'am_chg_%')")).scalar()
        # every write, those made on the new table after the switch too
        assert_holds_every_write(writers, engine, "users")
    finally:
        engine.dispose()
