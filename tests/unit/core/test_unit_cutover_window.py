"""The cutover window: open or not, long enough to finish, and when the next one opens (time zone aware)."""

from __future__ import annotations

from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from airflow_migrate_provider.core.capture.window import check_window
from airflow_migrate_provider.plan.steps.cutover import CutoverWindow

BERLIN = ZoneInfo("Europe/Berlin")
SUNDAY_NIGHT = CutoverWindow(days=["sun"], start="02:00", end="06:00", timezone="Europe/Berlin")


def at(*args: int) -> datetime:
    return datetime(*args, tzinfo=BERLIN).astimezone(timezone.utc)


def test_inside_the_window_with_time_to_finish() -> None:
    found = check_window(SUNDAY_NIGHT, at(2026, 12, 6, 3, 0), needs_seconds=600)  # Sunday 03:00 Berlin
    assert found.ok and found.closes == datetime(2026, 12, 6, 6, 0, tzinfo=BERLIN)


def test_too_close_to_the_end_waits_for_next_sunday() -> None:
    found = check_window(SUNDAY_NIGHT, at(2026, 12, 6, 5, 55), needs_seconds=600)
    assert not found.ok and "closes at 06:00" in found.why
    assert found.next_start == datetime(2026, 12, 13, 2, 0, tzinfo=BERLIN)


def test_outside_the_window_names_the_next_opening_in_its_time_zone() -> None:
    found = check_window(SUNDAY_NIGHT, at(2026, 12, 2, 14, 0), needs_seconds=60)  # a Wednesday
    assert not found.ok
    assert found.next_start == datetime(2026, 12, 6, 2, 0, tzinfo=BERLIN)
    assert found.next_start.astimezone(timezone.utc).hour == 1  # 02:00 CET is 01:00 UTC


def test_a_window_over_midnight_is_open_after_midnight() -> None:
    nightly = CutoverWindow(start="22:00", end="02:00", timezone="UTC")
    assert check_window(nightly, datetime(2026, 12, 3, 1, 0, tzinfo=timezone.utc), 60).ok
    assert check_window(nightly, datetime(2026, 12, 3, 23, 0, tzinfo=timezone.utc), 60).ok
    assert not check_window(nightly, datetime(2026, 12, 3, 12, 0, tzinfo=timezone.utc), 60).ok


def test_summer_time_is_honoured() -> None:
    summer = check_window(SUNDAY_NIGHT, at(2026, 7, 1, 12, 0), 60).next_start  # a Wednesday in July
    assert summer == datetime(2026, 7, 5, 2, 0, tzinfo=BERLIN)
    assert summer.astimezone(timezone.utc).hour == 0  # 02:00 CEST is 00:00 UTC


@pytest.mark.parametrize(("field", "value", "message"), [
    ("start", "25:00", "not a time of day"), ("timezone", "Mars/Olympus", "not a known time zone"),
    ("end", "02:00", "empty")])
def test_bad_windows_are_plan_errors(field: str, value: str, message: str) -> None:
    data = {"days": ["sun"], "start": "02:00", "end": "06:00", "timezone": "UTC", field: value}
    with pytest.raises(ValidationError, match=message):
        CutoverWindow.model_validate(data)
