"""The `kind: backfill` step in the plan model: defaults, shorthand, and refusals with the field named."""

from __future__ import annotations

import pytest

from airflow_migrate_provider.errors import PlanError
from airflow_migrate_provider.plan.loader import parse_plan
from airflow_migrate_provider.plan.model import BackfillStep, Plan

BASE = """id: p
connections: {target: app_db, source: legacy_db}
steps:
  - id: copy_users
    kind: backfill
    source: {table: app.users}
    target: users_v2
    key: id
"""


def plan(extra: str = "    watermark: updated_at\n") -> Plan:
    return parse_plan(BASE + extra, "p.yaml")


def problems(extra: str) -> list[str]:
    with pytest.raises(PlanError) as err:
        plan(extra)
    return [str(p) for p in err.value.problems]


def test_defaults_and_key_shorthand() -> None:
    step = plan().steps[0]
    assert isinstance(step, BackfillStep)
    assert step.key == ["id"]
    assert (step.chunks, step.batch.rows, step.batch.seconds, step.max_lock_seconds) == (1, 50_000, 2.0, 10.0)
    assert step.phases.recent and step.phases.final_sync
    assert step.watermark_lag_seconds == 60


def test_live_phases_need_a_watermark_or_append_only() -> None:
    found = problems("")
    assert len(found) == 1 and "p.yaml:4:5" in found[0] and "has no `watermark`" in found[0]
    assert plan("    append_only: true\n").steps[0].append_only
    assert plan("    phases: {recent: false, final_sync: false}\n").steps[0].watermark is None


def test_query_source_with_final_sync_needs_lock_tables() -> None:
    text = BASE.replace("source: {table: app.users}", "source: {query: 'SELECT * FROM users'}")
    with pytest.raises(PlanError) as err:
        parse_plan(text + "    append_only: true\n", "p.yaml")
    assert "source.lock_tables" in str(err.value)
    ok = parse_plan(text.replace("'SELECT * FROM users'}", "'SELECT * FROM users', lock_tables: [users]}")
                    + "    append_only: true\n", "p.yaml")
    assert ok.steps[0].source.lock_tables == ["users"]


@pytest.mark.parametrize(("extra", "expected"), [
    ("    watermark: updated_at\n    chunks: 0\n", "chunks"),
    ("    watermark: updated_at\n    chunks: 257\n", "chunks"),
    ("    watermark: updated_at\n    batch: {rows: 0}\n", "batch.rows"),
    ("    watermark: updated_at\n    batch: {rows: '10'}\n", "batch.rows"),
    ("    watermark: updated_at\n    throttle: [{name: lag, query: SELECT 1}]\n", "max"),
    ("    watermark: updated_at\n    throttle: [{name: l, query: SELECT 1, max: 5, database: replica}]\n", "database"),
    ("    watermark: updated_at\n    max_lock_seconds: 0\n", "max_lock_seconds"),
    ("    watermark: updated_at\n    irreversible: true\n", "irreversible"),
    ("    watermark: updated_at\n    up: SELECT 1\n", "up"),
])
def test_bad_values_name_their_field(extra: str, expected: str) -> None:
    found = problems(extra)
    assert any(expected in p for p in found), found


def test_throttle_rule_runs_on_the_named_database() -> None:
    throttle = "    throttle: [{name: backlog, query: SELECT 1, max: 5, database: target}]\n"
    rule = plan("    watermark: updated_at\n" + throttle).steps[0].throttle[0]
    assert (rule.database, rule.pause_seconds, rule.defer_after_seconds) == ("target", 1.0, None)


def test_table_query_and_names_are_checked() -> None:
    both = BASE.replace("source: {table: app.users}", "source: {table: users, query: 'SELECT 1'}")
    with pytest.raises(PlanError, match="exactly one of `table` or `query`"):
        parse_plan(both + "    append_only: true\n", "p.yaml")
    with pytest.raises(PlanError, match="is not a table name"):
        parse_plan(BASE.replace("target: users_v2", "target: 'users; DROP TABLE x'") + "    append_only: true\n",
                   "p.yaml")
    with pytest.raises(PlanError, match="key columns repeat"):
        parse_plan(BASE.replace("key: id", "key: [id, id]") + "    append_only: true\n", "p.yaml")
