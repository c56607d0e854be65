"""The cutover window: is it open now, long enough to finish, and when does the next one open."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from airflow_migrate_provider.plan.steps.cutover import CutoverWindow

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


@dataclass(frozen=True)
class WindowCheck:
    """``ok``: start the cutover now. Otherwise ``next_start`` (UTC) is when to look again, ``why`` says why."""

    ok: bool
    why: str
    next_start: datetime | None = None
    closes: datetime | None = None


def _openings(window: CutoverWindow, around: datetime) -> list[tuple[datetime, datetime]]:
    zone = ZoneInfo(window.timezone)
    local = around.astimezone(zone)
    start_t, end_t = time.fromisoformat(window.start), time.fromisoformat(window.end)
    found = []
    for offset in range(-1, 9):
        day = (local + timedelta(days=offset)).date()
        if _DAYS[day.weekday()] not in window.days:
            continue
        start = datetime.combine(day, start_t, zone)
        end = datetime.combine(day + timedelta(days=1) if end_t <= start_t else day, end_t, zone)
        found.append((start, end))
    return found


def check_window(window: CutoverWindow, now: datetime, needs_seconds: float) -> WindowCheck:
    """Whether a cutover needing ``needs_seconds`` can start at ``now`` (aware) and finish inside the window."""
    openings = _openings(window, now)
    for start, end in openings:
        if start <= now < end:
            if now + timedelta(seconds=needs_seconds) <= end:
                return WindowCheck(True, f"inside the window until {end:%Y-%m-%d %H:%M %Z}", closes=end)
            later = [s for s, _ in openings if s > now]
            return WindowCheck(False, f"the window closes at {end:%H:%M %Z}, before a cutover needing about "
                               f"{needs_seconds:.0f} s could finish", min(later) if later else None, end)
    later = [s for s, _ in openings if s > now]
    nxt = min(later) if later else None
    return WindowCheck(False, "outside the cutover window" + (f"; next opens {nxt:%Y-%m-%d %H:%M %Z}" if nxt else ""),
                       nxt)
