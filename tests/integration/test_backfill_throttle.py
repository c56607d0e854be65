"""Backfill throttle rules on real databases: pause with backoff while a metric is over its max, give up
after a while without losing a committed batch, and fail clearly when the metric cannot be read.

The metric is a control table on the source (``throttle_metric``) that the test sets; sleeping is faked
where the test only needs to count pauses, and real (tiny) where the wall clock matters.
"""

from __future__ import annotations

import logging

import pytest
from backfill_it_support import (
    backfill_plan,
    checkpoint_rows,
    count,
    fetch,
    history,
    insert_rows,
    open_pair,
    run_sql,
    runner_for,
    server_urls,
)

from airflow_migrate_provider.errors import BackfillFailed

ROWS = 2_000
STEP = "copy_users"
LAG_RULE = {"name": "lag", "query": "SELECT v FROM throttle_metric", "max": 5, "pause_seconds": 0.01,
            "max_pause_seconds": 0.05}


@pytest.fixture(params=["pg-pg", "sqlite-same", "mariadb-mariadb"])
def pair(request, tmp_path):
    with open_pair(request.param, tmp_path=tmp_path, **server_urls(request, request.param)) as p:
        yield p


@pytest.fixture
def seeded(pair):
    """users (2,000 rows) and throttle_metric (v = 10, over the max) on the source; empty users_v2."""
    run_sql(pair.source,
            "CREATE TABLE users (id INTEGER PRIMARY KEY, name VARCHAR(40), updated_at VARCHAR(30) NOT NULL)",
            "CREATE TABLE throttle_metric (v INTEGER, name VARCHAR(20))",
            "INSERT INTO throttle_metric VALUES (10, 'lag')")
    insert_rows(pair.source, "INSERT INTO users VALUES (:i, :n, '2024-01-01 00:00:00')",
                [{"i": i, "n": f"user {i} ⏳"} for i in range(1, ROWS + 1)])
    run_sql(pair.target, "CREATE TABLE users_v2 (id INTEGER PRIMARY KEY, name VARCHAR(40), updated_at VARCHAR(30))")
    return pair


def plan_with(*rules, **step):
    return backfill_plan({"id": STEP, "source": {"table": "users"}, "target": "users_v2", "key": "id",
                          "watermark": "updated_at", "chunks": 2, "batch": {"rows": 500, "seconds": None},
                          "throttle": list(rules), **step})


def copied_ids(pair) -> list[int]:
    return [i for (i,) in fetch(pair.target, "SELECT id FROM users_v2 ORDER BY id")]


def test_copy_pauses_with_backoff_while_over_max_then_completes(seeded, caplog):
    pair = seeded
    caplog.set_level(logging.INFO, logger="airflow_migrate_provider")
    pct_rule = {"name": "pct", "query": "SELECT count(*) FROM throttle_metric WHERE name LIKE 'la%'", "max": 1}
    plan = plan_with(LAG_RULE, pct_rule)
    ledger, _, runner = runner_for(pair, plan)
    pauses: list[float] = []

    def fake_sleep(seconds: float) -> None:
        pauses.append(seconds)
        assert count(pair.target, "users_v2") == 0  # nothing is copied while paused
        if len(pauses) == 5:
            run_sql(pair.source, "UPDATE throttle_metric SET v = 0")

    bf = runner.backfill(plan.step(STEP), sleep=fake_sleep)
    result = bf.run()

    assert result.outcome == "applied"
    assert pauses == [0.01, 0.02, 0.04, 0.05, 0.05]  # doubling, capped at max_pause_seconds
    assert bf.throttle.pauses == 5
    assert copied_ids(pair) == list(range(1, ROWS + 1))
    assert history(ledger, STEP) == [("apply", "applied")]

    messages = [r.getMessage() for r in caplog.records]
    pausing = [m for m in messages if "throttle 'lag'" in m and "pausing" in m]
    assert len(pausing) == 5 and "10 > max 5" in pausing[0]
    assert any("back under every max" in m for m in messages)
    assert not any("throttle 'pct'" in m for m in messages)  # its query (with a %) ran and stayed under max
    progress = [m for m in messages if "phase 1 chunk" in m and "rows/s" in m and " batch " in m]
    assert len(progress) == 4  # 2 chunks of 2 batches: the first and the last batch of a chunk are always logged
    assert any("ETA" in m and "(50.0%)" in m and "500/1,000" in m for m in progress)
    assert any("(100.0%)" in m for m in progress)


