"""`kind: verify` and `kind: health_gate` in the plan model: defaults and refusals that name the field."""

from __future__ import annotations

import pytest

from airflow_migrate_provider.errors import PlanError
from airflow_migrate_provider.plan.loader import parse_plan
from airflow_migrate_provider.plan.model import ALL_CHECKS, HealthGateStep, VerifyStep

HEAD = "id: p\nconnections: {target: app_db}\nsteps:\n"


def steps(body: str):
    return parse_plan(HEAD + body, "p.yaml").steps


def problems(body: str) -> str:
    with pytest.raises(PlanError) as err:
        steps(body)
    return str(err.value)


def test_verify_defaults_to_all_six_checks() -> None:
    (step,) = steps("  - {kind: verify, id: v, source: {table: users}, target: {table: users_v2}, key: id}\n")
    assert isinstance(step, VerifyStep)
    assert tuple(step.checks) == ALL_CHECKS and step.key == ["id"]
    assert (step.sample_size, step.segments) == (100, 64)


def test_tolerances_are_typed_per_column() -> None:
    (step,) = steps("  - kind: verify\n    id: v\n    source: {table: a}\n    target: {table: b}\n    key: id\n"
                    "    tolerances: {amount: {numeric_scale: 2}, at: {time_zone: UTC, timestamp_precision: ms},"
                    " doc: {as_json: true}}\n")
    assert step.tolerances["amount"].numeric_scale == 2
    assert step.tolerances["at"].timestamp_precision == "ms"
    assert step.tolerances["doc"].as_json
    assert "timestamp_precision" in problems(
        "  - kind: verify\n    id: v\n    source: {table: a}\n    target: {table: b}\n    key: id\n"
        "    tolerances: {at: {timestamp_precision: minutes}}\n")


@pytest.mark.parametrize(("body", "message"), [
    ("  - {kind: verify, id: v, target: {table: b}}\n", "has no `source`"),
    ("  - {kind: verify, id: v, source: {table: a}, target: {table: b}, checks: [checksums]}\n", "need `key`"),
    ("  - {kind: verify, id: v, source: {query: 'SELECT 1'}, target: {table: b}, checks: [schemas]}\n",
     "compare tables"),
    ("  - {kind: verify, id: v, target: {table: b}, checks: []}\n", "checks nothing"),
    ("  - {kind: verify, id: v, source: {table: a}, target: {table: b}, checks: [row_count]}\n", "row_counts"),
    ("  - {kind: verify, id: v, target: {table: b, query: 'SELECT 1'}, checks: [], "
     "expectations: {suite: []}}\n", "exactly one of `table` or `query`"),
    ("  - {kind: verify, id: v, target: {table: b}, checks: [], expectations: {}}\n",
     "exactly one of `suite` or `path`"),
    ("  - {kind: verify, id: v, source: {table: a}, target: {table: b}, checks: [], "
     "performance: {queries: []}}\n", "performance.queries"),
])
def test_verify_refusals(body: str, message: str) -> None:
    assert message in problems(body)


def test_health_gate_defaults_to_the_seed_triggers() -> None:
    (step,) = steps("  - kind: health_gate\n    id: g\n    metrics:\n"
                    "      - {name: error_rate, url: 'http://app/metrics', json_path: http.errors}\n"
                    "      - {name: latency_p95, url: 'http://app/metrics', json_path: http.p95}\n")
    assert isinstance(step, HealthGateStep)
    assert [(t.metric, t.max, t.max_ratio_to_baseline) for t in step.effective_thresholds()] == [
        ("error_rate", 0.01, None), ("latency_p95", None, 2.0)]
    assert (step.window_seconds, step.interval_seconds, step.database) == (300, 15, "target")


@pytest.mark.parametrize(("metrics", "extra", "message"), [
    ("[{name: lag, sql: SELECT 1}]", "", "has no rollback trigger"),
    ("[{name: error_rate, sql: SELECT 1, url: 'http://x'}]", "", "exactly one of `sql` or `url`"),
    ("[{name: error_rate, url: 'ftp://x'}]", "", "must be http(s)"),
    ("[{name: error_rate, sql: SELECT 1}]", "    thresholds: [{metric: latency, max: 1}]\n", "unknown metric"),
])
def test_health_gate_refusals(metrics: str, extra: str, message: str) -> None:
    assert message in problems(f"  - kind: health_gate\n    id: g\n    metrics: {metrics}\n{extra}")
