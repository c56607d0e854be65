"""A real Airflow deployment: api-server, scheduler (LocalExecutor) and dag-processor, driven over REST.

dag.test() runs tasks in-process from the DAG object; here, as in production, the dag-processor parses
the dags folder (loader + per-plan DAG files) and every task runs in its own worker process that parses
its plan file again. Covers: one broken plan is one import error; a successful run; a failed run that
rolls back, then a plan fix and a manual clear of the failed task that makes the same run converge.
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

pytestmark = [pytest.mark.scheduler, pytest.mark.timeout(420)]
AIRFLOW = str(Path(sys.executable).parent / "airflow")
GOOD_PLAN = REPO / "dags" / "plans" / "add_user_preferences.yaml"
BACKFILL_PLAN = REPO / "dags" / "plans" / "backfill_users_pg.yaml"
BAD_NAME = "CASE WHEN id = 777 THEN name || (1 / (id - 777))::text ELSE name END"  # fails in chunk 4 only


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
                           ("scheduler", ["scheduler", "--skip-serve-logs"]), ("dag-processor", ["dag-processor"])):
            log = open(self.home / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
            self.procs.append(subprocess.Popen([AIRFLOW, *args], env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))
        self._wait(lambda: httpx.get(f"{self.base}/api/v2/monitor/health", timeout=2).status_code == 200, 120,
                   "the api-server to answer")
        token = httpx.get(f"{self.base}/auth/token", timeout=10).json()["access_token"]
        self.client = httpx.Client(base_url=f"{self.base}/api/v2", timeout=30,
                                   headers={"Authorization": f"Bearer {token}"})

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
    (plans / "broken.yaml").write_text("id: broken\nconnections: {target: app_db}\nsteps:\n"
                                       "  - id: a\n    up: SELECT 1\n    verify: SELECT 1\n")
    with pg_database_factory() as meta, pg_database_factory() as app, pg_database_factory() as app2, \
            pg_database_factory() as app3:
        seed(app)
        seed(app2)
        seed(app3)
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
               "AIRFLOW_CONN_APP_DB_3": app3.airflow_uri}
        subprocess.run([AIRFLOW, "db", "migrate"], env=env, check=True, capture_output=True, timeout=180)
        dep = Deployment(home, port, env)
        try:
            dep.start()
            dep.app3 = app3
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
