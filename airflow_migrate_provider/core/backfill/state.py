"""Backfill checkpoints: a ledger table in the target, written in the same transaction as the rows.

One row per (plan, step, chunk). Chunk ``-1`` holds the step's phase state: the high-water mark and
watermark cutoff taken when phase 1 began, and phase 2's own bounds and position. A batch commits its
rows and its checkpoint together, so after a crash the copy resumes exactly after the last committed batch.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.ledger import checkpoints, utcnow

STEP_ROW = -1



def encode_value(value: Any) -> Any:
    """A key or watermark value as JSON, keeping its Python type (dates, decimals, bytes...)."""
    if isinstance(value, bool) or value is None or isinstance(value, (int, float, str)):
        return value
    if isinstance(value, datetime):
        return {"$t": "datetime", "v": value.isoformat()}
    if isinstance(value, date):
        return {"$t": "date", "v": value.isoformat()}
    if isinstance(value, time):
        return {"$t": "time", "v": value.isoformat()}
    if isinstance(value, Decimal):
        return {"$t": "decimal", "v": str(value)}
    if isinstance(value, UUID):
        return {"$t": "uuid", "v": str(value)}
    if isinstance(value, (bytes, memoryview)):
        return {"$t": "bytes", "v": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, timedelta):
        return {"$t": "timedelta", "v": value.total_seconds()}
    if isinstance(value, (tuple, list)):
        return [encode_value(v) for v in value]
    raise TypeError(f"cannot checkpoint a key value of type {type(value).__name__}")


def decode_value(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(decode_value(v) for v in value)
    if isinstance(value, dict):
        kind, raw = value["$t"], value["v"]
        return {
            "datetime": datetime.fromisoformat, "date": date.fromisoformat, "time": time.fromisoformat,
            "decimal": Decimal, "uuid": UUID, "bytes": base64.b64decode,
            "timedelta": lambda s: timedelta(seconds=s),
        }[kind](raw)
    return value


def dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(encode_value(value))


def loads(value: str | None) -> Any:
    return None if value is None else decode_value(json.loads(value))


@dataclass
class Chunk:
    """A key range of phase 1 and how far it got. Keys are tuples (one value per key column)."""

    index: int
    lo: tuple[Any, ...] | None
    hi: tuple[Any, ...] | None
    position: tuple[Any, ...] | None = None
    rows_total: int = 0
    rows_copied: int = 0
    status: str = "pending"

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def resume_after(self) -> tuple[Any, ...] | None:
        return self.position if self.position is not None else self.lo

    def label(self, of: int) -> str:
        lo = "start" if self.lo is None else _show(self.lo)
        return f"chunk {self.index + 1}/{of} ({lo}, {_show(self.hi)}]"


def _show(key: tuple[Any, ...] | None) -> str:
    if key is None:
        return "-"
    return str(key[0]) if len(key) == 1 else str(key)


@dataclass
class PhaseState:
    """The step-level state: bounds taken when each phase began."""

    high_water: tuple[Any, ...] | None = None  # max key when phase 1 began
    cutoff: Any = None  # max watermark when phase 1 began
    recent: dict[str, Any] = field(default_factory=dict)  # phase 2: high_water, cutoff, position, done

    def to_json(self) -> str:
        return json.dumps({"high_water": encode_value(self.high_water), "cutoff": encode_value(self.cutoff),
                           "recent": {k: encode_value(v) for k, v in self.recent.items()}})

    @classmethod
    def from_json(cls, raw: str | None) -> PhaseState:
        data = json.loads(raw) if raw else {}
        return cls(decode_value(data.get("high_water")), decode_value(data.get("cutoff")),
                   {k: decode_value(v) for k, v in (data.get("recent") or {}).items()})


class Checkpoints:
    """Reads and writes one backfill step's checkpoint rows."""

    def __init__(self, plan_id: str, step_id: str):
        self.plan_id, self.step_id = plan_id, step_id

    def _mine(self) -> Any:
        return (checkpoints.c.plan_id == self.plan_id) & (checkpoints.c.step_id == self.step_id)

    def create(self, conn: Connection, phase: PhaseState, chunks: list[Chunk], run_id: str) -> None:
        now = utcnow()
        conn.execute(delete(checkpoints).where(self._mine()))
        rows = [dict(chunk=STEP_ROW, status="pending", phase_state=phase.to_json())]
        rows += [dict(chunk=c.index, lo=dumps(c.lo), hi=dumps(c.hi), rows_total=c.rows_total,
                      status="done" if c.hi is None else "pending") for c in chunks]
        conn.execute(insert(checkpoints), [
            {"plan_id": self.plan_id, "step_id": self.step_id, "run_id": run_id, "updated_at": now,
             "lo": None, "hi": None, "position": None, "rows_total": 0, "rows_copied": 0,
             "phase_state": None, **row} for row in rows
        ])

    def exists(self, conn: Connection) -> bool:
        return conn.execute(select(checkpoints.c.chunk).where(self._mine(), checkpoints.c.chunk == STEP_ROW)
                            ).first() is not None

    def phase(self, conn: Connection) -> PhaseState:
        raw = conn.execute(select(checkpoints.c.phase_state)
                           .where(self._mine(), checkpoints.c.chunk == STEP_ROW)).scalar()
        return PhaseState.from_json(raw)

    def save_phase(self, conn: Connection, phase: PhaseState) -> None:
        conn.execute(update(checkpoints).where(self._mine(), checkpoints.c.chunk == STEP_ROW)
                     .values(phase_state=phase.to_json(), updated_at=utcnow()))

    def chunks(self, conn: Connection) -> list[Chunk]:
        rows = conn.execute(select(checkpoints).where(self._mine(), checkpoints.c.chunk >= 0)
                            .order_by(checkpoints.c.chunk)).all()
        return [Chunk(r.chunk, loads(r.lo), loads(r.hi), loads(r.position), r.rows_total, r.rows_copied,
                      r.status) for r in rows]

    def advance(self, conn: Connection, chunk: int, position: tuple[Any, ...], rows: int, done: bool) -> None:
        """Record a committed batch: call inside the batch's own target transaction."""
        conn.execute(update(checkpoints).where(self._mine(), checkpoints.c.chunk == chunk).values(
            position=dumps(position), rows_copied=checkpoints.c.rows_copied + rows,
            status="done" if done else "pending", updated_at=utcnow()))

    def claim(self, conn: Connection, run_id: str) -> None:
        """The run ``run_id`` carries on the copy (the run that began it died): its chunks are now this run's."""
        conn.execute(update(checkpoints).where(self._mine()).values(run_id=run_id, updated_at=utcnow()))

    def clear(self, conn: Connection) -> None:
        conn.execute(delete(checkpoints).where(self._mine()))
