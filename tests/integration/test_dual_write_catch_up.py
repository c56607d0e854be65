"""The catch-up trigger, run the way the triggerer runs it (its async ``run()`` in an event loop): it replays a
dual_write step's backlog round by round, logs the lag, and fires once caught up — without blocking the loop."""

from __future__ import annotations

import asyncio
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import create_engine

from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.kinds import kind_named
from airflow_migrate_provider.core.kinds.dual_write import forward_replayer, history_copy
from airflow_migrate_provider.core.ledger import Ledger
from airflow_migrate_provider.triggers.catch_up import CatchUpTrigger
from tests.integration.dual_write_support import assert_same, create_same_layout, seed_users
from tests.integration.migrate_it_support import make_plan, who

pytestmark = pytest.mark.timeout(120)

STEPS = """
  - id: sync_users
    kind: dual_write
    source: {table: users}
    target: users_v2
    key: id
    replay: {batch_changes: 100}
    catch_up: {max_lag_changes: 0, max_lag_seconds: 60, poll_seconds: 0.2, timeout_minutes: 1}
"""


@pytest.fixture(params=["sqlite", "mariadb"])
def captured(request: pytest.FixtureRequest, tmp_path, monkeypatch) -> Any:
    """An app database (SQLite, MariaDB) under dual write with a backlog of 1,500 captured changes; connection
    app_db."""
    if request.param == "mariadb":
        db = request.getfixturevalue("mariadb_database")
        url, airflow_uri = db.sqlalchemy_url, db.airflow_uri
    else:
        url = airflow_uri = f"sqlite:///{(tmp_path / 'app.sqlite').resolve()}"
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", airflow_uri)
    engine = create_engine(url)
    dialect_for(engine)
    seed_users(engine)
    create_same_layout(engine)
    plan = make_plan(STEPS, plan_id="catch_up_plan")
    ledger = Ledger(engine, plan.id)
    ledger.ensure()
    ctx = RunContext(engine, dialect_for(engine), ledger, who("r1"), plan=plan)
    step = plan.steps[0]
    kind_named("dual_write").capture(ctx, step)
    history_copy(ctx, step).copy_all()
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE users SET theme = 'changed' WHERE id <= 1000")
        conn.exec_driver_sql("DELETE FROM users WHERE id > 1500")
    yield plan, ctx, step, engine
    engine.dispose()


async def _first_event_and_ticks(trigger: CatchUpTrigger) -> tuple[dict[str, Any], float, float]:
    """The trigger's first event, how long it took, and the longest the event loop went without running."""
    import time

    beats: list[float] = []

    async def ticker() -> None:
        while True:
            beats.append(time.monotonic())
            await asyncio.sleep(0.01)

    beat = asyncio.create_task(ticker())
    started = time.monotonic()
    events = trigger.run()
    event = await events.__anext__()
    took = time.monotonic() - started
    await events.aclose()
    beat.cancel()
    gaps = [b - a for a, b in pairwise(beats)]
    return event.payload, took, max(gaps, default=took)


def trigger_for(plan: Any, timeout_s: float = 60.0) -> CatchUpTrigger:
    return CatchUpTrigger(plan=plan.model_dump(mode="json"), step_id="sync_users", target_conn_id="app_db",
                          who=["d", "r1", 1], timeout_seconds=timeout_s)


def test_catch_up_trigger_replays_the_backlog_without_blocking_the_event_loop(captured) -> None:
    plan, ctx, step, engine = captured
    assert forward_replayer(ctx, step).lag()[0] == 1_500

    payload, took, longest_pause = asyncio.run(_first_event_and_ticks(trigger_for(plan)))

    assert payload["status"] == "caught_up", payload
    assert payload["replayed"] == 1_500 and payload["lag_changes"] == 0
    # the loop kept running while the replay worked in a thread: never stalled for most of the replay
    assert longest_pause < max(0.25, took / 2), (longest_pause, took)
    assert_same(engine, "SELECT id, email, theme, notifications FROM users", engine,
                "SELECT id, email, theme, notifications FROM users_v2")


def test_catch_up_trigger_stops_when_another_run_holds_the_lock(captured) -> None:
    plan, ctx, _step, _engine = captured
    ctx.ledger.acquire_lock(who("someone_else"), 600)

    payload, _, _ = asyncio.run(_first_event_and_ticks(trigger_for(plan)))

    assert payload["status"] == "error"
    assert "someone_else" in payload["message"]


def test_throttle_trigger_polls_mariadb_through_aiomysql(mariadb_database, monkeypatch) -> None:
    """The triggerer's async access to MariaDB (``MysqlDialect.async_url``: aiomysql)."""
    from airflow_migrate_provider.triggers.throttle import ThrottleTrigger

    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", mariadb_database.airflow_uri)
    trigger = ThrottleTrigger("app_db", "lag", "SELECT 3 % 2 + COUNT(*) FROM information_schema.schemata "
                              "WHERE schema_name = DATABASE()", max_value=2.0, poll_seconds=0.1)

    async def first() -> dict[str, Any]:
        events = trigger.run()
        event = await events.__anext__()
        await events.aclose()
        return event.payload

    payload = asyncio.run(first())
    assert payload["rule"] == "lag" and payload["value"] == 2.0
