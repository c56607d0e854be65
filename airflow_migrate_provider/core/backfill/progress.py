"""Progress lines for analysts reading the task log: rows done / total, rate and ETA, one per batch."""

from __future__ import annotations

import logging
import time


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class Progress:
    """Counts rows copied by this task try; logs a line per batch, at most one every ``every_s`` seconds
    (the first batch and the one reaching the total always), so small batches don't flood the task log."""

    def __init__(self, label: str, total: int, done: int, log: logging.Logger, every_s: float = 2.0):
        self.label, self.total, self.done, self.log = label, total, done, log
        self.started = time.monotonic()
        self.copied = 0  # by this try
        self.batches = 0
        self.every_s = every_s
        self._last_line = float("-inf")

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        return self.copied / self.elapsed if self.elapsed > 0 else 0.0

    def batch(self, rows: int, seconds: float) -> None:
        self.done += rows
        self.copied += rows
        self.batches += 1
        total = max(self.total, self.done)
        now = time.monotonic()
        finished = self.total > 0 and self.done >= self.total
        if self.batches > 1 and not finished and now - self._last_line < self.every_s:
            return
        self._last_line = now
        pct = f" ({100 * self.done / total:.1f}%)" if total else ""
        eta = f", ETA {_duration((total - self.done) / self.rate)}" if self.rate > 0 and total > self.done else ""
        self.log.info("%s: batch %d +%s rows in %.2f s; %s/%s%s, %s rows/s%s", self.label, self.batches,
                      f"{rows:,}", seconds, f"{self.done:,}", f"{total:,}", pct, f"{self.rate:,.0f}", eta)

    def summary(self) -> str:
        return (f"{self.label}: {self.copied:,} rows in {self.batches} batches, {_duration(self.elapsed)} "
                f"({self.rate:,.0f} rows/s); {self.done:,} of {max(self.total, self.done):,} done")
