"""Typed actions: what the ledger stores comes back equal, renders as a reviewer reads it, and reverses."""

from __future__ import annotations

import pytest

from airflow_migrate_provider.core.actions import (
    _ACTION_TYPES,
    Action,
    ActionPlan,
    CaptureChanges,
    Check,
    CompareRows,
    CopyRange,
    DeleteRows,
    DropCapture,
    GuardWrites,
    HttpCall,
    Note,
    ReplayChanges,
    RunSql,
    SampleMetric,
    Switch,
    WriteLock,
)
from airflow_migrate_provider.core.dialects import dialect_named
from airflow_migrate_provider.core.kinds import kind_of, registered_kinds
from tests.integration.migrate_it_support import make_plan

EXAMPLES: list[Action] = [
    RunSql("CREATE TABLE t (a int)"),
    Check("SELECT count(*) = 0 FROM t"),
    CopyRange("users", "users_v2", ("id",), (("prefs", "json_build_object('theme', theme)"),), "deleted_at IS NULL"),
    DeleteRows("users_v2", "empty before"),
    WriteLock(("users",), 5.0),
    CompareRows("users", "users_v2", ("row_counts", "checksums")),
    SampleMetric("error_rate", "SELECT 0.0"),
    HttpCall("GET", "https://app.example/health?token=secret", "latency"),
    Note("free text"),
    CaptureChanges("users", "am_chg_1", "am_cap_1", ("id",)),
    DropCapture("users", "am_chg_1", "am_cap_1", ("id",)),
    ReplayChanges("am_chg_1", "users", "users_v2"),
    Switch("rename", "users → users_old, users_v2 → users", "users → users_v2, users_old → users"),
    GuardWrites("users_old", ("app",)),
]


def test_capture_reverses_to_dropping_it() -> None:
    capture = CaptureChanges("users", "am_chg_1", "am_cap_1", ("id",))
    assert capture.reverse() == [DropCapture("users", "am_chg_1", "am_cap_1", ("id",))]
    assert "am_chg_1" in capture.render()


def test_every_action_type_has_an_example() -> None:
    assert {type(a) for a in EXAMPLES} == set(_ACTION_TYPES.values())


@pytest.mark.parametrize("action", EXAMPLES, ids=lambda a: a.type)
def test_action_round_trips_through_the_ledger_format(action: Action) -> None:
    assert Action.from_json(action.to_json()) == action
    assert action.render()


def test_copy_range_reverses_to_emptying_its_target_and_renders_the_batch_query() -> None:
    copy = EXAMPLES[2]
    assert copy.reverse() == [DeleteRows("users_v2", "the table was empty when the backfill began")]
    text = copy.render()
    assert "json_build_object('theme', theme) AS prefs" in text and "id > :last_key" in text
    assert "(deleted_at IS NULL)" in text


def test_reads_reverse_to_nothing_and_sql_has_no_automatic_reverse() -> None:
    assert Check("SELECT 1").reverse() == [] and CompareRows("a", "b", ()).reverse() == []
    assert RunSql("DROP TABLE t").reverse() is None


def test_http_render_hides_the_query_string() -> None:
    assert "secret" not in HttpCall("GET", "https://app.example/health?token=secret").render()


def test_action_plan_reverse_uses_the_recorded_undo_else_each_actions_reverse() -> None:
    recorded = ActionPlan("schema", (RunSql("CREATE TABLE t (a int)"),), (RunSql("DROP TABLE t"),))
    assert recorded.reverse().do == (RunSql("DROP TABLE t"),)
    derived = ActionPlan("backfill", (CopyRange("s", "t", ("id",)), WriteLock(("s",), 1.0)))
    assert derived.reverse().do == (DeleteRows("t", "the table was empty when the backfill began"),)
    with pytest.raises(ValueError, match="no automatic reverse"):
        ActionPlan("schema", (RunSql("UPDATE t SET a = 1"),)).reverse()
    with pytest.raises(ValueError, match="irreversible"):
        ActionPlan("schema", (RunSql("DROP TABLE t"),), irreversible=True).reverse()


def test_an_unknown_recorded_action_is_kept_as_a_note() -> None:
    assert isinstance(Action.from_json({"type": "teleport", "to": "mars"}), Note)


PLAN = make_plan("""
  - id: s
    up: CREATE TABLE t (a int); CREATE INDEX i ON t (a)
    down: DROP TABLE t
    verify: SELECT 1
  - id: b
    kind: backfill
    source: {table: users}
    target: users_v2
    key: id
    append_only: true
  - id: v
    kind: verify
    source: {table: users}
    target: {table: users_v2}
    checks: [row_counts]
  - id: h
    kind: health_gate
    metrics: [{name: error_rate, sql: SELECT 0}]
  - id: dw
    kind: dual_write
    source: {table: users}
    target: users_v2
    key: id
  - id: c
    kind: cutover
    dual_write: dw
    switch_reads: {view: {name: users_live}}
""")


@pytest.mark.parametrize("step", PLAN.steps, ids=lambda s: s.kind)
def test_each_kinds_actions_round_trip_and_render(step) -> None:
    actions = kind_of(step).plan_actions(step, dialect_named("sqlite"))
    assert actions.kind == step.kind
    assert ActionPlan.from_json(actions.to_json()) == actions
    assert actions.render()


def test_the_plan_covers_every_registered_kind() -> None:
    assert {s.kind for s in PLAN.steps} == set(registered_kinds())
