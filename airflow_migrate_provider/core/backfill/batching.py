"""The small parts of a backfill run: a phase's report, batch sizing by time or rows, watermark lag."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from airflow_migrate_provider.core.backfill.copier import Key
from airflow_migrate_provider.core.backfill.state import Chunk
from airflow_migrate_provider.plan.model import BackfillStep

MIN_BATCH_ROWS = 1_000


@dataclass
class PhaseReport:
    """What one task did, for its log summary and XCom."""

    phase: str
    rows: int = 0
    batches: int = 0
    seconds: float = 0.0
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"phase": self.phase, "rows": self.rows, "batches": self.batches,
                "seconds": round(self.seconds, 3), **self.detail}


def lagged(value: Any, seconds: int) -> Any:
    """A timestamp watermark moved back by the lag; other watermark types unchanged."""
    if value is None or not seconds:
        return value
    if isinstance(value, datetime):
        return value - timedelta(seconds=seconds)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return value
        shifted = parsed - timedelta(seconds=seconds)
        return shifted.isoformat(sep="T" if "T" in value else " ")
    return value


def pairwise_bounds(bounds: list[int]) -> list[tuple[int, int]]:
    return [(bounds[i], bounds[i + 1]) for i in range(len(bounds) - 1)]


class BatchSizer:
    """Chooses each batch's upper key so batches take about ``batch.seconds`` (or hold ``batch.rows``).

    Integer keys: the next bound is key arithmetic (no query), sized from the observed rows per key unit.
    Other keys: the bound is the n-th next key, read from the source's key index.
    """

    def __init__(self, step: BackfillStep, chunk: Chunk, integer_key: bool):
        self.batch, self.integer_key = step.batch, integer_key
        self.rows = step.batch.rows
        lo = chunk.lo[0] if chunk.lo is not None else None
        hi = chunk.hi[0] if chunk.hi is not None else None
        self.density = 1.0
        if integer_key and lo is not None and hi is not None and hi > lo and chunk.rows_total:
            self.density = max(chunk.rows_total / (hi - lo), 1e-9)

    def next_upper(self, position: Key | None, hi: Key, nth_key: Any) -> tuple[Key, bool]:
        """(upper key of the next batch, whether it is the chunk's last batch)."""
        if self.integer_key and position is not None:
            span = max(1, int(self.rows / self.density))
            upper = min(hi[0], position[0] + span)
            if self.batch.seconds is None:  # `rows` is a hard ceiling: skewed keys must not overfill a batch
                nth = nth_key(self.rows)
                if nth is not None and nth[0] < upper:
                    upper = nth[0]
            return (upper,), upper >= hi[0]
        upper = nth_key(self.rows)
        return (hi, True) if upper is None or upper == hi else (upper, False)

    def observe(self, lower: Key | None, upper: Key, rows: int, seconds: float) -> None:
        if self.integer_key and lower is not None and upper[0] > lower[0]:
            if rows:
                self.density = rows / (upper[0] - lower[0])
            else:
                self.density /= 4  # an empty stretch of keys: take bigger steps
        if self.batch.seconds is None or rows == 0 or seconds <= 0:
            return
        wanted = rows / seconds * self.batch.seconds
        # move at most 4x per batch, so one slow batch (a checkpoint fsync, a pause) doesn't swing sizes
        self.rows = int(min(self.batch.max_rows, max(MIN_BATCH_ROWS, min(wanted, self.rows * 4),
                                                     self.rows / 4)))
