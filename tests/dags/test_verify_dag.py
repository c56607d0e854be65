"""End-to-end verification under dag.test(): a verify step after a backfill passes and leaves a report; a
difference, a failed expectation or an unhealthy application fails the run and rolls it back."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from e2e_support import scalar, states

pytestmark = [pytest.mark.dag, pytest.mark.timeout(240)]
PG_PLAN = Path(__file__).resolve().parents[2] / "dags" / "plans" / "backfill_users_pg.yaml"


@pytest.fixture
def reports(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AIRFLOW_MIGRATE_REPORTS", str(tmp_path / "reports"))
    return tmp_path / "reports"


VERIFY_USERS = {
    "kind": "verify", "id": "verify_users", "description": "users_v2 holds every user, unchanged",
    "source": {"table": "users"}, "target": {"table": "users_v2"}, "key": "id",
    "columns": {"preferences": "jsonb_build_object('theme', theme, 'notifications_enabled', notifications_enabled)"},
    "tolerances": {"updated_at": {"time_zone": "UTC", "timestamp_precision": "ms"}},
    "expected_differences": {
        "schemas": ["column theme: only in source", "column notifications_enabled: only in source",
                    "column preferences: only in target", "column updated_at: default current_timestamp -> none"],
    },
    "sample_size": 50, "segments": 8,
}


def plan_with(plan_id: str, *extra_steps: dict, before_verify: list[dict] | None = None) -> dict:
    data = yaml.safe_load(PG_PLAN.read_text())
    data["id"] = plan_id
    data["connections"] = {"target": "app_db", "source": "legacy_db"}
    data["steps"] += [*(before_verify or []), *extra_steps]
    return data


def test_verify_step_passes_and_leaves_a_report(pg_database, legacy_pg, run_plan, reports):
    dag_run = run_plan(plan_with("verify_ok", VERIFY_USERS), pg_database)

    assert dag_run.state == "success", states(dag_run)
    assert states(dag_run)["steps.verify_users"] == "success"
    report_files = sorted(reports.rglob("verify_users.*"))
    assert [p.suffix for p in report_files] == [".html", ".json"]
    report = json.loads(report_files[1].read_text())
    assert report["passed"] is True
    assert [c["check"] for c in report["checks"]] == ["row_counts", "schemas", "indexes", "constraints",
                                                      "data_sample", "checksums"]
    recorded = json.loads(scalar(pg_database.sqlalchemy_url, "SELECT verified FROM airflow_migrate_history "
                                                             "WHERE step_id = 'verify_users' AND status = 'applied'"))
    assert recorded["report"] == str(report_files[1])


def test_a_changed_row_fails_verification_and_rolls_back(pg_database, legacy_pg, run_plan, reports):
    tamper = {"id": "tamper", "description": "a bug in the migration: one name changed",
              "up": "UPDATE users_v2 SET name = 'Mallory' WHERE id = 500",
              "down": "SELECT 1", "verify": "SELECT 1"}
    dag_run = run_plan(plan_with("verify_changed", VERIFY_USERS, before_verify=[tamper]), pg_database)

    assert dag_run.state == "failed"
    got = states(dag_run)
    assert got["steps.verify_users"] == "failed"
    assert got["rollback.revert_applied"] == "success"
    assert scalar(pg_database.sqlalchemy_url, "SELECT to_regclass('users_v2') IS NULL") is True
    report = json.loads(next(reports.rglob("verify_users.json")).read_text())
    failed = {c["check"]: c for c in report["checks"] if not c["passed"]}
    assert set(failed) == {"data_sample", "checksums"} or set(failed) == {"checksums"}
    changed = [d for d in failed["checksums"]["differences"] if d["kind"] == "changed"]
    assert [(d["key"], d["column"], d["target"]) for d in changed] in ([(500, "name", "Mallory")],
                                                                       [([500], "name", "Mallory")])


def test_a_verify_step_naming_a_missing_table_fails_safe(pg_database, legacy_pg, run_plan, caplog, capfd):
    typo = {**VERIFY_USERS, "id": "verify_typo", "target": {"table": "users_v3"}}
    dag_run = run_plan(plan_with("verify_typo", typo), pg_database)

    assert dag_run.state == "failed"
    assert states(dag_run)["steps.verify_typo"] == "failed"
    assert states(dag_run)["rollback.revert_applied"] == "success"
    logs = capfd.readouterr()
    assert "steps.verify_typo.target.table: table 'users_v3' does not exist" in logs.out + logs.err + caplog.text


def test_a_failing_expectation_fails_the_run(pg_database, legacy_pg, run_plan, reports):
    expect = {"kind": "verify", "id": "expect_users", "target": {"table": "users_v2"}, "checks": [],
              "expectations": {"suite": [
                  {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "email"}},
                  {"type": "expect_table_row_count_to_equal", "kwargs": {"value": 999}}]}}
    dag_run = run_plan(plan_with("verify_gx", expect), pg_database)

    assert dag_run.state == "failed"
    assert states(dag_run)["steps.expect_users"] == "failed"
    report = json.loads(next(reports.rglob("expect_users.json")).read_text())
    (gx,) = report["checks"]
    assert gx["check"] == "expectations" and gx["passed"] is False
    assert "expect_table_row_count_to_equal" in json.dumps(gx["differences"])


@contextmanager
def metrics_server(values: dict) -> Iterator[str]:
    """An application's metrics endpoint on 127.0.0.1; ``values`` can be changed while it runs."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"http": dict(values)}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        server.shutdown()


def gate(url: str) -> dict:
    return {"kind": "health_gate", "id": "app_healthy", "window_seconds": 3, "interval_seconds": 1,
            "baseline_samples": 1,
            "metrics": [{"name": "error_rate", "url": url, "json_path": "http.error_rate"},
                        {"name": "latency_p95", "url": url, "json_path": "http.latency_p95"}]}


def test_healthy_application_passes_the_gate(pg_database, legacy_pg, run_plan):
    with metrics_server({"error_rate": 0.001, "latency_p95": 120}) as url:
        dag_run = run_plan(plan_with("gate_ok", gate(url)), pg_database)

    assert dag_run.state == "success", states(dag_run)
    assert states(dag_run)["steps.app_healthy"] == "success"


def test_error_rate_over_one_percent_fails_the_gate_and_rolls_back(pg_database, legacy_pg, run_plan, caplog,
                                                                    capfd, monkeypatch):
    import airflow_migrate_provider.core.verify.gate as gate_module

    values = {"error_rate": 0.001, "latency_p95": 120}
    real_capture = gate_module.capture_baseline

    def capture_then_degrade(*args, **kwargs):
        captured = real_capture(*args, **kwargs)  # the baseline is taken healthy, before anything changes
        values["error_rate"] = 0.05  # then the migration "breaks" the application
        return captured

    monkeypatch.setattr(gate_module, "capture_baseline", capture_then_degrade)
    with metrics_server(values) as url:
        dag_run = run_plan(plan_with("gate_breach", gate(url)), pg_database)

    assert dag_run.state == "failed"
    got = states(dag_run)
    assert got["steps.app_healthy"] == "failed"
    assert got["rollback.revert_applied"] == "success"
    assert scalar(pg_database.sqlalchemy_url, "SELECT to_regclass('users_v2') IS NULL") is True
    logs = capfd.readouterr()
    output = logs.out + logs.err + caplog.text
    assert "error_rate" in output and "0.05" in output
