"""HealthGate against a real local HTTP metrics endpoint and real SQLite/PostgreSQL metrics.

The window is driven by a fake clock whose sleep advances it, so a 60 s watch takes milliseconds; the
endpoint is switched between healthy and unhealthy values while the gate watches.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlalchemy import text

from airflow_migrate_provider.core.verify.health import (
    HealthCheckError,
    HealthGate,
    Metric,
    Threshold,
    default_thresholds,
)

HEALTHY = {"errors": {"rate": 0.002}, "latency": {"p95": 100.0}}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        routes = self.server.routes  # type: ignore[attr-defined]
        route = routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        if callable(route):
            route = route()
        status, body = route
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output clean
        pass


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a client that timed out on /slow: not news
        pass


@pytest.fixture(scope="module")
def server():
    srv = _QuietServer(("127.0.0.1", 0), _Handler)
    srv.routes = {}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def metrics(server):
    """The endpoint's current document: tests change it in place."""
    document = json.loads(json.dumps(HEALTHY))
    server.routes.clear()
    server.routes["/metrics"] = lambda: (200, document)
    return document


class FakeTime:
    """``clock`` and ``sleep`` for watch(): sleeping advances the clock; hooks run at given times."""

    def __init__(self):
        self.now, self.sleeps, self.hooks = 1000.0, [], {}

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        hook = self.hooks.pop(round(self.now - 1000.0, 6), None)
        if hook:
            hook()


def _http_gate(server, thresholds=None, **kwargs) -> HealthGate:
    url = f"{server.base}/metrics"
    return HealthGate([Metric("error_rate", url=url, json_path="errors.rate"),
                       Metric("latency_p95", url=url, json_path="latency.p95")],
                      thresholds or default_thresholds(), **kwargs)


def test_healthy_window_passes(server, metrics):
    gate = _http_gate(server)
    assert gate.sample() == {"error_rate": 0.002, "latency_p95": 100.0}
    fake = FakeTime()
    result = gate.watch(window_s=60, interval_s=15, baseline={"latency_p95": 90.0}, sleep=fake.sleep,
                        clock=fake.clock)
    assert result.check == "health_gate" and result.passed is True
    assert fake.sleeps == [15, 15, 15, 15]  # samples at 0, 15, 30, 45, 60
    assert result.detail.startswith("5 samples over 60.0 s, every 15 s: all thresholds held")
    assert "error_rate = 0.002 (limit max 0.01)" in result.detail
    assert "latency_p95 = 100 (limit 2x baseline 90 = 180)" in result.detail


def test_error_rate_breach_stops_the_watch(server, metrics):
    gate = _http_gate(server)
    fake = FakeTime()
    fake.hooks[30.0] = lambda: metrics["errors"].update(rate=0.05)
    result = gate.watch(window_s=120, interval_s=15, baseline={"latency_p95": 100.0}, sleep=fake.sleep,
                        clock=fake.clock)
    assert result.passed is False
    assert fake.sleeps == [15, 15]  # stopped at the third sample, not at the end of the window
    (breach,) = result.differences
    assert (breach.kind, breach.key, breach.target) == ("health", "error_rate", 0.05)
    assert breach.detail.startswith("error_rate = 0.05 > max 0.01 at +30.0 s of the 120 s window (sample 3")
    assert result.detail.startswith("breach at +30.0 s")


def test_latency_against_captured_baseline(server, metrics):
    readings = iter([100.0, 140.0, 120.0])
    server.routes["/metrics"] = lambda: (200, {"errors": {"rate": 0}, "latency": {"p95": next(readings)}})
    gate = _http_gate(server)
    slept = []
    baseline = gate.capture_baseline(samples=3, interval_s=2.0, sleep=slept.append)
    assert baseline == {"error_rate": 0.0, "latency_p95": 120.0}  # medians; one request per sample
    assert slept == [2.0, 2.0]

    assert gate.evaluate({"error_rate": 0.0, "latency_p95": 230.0}, baseline).passed is True
    result = gate.evaluate({"error_rate": 0.0, "latency_p95": 360.0}, baseline)  # 3x the baseline
    assert result.passed is False
    assert [d.key for d in result.differences] == ["latency_p95"]
    assert "latency_p95 = 360 > 2x baseline 120 = 240" in result.differences[0].detail

    # a ratio threshold with no baseline must not pass by default
    with pytest.raises(HealthCheckError, match="no baseline value was captured"):
        gate.evaluate({"error_rate": 0.0, "latency_p95": 1.0}, None)


