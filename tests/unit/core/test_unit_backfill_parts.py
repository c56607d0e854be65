"""Backfill pieces that need no database: checkpoint value codec, batch sizing, watermark lag, progress."""

from __future__ import annotations

import logging
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from airflow_migrate_provider.core.backfill.batching import BatchSizer, lagged
from airflow_migrate_provider.core.backfill.progress import Progress
from airflow_migrate_provider.core.backfill.state import Chunk, PhaseState, dumps, loads
from airflow_migrate_provider.plan.model import BackfillStep


def step(**changes) -> BackfillStep:
    return BackfillStep.model_validate({"kind": "backfill", "id": "copy", "source": {"table": "t"},
                                        "target": "t2", "key": "id", "append_only": True, **changes})


@pytest.mark.parametrize("key", [
    (1,), (2**62,), ("ß-ünïcode",), (Decimal("12.50"),), (datetime(2026, 1, 2, 3, 4, 5, 6, timezone.utc),),
    (date(2026, 1, 2),), (uuid.UUID(int=7),), (b"\x00\xff",), (7, "tenant", datetime(2026, 1, 1)),
])
def test_checkpoint_keys_round_trip_with_their_types(key) -> None:
    back = loads(dumps(key))
    assert back == key
    assert [type(v) for v in back] == [type(v) for v in key]  # 12.50 stays a Decimal with its scale
    assert str(back[0]) == str(key[0])


def test_phase_state_round_trips() -> None:
    cutoff = datetime(2026, 1, 1, tzinfo=timezone.utc)
    state = PhaseState(high_water=(1000,), cutoff=cutoff, recent={"high_water": (1200,), "position": (1100,),
                                                                   "done": False, "rows": 3})
    assert PhaseState.from_json(state.to_json()) == state


def test_chunk_label_and_resume_point() -> None:
    chunk = Chunk(1, (250,), (500,), position=None)
    assert chunk.label(4) == "chunk 2/4 (250, 500]"
    assert chunk.resume_after == (250,)
    chunk.position = (300,)
    assert chunk.resume_after == (300,)
    assert Chunk(0, None, (9, "x")).label(1) == "chunk 1/1 (start, (9, 'x')]"


def test_integer_batches_follow_the_observed_density() -> None:
    chunk = Chunk(0, (0,), (1_000_000,), rows_total=100_000)  # one row every 10 keys
    sizer = BatchSizer(step(batch={"rows": 1000, "seconds": None}), chunk, integer_key=True)
    upper, last = sizer.next_upper((0,), chunk.hi, lambda n: None)
    assert (upper, last) == ((10_000,), False)  # 1,000 rows at 1 row per 10 keys
    sizer.observe((0,), upper, rows=5_000, seconds=0.1)  # denser than thought: 1 row per 2 keys
    assert sizer.next_upper((10_000,), chunk.hi, lambda n: None) == ((12_000,), False)
    assert sizer.next_upper((999_999,), chunk.hi, lambda n: None) == ((1_000_000,), True)


def test_fixed_row_batches_never_exceed_rows_on_skewed_keys() -> None:
    chunk = Chunk(0, (0,), (1_000_000,), rows_total=1_000)
    sizer = BatchSizer(step(batch={"rows": 100, "seconds": None}), chunk, integer_key=True)
    # the density guess says 100 rows span 100,000 keys, but the source says the 100th key is 150
    assert sizer.next_upper((0,), chunk.hi, lambda n: (150,)) == ((150,), False)


def test_timed_batches_grow_toward_the_target_duration_but_not_past_max_rows() -> None:
    chunk = Chunk(0, None, ("zzz",), rows_total=10_000_000)
    sizer = BatchSizer(step(batch={"rows": 10_000, "seconds": 2.0, "max_rows": 150_000}), chunk, integer_key=False)
    sizer.observe(None, ("a",), rows=10_000, seconds=0.1)  # 100k rows/s: 2 s would be 200k rows
    assert sizer.rows == 40_000  # at most 4x per batch
    sizer.observe(("a",), ("b",), rows=40_000, seconds=0.4)
    assert sizer.rows == 150_000  # capped by max_rows
    asked = []
    sizer.next_upper(("b",), chunk.hi, lambda n: asked.append(n) or None)
    assert asked == [150_000]


def test_non_integer_keys_take_bounds_from_the_source() -> None:
    chunk = Chunk(0, None, ("m",))
    sizer = BatchSizer(step(batch={"rows": 500, "seconds": None}), chunk, integer_key=False)
    assert sizer.next_upper(None, chunk.hi, lambda n: ("c",)) == (("c",), False)
    assert sizer.next_upper(("c",), chunk.hi, lambda n: None) == (("m",), True)  # past the end: the last batch
    assert sizer.next_upper(("c",), chunk.hi, lambda n: ("m",)) == (("m",), True)


def test_watermark_lag_applies_to_timestamps_only() -> None:
    at = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    assert lagged(at, 60) == at - timedelta(minutes=1)
    assert lagged("2026-01-01 12:00:00", 60) == "2026-01-01 11:59:00"  # SQLite text timestamps keep their form
    assert lagged("2026-01-01T12:00:00", 60) == "2026-01-01T11:59:00"
    assert lagged(42, 60) == 42  # a version counter: no lag
    assert lagged(None, 60) is None
    assert lagged(at, 0) == at


def test_progress_lines_carry_counts_rate_and_eta(caplog) -> None:
    log = logging.getLogger("airflow_migrate_provider.test_progress")
    progress = Progress("phase 1 chunk 1/2", total=1_000, done=200, log=log)
    with caplog.at_level(logging.INFO, logger=log.name):
        progress.batch(300, 0.5)
    line = caplog.records[-1].getMessage()
    assert "batch 1 +300 rows" in line and "500/1,000 (50.0%)" in line and "rows/s" in line and "ETA" in line
    assert "300 rows in 1 batches" in progress.summary()


def test_progress_lines_are_rate_limited_for_small_batches(caplog) -> None:
    log = logging.getLogger("airflow_migrate_provider.test_progress")
    progress = Progress("phase 2", total=0, done=0, log=log, every_s=3600)
    with caplog.at_level(logging.INFO, logger=log.name):
        for _ in range(50):
            progress.batch(10, 0.001)
    assert len(caplog.records) == 1  # the first batch; the rest within the interval are counted, not logged
    assert "500 rows in 50 batches" in progress.summary()
