"""The history copy of a dual_write step: the backfill engine's phase 1, under the dual_write step's ledger row."""

from __future__ import annotations

import logging
from typing import Any

from airflow_migrate_provider.core.backfill.runner import BackfillRunner
from airflow_migrate_provider.core.backfill.state import PhaseState

log = logging.getLogger(__name__)


class HistoryCopy(BackfillRunner):
    """Copies the rows that existed when capture began, in key-range chunks with checkpoints.

    Unlike a backfill it writes no ledger row of its own (the dual_write step's row, written when capture was
    installed, covers it) and has no later phases: every change made after capture began is the replay's."""

    def start(self) -> list[dict[str, Any]]:
        with self.target.connect() as conn:
            chunks = self.checkpoints.chunks(conn) if self.checkpoints.exists(conn) else []
        if chunks:
            log.info("%s: history copy already started: %d chunk(s), %d done", self.where, len(chunks),
                     sum(c.done for c in chunks))
            return [self._chunk_info(c, len(chunks)) for c in chunks]
        high_water = self._max_key(self.source)
        chunks = self._plan_chunks(high_water)
        with self.target.begin() as conn:
            self.checkpoints.create(conn, PhaseState(high_water=high_water, cutoff=None), chunks, self.who.run_id)
        log.info("%s: history copy of %s rows in %d chunk(s), keys up to %s", self.where,
                 f"{sum(c.rows_total for c in chunks):,}", len(chunks), high_water)
        return [self._chunk_info(c, len(chunks)) for c in chunks]

    def _ensure_started(self) -> None:
        with self.target.connect() as conn:
            begun = self.checkpoints.exists(conn)
        if not begun:
            self.start()

    def copy_all(self) -> int:
        """Every chunk from its checkpoint to its end (outside Airflow, or a re-run): rows copied."""
        return sum(self.copy_chunk(info["chunk"]).rows for info in self.start())