def test_throttle_is_checked_before_every_batch(seeded):
    """A metric that climbs during the copy pauses it before the next batch, not at the next task."""
    pair = seeded
    run_sql(pair.target, "CREATE TABLE release_valve (x INTEGER)")
    rule = {"name": "backlog", "database": "target", "max": 1200, "pause_seconds": 0.01,
            "query": "SELECT (SELECT count(*) FROM users_v2) - (SELECT coalesce(max(x), 0) FROM release_valve)"}
    plan = plan_with(rule)
    _, _, runner = runner_for(pair, plan)
    seen: list[int] = []

    def fake_sleep(seconds: float) -> None:
        seen.append(count(pair.target, "users_v2"))
        if len(seen) == 3:  # the backlog drains
            run_sql(pair.target, f"INSERT INTO release_valve VALUES ({ROWS})")

    runner.backfill(plan.step(STEP), sleep=fake_sleep).run()

    assert seen == [1500, 1500, 1500]  # paused as soon as 3 batches had pushed it over 1,200
    assert copied_ids(pair) == list(range(1, ROWS + 1))


def test_give_up_after_seconds_fails_transient_and_keeps_every_committed_batch(seeded):
    pair = seeded
    run_sql(pair.source, "UPDATE throttle_metric SET v = 0")
    rule = {"name": "backlog", "query": "SELECT count(*) FROM users_v2", "database": "target", "max": 1200,
            "pause_seconds": 0.01, "max_pause_seconds": 0.02, "give_up_after_seconds": 0.05}
    plan = plan_with(rule)
    ledger, _, runner = runner_for(pair, plan)

    with pytest.raises(BackfillFailed) as caught:
        runner.apply_through(plan, STEP)

    err = caught.value
    assert err.transient is True
    assert "throttle 'backlog'" in str(err) and "give_up_after_seconds 0.05" in str(err)
    assert "1500 > 1200" in str(err)
    copied = count(pair.target, "users_v2")
    chunks = [c for c in checkpoint_rows(pair.target, STEP) if c["chunk"] >= 0]
    assert copied == sum(c["rows_copied"] for c in chunks) == 1500  # 3 committed batches, none half-done
    assert copied_ids(pair) == list(range(1, 1501))
    assert history(ledger, STEP) == [("apply", "running")]  # in progress, and rollback would undo it
    assert STEP in ledger.applied()

    # once the load is lower (here: the rule is retuned; tuning is not part of the step's checksum) a new
    # try resumes from the checkpoint and finishes
    relaxed = plan_with({**rule, "max": 10 * ROWS})
    _, _, retry = runner_for(pair, relaxed, run_id="run1")
    results = retry.apply_through(relaxed, STEP)
    assert [r.outcome for r in results] == ["applied"]
    assert copied_ids(pair) == list(range(1, ROWS + 1))
    assert history(ledger, STEP) == [("apply", "applied")]


def test_throttle_query_that_fails_names_the_rule(seeded):
    pair = seeded
    plan = plan_with({**LAG_RULE, "query": "SELECT v FROM no_such_metric_table"})
    _, _, runner = runner_for(pair, plan)
    bf = runner.backfill(plan.step(STEP), sleep=lambda s: pytest.fail("must not pause on a broken query"))
    chunks = bf.start()

    with pytest.raises(BackfillFailed) as caught:
        bf.copy_chunk(chunks[0]["chunk"])

    assert "throttle 'lag' query failed on the source" in str(caught.value)
    assert "no_such_metric_table" in str(caught.value)
    assert caught.value.transient is False
    assert count(pair.target, "users_v2") == 0


def test_throttle_query_that_returns_no_number_names_the_rule(seeded):
    pair = seeded
    plan = plan_with({**LAG_RULE, "query": "SELECT name FROM throttle_metric"})
    _, _, runner = runner_for(pair, plan)

    with pytest.raises(BackfillFailed, match=r"throttle 'lag' query returned 'lag', not a number"):
        runner.apply_through(plan, STEP)
    assert count(pair.target, "users_v2") == 0
