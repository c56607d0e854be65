"""The final sync's row counts as of its write lock, counted after the lock where the database allows it.

Counting two whole tables takes seconds on large ones; writers should not wait for that. So, where a side's
database keeps snapshots (``Dialect.snapshot_reads``), a snapshot is taken on that side while the lock is held
and the delta is committed, and the rows are counted in it after the lock is released: the count is the one
the lock would have seen. A side without snapshots is counted under the lock, as is everything when source and
target share one connection (SQLite: the delta is not committed until the lock ends).
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass

from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.dialects import Dialect

UNDER_LOCK = "under lock, after the final sync"
AT_SNAPSHOT = "at the lock's snapshot, counted after releasing it"


@dataclass(frozen=True)
class CountSide:
    """One side of the comparison: its name, database, and how to count its rows on a connection."""

    name: str
    engine: Engine
    dialect: Dialect
    count: Callable[[Connection | None], int]  # None: on a connection of its own


class LockCounts:
    """Create before the lock, call :meth:`take` with the lock held and the delta committed, :meth:`finish`
    after the lock. Snapshot connections are opened on construction (not inside the lock window) and live in
    ``stack``, which must stay open until :meth:`finish` returns."""

    def __init__(self, sides: tuple[CountSide, CountSide], stack: ExitStack, *, snapshots: bool = True):
        self.sides, self._stack = sides, stack
        self._readers = [self._reader(side) if snapshots else None for side in sides]
        self._at_lock: list[int | Connection] = []

    def _reader(self, side: CountSide) -> AbstractContextManager[Connection] | None:
        if not side.dialect.snapshot_reads:
            return None
        return side.dialect.snapshot_reader(self._stack.enter_context(side.engine.connect()))

    def take(self, under_lock: tuple[Connection | None, Connection | None]) -> None:
        """With the lock held: take each side's snapshot, or count a side without one now, on its connection
        in ``under_lock``."""
        self._at_lock = [self._stack.enter_context(reader) if reader is not None else side.count(conn)
                         for side, reader, conn in zip(self.sides, self._readers, under_lock, strict=True)]

    def finish(self) -> tuple[int, int]:
        """After the lock: the counts left to snapshots, both sides at once when both are (two scans)."""
        (source, target), (count_source, count_target) = self._at_lock, (s.count for s in self.sides)
        if isinstance(source, Connection) and isinstance(target, Connection):
            with ThreadPoolExecutor(max_workers=1) as pool:
                source_job = pool.submit(count_source, source)
                target_count = count_target(target)
                return source_job.result(), target_count
        return (count_source(source) if isinstance(source, Connection) else source,
                count_target(target) if isinstance(target, Connection) else target)

    def snapshot_connection(self, side: int) -> Connection | None:
        """Side ``side``'s snapshot connection (after :meth:`take`), to read more at the lock's snapshot; None where
        that side was counted under the lock. Valid until ``stack`` closes."""
        found = self._at_lock[side] if self._at_lock else None
        return found if isinstance(found, Connection) else None

    @property
    def when(self) -> str:
        """How the counts relate to the lock, for the log and the ledger's verification text."""
        later = [side.name for side, at in zip(self.sides, self._at_lock, strict=True) if isinstance(at, Connection)]
        if not later:
            return UNDER_LOCK
        if len(later) == len(self.sides):
            return AT_SNAPSHOT
        under = next(side.name for side in self.sides if side.name not in later)
        return f"at the lock: the {under} counted under it, the {later[0]} at its snapshot after releasing it"