def test_sql_metrics(engine, database):
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE requests (id INTEGER PRIMARY KEY, failed INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO requests (id, failed) VALUES (:i, :f)"),
                     [{"i": i, "f": 1 if i % 50 == 0 else 0} for i in range(1, 101)])
    rate = Metric("error_rate", sql="SELECT sum(failed) * 1.0 / count(*) FROM requests")
    gate = HealthGate([rate], [Threshold("error_rate", max=0.01)], engines={"target": engine})
    assert gate.sample() == {"error_rate": pytest.approx(0.02)}
    result = gate.watch(window_s=0, interval_s=1, baseline=None)
    assert result.passed is False and result.differences[0].key == "error_rate"

    with engine.begin() as conn:
        conn.execute(text("UPDATE requests SET failed = 0"))
    assert gate.watch(window_s=0, interval_s=1, baseline=None).passed is True

    broken = HealthGate([Metric("m", sql="SELECT nope FROM requests")], [Threshold("m", max=1)],
                        engines={"target": engine})
    with pytest.raises(HealthCheckError, match="metric 'm': query on the target database failed") as err:
        broken.sample()
    assert err.value.metric == "m" and err.value.transient is False
    empty = HealthGate([Metric("m", sql="SELECT id FROM requests WHERE id < 0")], [Threshold("m", max=1)],
                       engines={"target": engine})
    with pytest.raises(HealthCheckError, match="query returned no row"):
        empty.sample()
    texty = HealthGate([Metric("m", sql="SELECT 'lots' AS v")], [Threshold("m", max=1)],
                       engines={"target": engine})
    with pytest.raises(HealthCheckError, match="metric 'm': the query's first column is not a number: 'lots'"):
        texty.sample()
    assert database.dialect in ("sqlite", "postgresql", "mariadb")


def test_unreachable_endpoint_is_a_transient_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    gate = HealthGate([Metric("error_rate", url=f"http://user:s3cret@127.0.0.1:{port}/m", json_path="e")],
                      [Threshold("error_rate", max=0.01)], timeout_s=1.0)
    with pytest.raises(HealthCheckError) as err:
        gate.watch(window_s=10, interval_s=1, baseline=None, sleep=lambda s: None)
    assert err.value.metric == "error_rate" and err.value.transient is True
    assert f"metric 'error_rate': cannot reach http://user:***@127.0.0.1:{port}/m" in str(err.value)
    assert "s3cret" not in str(err.value)


def test_bad_responses_name_the_metric(server, metrics):
    base = server.base
    server.routes["/html"] = (200, b"<html>oops</html>")
    server.routes["/down"] = (503, {"error": "maintenance"})
    server.routes["/text"] = (200, {"errors": {"rate": "n/a"}, "list": [{"p95": "12.5"}]})

    def slow():
        time.sleep(1.0)
        return 200, HEALTHY

    server.routes["/slow"] = slow

    def read(url, json_path=None, timeout_s=5.0):
        gate = HealthGate([Metric("m", url=f"{base}{url}", json_path=json_path)], [Threshold("m", max=1)],
                          timeout_s=timeout_s)
        return gate.sample()["m"]

    with pytest.raises(HealthCheckError, match=r"json_path 'errors.ratio': no 'ratio' under errors \(keys: rate\)"):
        read("/metrics", "errors.ratio")
    with pytest.raises(HealthCheckError, match=r"json_path 'latency.p95.x': no 'x' under latency.p95 \(float\)"):
        read("/metrics", "latency.p95.x")
    with pytest.raises(HealthCheckError, match="did not return JSON") as not_json:
        read("/html", "a")
    assert not_json.value.transient is False
    with pytest.raises(HealthCheckError, match="answered HTTP 503") as down:
        read("/down", "a")
    assert down.value.transient is True
    with pytest.raises(HealthCheckError, match="answered HTTP 404") as missing:
        read("/nothing-here", "a")
    assert missing.value.transient is False
    with pytest.raises(HealthCheckError, match=r"json_path 'errors.rate' is not a number: 'n/a'"):
        read("/text", "errors.rate")
    with pytest.raises(HealthCheckError, match=r"the JSON body is not a number"):
        read("/metrics")
    assert read("/text", "list.0.p95") == 12.5  # numeric text and list indexes are read
    with pytest.raises(HealthCheckError, match=r"cannot reach .*timeout 0.2 s") as slow_err:
        read("/slow", "errors.rate", timeout_s=0.2)
    assert slow_err.value.transient is True


def test_gate_setup_is_checked_up_front(server):
    url = f"{server.base}/metrics"
    with pytest.raises(HealthCheckError) as err:
        HealthGate([Metric("a", url=url), Metric("a", sql="SELECT 1"), Metric("b"), Metric("c", url="file:///etc/x")],
                   [Threshold("zzz", max=1), Threshold("a")])
    message = str(err.value)
    for expected in ("metric 'a' is defined more than once",
                     "health.metrics[1] ('a').sql: no engine for database 'target'",
                     "health.metrics[2] ('b'): give exactly one of 'sql' and 'url'",
                     "health.metrics[3] ('c').url: must be an http:// or https:// URL",
                     "health.thresholds[0] ('zzz').metric: no metric named 'zzz'",
                     "health.thresholds[1] ('a'): give 'max', 'max_ratio_to_baseline' or both"):
        assert expected in message
    with pytest.raises(HealthCheckError, match="none given"):
        HealthGate([Metric("a", url=url)], [])
    assert [(t.metric, t.max, t.max_ratio_to_baseline) for t in default_thresholds()] == [
        ("error_rate", 0.01, None), ("latency_p95", None, 2.0)]
