"""Run a backfill step's three phases against real engines, resumably, with ledger history and checkpoints.

- ``start``: resolve and check the step against the tables, take the high-water mark (max key) and the
  watermark cutoff, split phase 1 into key-range chunks. Idempotent: a started step returns its chunks.
- ``copy_chunk``: phase 1 for one chunk, batch by batch, from its last checkpoint.
- ``copy_recent``: phase 2, rows inserted above the high-water mark or changed since the cutoff.
- ``final_sync``: phase 3 under a brief write lock on the source: the last delta; then row counts as of the lock.
- ``revert``: delete what the backfill copied (the target was empty when it started).

Every later phase first finishes whatever earlier phase is incomplete (a chunk reset by a rollback, a
chunk task that was never re-run), so clearing any one failed task converges.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from functools import cached_property
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.actions import ActionPlan
from airflow_migrate_provider.core.backfill.actions import backfill_actions, backfill_checksum
from airflow_migrate_provider.core.backfill.batching import (
    MIN_BATCH_ROWS,
    BatchSizer,
    PhaseReport,
    lagged,
    pairwise_bounds,
)
from airflow_migrate_provider.core.backfill.copier import BatchCopier, DeltaBounds, Key
from airflow_migrate_provider.core.backfill.lock_counts import CountSide, LockCounts
from airflow_migrate_provider.core.backfill.progress import Progress
from airflow_migrate_provider.core.backfill.spec import BackfillSpec, resolve_spec
from airflow_migrate_provider.core.backfill.state import Checkpoints, Chunk, PhaseState
from airflow_migrate_provider.core.backfill.throttle import Throttle
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.ledger import HistoryRow, Ledger, RunIdentity
from airflow_migrate_provider.core.step_result import LockCheck, NoLockCheck, StepResult
from airflow_migrate_provider.errors import (
    BackfillFailed,
    BackfillSpecError,
    ChecksumMismatch,
    TransientBackfillFailed,
    db_error_line,
)
from airflow_migrate_provider.plan.model import BackfillStep

log = logging.getLogger(__name__)


class BackfillRunner:
    """Runs one backfill step of a plan for one Airflow task try (or the CLI standing in for it)."""

    def __init__(self, plan_id: str, step: BackfillStep, source: Engine, target: Engine, ledger: Ledger,
                 who: RunIdentity, lock: LockCheck | None = None, *, sleep: Any = time.sleep,
                 can_defer: bool = False):
        self.plan_id, self.step = plan_id, step
        self.source, self.target, self.ledger, self.who = source, target, ledger, who
        self.lock: LockCheck = lock or NoLockCheck()
        self.checkpoints = Checkpoints(plan_id, step.id)
        self.where = f"backfill step '{step.id}'"
        self.source_dialect = dialect_for(source)
        self.target_dialect = dialect_for(target)
        self.throttle = Throttle(step.throttle, {"source": source, "target": target}, self.where, sleep=sleep,
                                 can_defer=can_defer)

    # -- shared -----------------------------------------------------------------------------------
    @cached_property
    def spec(self) -> BackfillSpec:
        """The step resolved against the real tables (introspection once per task, not per batch)."""
        return resolve_spec(self.step, self.source, self.target)

    @cached_property
    def copier(self) -> BatchCopier:
        return BatchCopier(self.spec, self.target)

    @property
    def _shares_connection(self) -> bool:
        """One SQLite file as source and target: read and write through one connection (SQLite has one
        writer, so a second connection's write would wait on our own read transaction)."""
        return self.spec.same_database and self.spec.tgt.single_writer

    @contextmanager
    def _source_conn(self) -> Iterator[Connection | None]:
        if self._shares_connection:
            yield None
            return
        with self.source.connect() as conn:
            yield conn

    def _history(self) -> HistoryRow | None:
        return self.ledger.applied().get(self.step.id)

    def _carried_on(self, row: HistoryRow) -> HistoryRow:
        """The step's apply row for this run: a step a dead run left part way gets a row of this run that points
        back at the dead run's (the ledger shows who started, resumed and finished it); its checkpoints too."""
        mine = self.ledger.carry_on(row, self.who)
        if mine.id != row.id:
            with self.target.begin() as conn:
                self.checkpoints.claim(conn, self.who.run_id)
        return mine

    def _recorded_actions(self) -> ActionPlan:
        """The step's actions with every column it copies, as resolved against the real tables."""
        return backfill_actions(self.step, [(c.name, c.source_expr) for c in self.spec.columns])

    def _scalar(self, engine: Engine, sql: str, params: dict[str, Any] | None = None) -> Any:
        with engine.connect() as conn:
            value = conn.exec_driver_sql(sql, params or {}).scalar()
            conn.rollback()
        return value

    def _max_key(self, conn_engine: Engine) -> Key | None:
        spec = self.spec
        order = ", ".join(f"{e} DESC" for e in spec.key_exprs)
        with conn_engine.connect() as conn:
            row = conn.exec_driver_sql(f"SELECT {', '.join(spec.key_exprs)} FROM {spec.source_from}"
                                       f"{spec.where(None)} ORDER BY {order} LIMIT 1", {}).first()
            conn.rollback()
        return tuple(row) if row is not None else None

    def _max_watermark(self) -> Any:
        if self.spec.watermark_expr is None:
            return None
        raw = self._scalar(self.source, f"SELECT max({self.spec.watermark_expr}) FROM {self.spec.source_from}"
                                        f"{self.spec.where(None)}")
        return lagged(raw, self.step.watermark_lag_seconds)

    def _count_source(self, conn: Connection | None, upper: Key | None = None) -> int:
        spec, params = self.spec, {}
        pred = spec.src.compare(spec.key_exprs, "<=", upper, params, "up") if upper is not None else None
        sql = f"SELECT count(*) FROM {spec.source_from}{spec.where(pred)}"
        if conn is not None:
            return int(conn.exec_driver_sql(sql, params).scalar() or 0)
        return int(self._scalar(self.source, sql, params) or 0)

    def _count_target(self, conn: Connection | None = None, upper: Key | None = None) -> int:
        spec, params = self.spec, {}
        where = (" WHERE " + spec.tgt.compare(spec.key_idents, "<=", upper, params, "up")) if upper else ""
        sql = f"SELECT count(*) FROM {spec.target_table}{where}"
        if conn is not None:
            return int(conn.exec_driver_sql(sql, params).scalar() or 0)
        return int(self._scalar(self.target, sql, params) or 0)

    # -- phase 0: start ----------------------------------------------------------------------------
    def start(self) -> list[dict[str, Any]]:
        """Begin the step (or find it begun): its phase-1 chunks as small dicts for Airflow mapping."""
        checksum = backfill_checksum(self.step)
        row = self._history()
        if row is not None and row.checksum != checksum:
            raise ChecksumMismatch(self.plan_id, self.step.id, row.checksum, checksum, row.by)
        with self.target.connect() as conn:
            begun = self.checkpoints.exists(conn)
            chunks = self.checkpoints.chunks(conn) if begun else []
        if row is not None and begun:
            log.info("%s already started by %s: %d chunk(s), %d done", self.where, row.by, len(chunks),
                     sum(c.done for c in chunks))
            self._carried_on(row)
            return [self._chunk_info(c, len(chunks)) for c in chunks]
        created = self._begin(checksum)
        return [self._chunk_info(c, len(created)) for c in created]

    def _chunk_info(self, chunk: Chunk, of: int) -> dict[str, Any]:
        return {"chunk": chunk.index, "label": chunk.label(of), "rows": chunk.rows_total}

    def _begin(self, checksum: str) -> list[Chunk]:
        spec = self.spec  # resolves and checks everything before anything is written
        existing = self._count_target()
        if existing:
            raise BackfillSpecError(self.step.id, [
                f"steps.{self.step.id}.target: table '{self.step.target}' already has {existing:,} rows. A "
                f"backfill copies into an empty table, so that its rollback removes exactly what it copied; "
                f"empty the table or copy into a new one"])
        high_water = self._max_key(self.source)
        cutoff = self._max_watermark()
        chunks = self._plan_chunks(high_water)
        phase = PhaseState(high_water=high_water, cutoff=cutoff)
        try:
            with self.target.begin() as conn:
                row_id, _ = self.ledger.start(self.step.id, "apply", checksum, self._recorded_actions(), self.who,
                                              conn=conn)
                self.ledger.record_progress(row_id, 1, conn=conn)  # data may now change: it counts as applied
                self.checkpoints.create(conn, phase, chunks, self.who.run_id)
        except sa_exc.IntegrityError:  # a parallel task started it a moment ago
            with self.target.connect() as conn:
                return self.checkpoints.chunks(conn)
        total = sum(c.rows_total for c in chunks)
        log.info("%s started: %s rows up to key %s in %d chunk(s)%s; %s", self.where, f"{total:,}",
                 "-" if high_water is None else high_water[0] if len(high_water) == 1 else high_water,
                 len(chunks), f"; watermark cutoff {cutoff}" if cutoff is not None else "",
                 "; ".join(spec.describe()[:1]))
        return chunks

    def _plan_chunks(self, high_water: Key | None) -> list[Chunk]:
        spec, n = self.spec, self.step.chunks
        if high_water is None:
            return [Chunk(0, None, None)]
        if not spec.integer_key:
            return [Chunk(0, None, high_water, rows_total=self._count_source(None, high_water))]
        low = self._scalar(self.source, f"SELECT min({spec.key_exprs[0]}) FROM {spec.source_from}"
                                        f"{spec.where(None)}")
        start, end = int(low) - 1, int(high_water[0])
        bounds = [start + i * (end - start) // n for i in range(n + 1)]  # exact for any bigint range
        chunks = []
        for i, (lo, hi) in enumerate(pairwise_bounds(bounds)):
            params: dict[str, Any] = {}
            pred = " AND ".join([spec.src.compare(spec.key_exprs, ">", (lo,), params, "lo"),
                                 spec.src.compare(spec.key_exprs, "<=", (hi,), params, "hi")])
            count = int(self._scalar(self.source, f"SELECT count(*) FROM {spec.source_from}{spec.where(pred)}",
                                     params) or 0)
            chunks.append(Chunk(i, (lo,), (hi,), rows_total=count))
        return chunks

    def _ensure_started(self) -> None:
        """A later phase after a rollback reset the step: begin again (clearing one task converges)."""
        row = self._history()
        with self.target.connect() as conn:
            begun = self.checkpoints.exists(conn)
        if row is None or not begun:
            log.warning("%s is not in progress in the target (reverted by a rollback?); starting it again",
                        self.where)
            self.start()

    # -- phase 1 ----------------------------------------------------------------------------------
    def copy_chunk(self, index: int) -> PhaseReport:
        """Copy chunk ``index`` of phase 1 from its last checkpoint to its end."""
        self._ensure_started()
        with self.target.connect() as conn:
            chunks = self.checkpoints.chunks(conn)
        if not 0 <= index < len(chunks):
            raise BackfillFailed(f"{self.where}: there is no chunk {index} (the step has {len(chunks)}); the "
                                 f"step was restarted with a different number of chunks")
        return self._copy_chunk(chunks[index], len(chunks))

    def _copy_chunk(self, chunk: Chunk, of: int) -> PhaseReport:
        label = f"{self.where} phase 1 {chunk.label(of)}"
        report = PhaseReport("historical", detail={"chunk": chunk.index})
        if chunk.done or chunk.hi is None:
            log.info("%s: already copied (%s rows); nothing to do", label, f"{chunk.rows_copied:,}")
            return report
        if chunk.position is not None:
            log.info("%s: resuming after key %s (%s rows were already copied)", label, chunk.position,
                     f"{chunk.rows_copied:,}")
        progress = Progress(label, chunk.rows_total, chunk.rows_copied, log)
        sizer = BatchSizer(self.step, chunk, self.spec.integer_key)
        position, last = chunk.resume_after, False
        with self._source_conn() as sconn:
            while not last:
                self.throttle.wait()
                self.lock.check()
                upper, last = sizer.next_upper(
                    position, chunk.hi, lambda n, p=position: self._nth_key(sconn, p, chunk.hi, n))
                t0 = time.monotonic()
                rows = self._guarded(lambda u=upper, p=position, d=last: self.copier.copy_range(
                    sconn, p, u, lambda tconn, pos, n, d=d: self.checkpoints.advance(tconn, chunk.index, pos, n, d)))
                if sconn is not None:
                    sconn.rollback()  # end the read transaction between batches
                seconds = time.monotonic() - t0
                progress.batch(rows, seconds)
                sizer.observe(position, upper, rows, seconds)
                position = upper
        log.info("%s", progress.summary())
        report.rows, report.batches, report.seconds = progress.copied, progress.batches, progress.elapsed
        return report

    def _nth_key(self, sconn: Connection | None, after: Key | None, hi: Key, n: int) -> Key | None:
        """The n-th key after ``after`` and up to ``hi``, in the database's key order (batch bounds for keys
        that are not integers; the database orders them, as its collation says)."""
        spec, params = self.spec, {}
        preds = [spec.src.compare(spec.key_exprs, "<=", hi, params, "hi")]
        if after is not None:
            preds.append(spec.src.compare(spec.key_exprs, ">", after, params, "af"))
        params["off"] = n - 1
        sql = (f"SELECT {', '.join(spec.key_exprs)} FROM {spec.source_from}{spec.where(*preds)} ORDER BY "
               f"{', '.join(spec.key_exprs)} LIMIT 1 OFFSET {spec.src.param('off')}")
        if sconn is None:
            with self.target.connect() as conn:
                row = conn.exec_driver_sql(sql, params).first()
                conn.rollback()
        else:
            row = sconn.exec_driver_sql(sql, params).first()
        return tuple(row) if row is not None else None

    def _guarded(self, work: Any) -> Any:
        """Database errors during a batch: the batch rolled back whole; say so, and whether to retry."""
        try:
            return work()
        except sa_exc.SQLAlchemyError as exc:
            raise BackfillFailed.from_db_error(
                f"{self.where}: a batch failed and was rolled back (the checkpoint is unchanged, nothing is lost "
                f"or duplicated): {db_error_line(exc)}", exc, self.target_dialect, self.source_dialect) from exc

    def _finish_chunks(self) -> None:
        with self.target.connect() as conn:
            chunks = self.checkpoints.chunks(conn)
        pending = [c for c in chunks if not c.done and c.hi is not None]
        if pending:
            log.warning("%s: phase 1 is incomplete in %s; copying them first",
                        self.where, ", ".join(c.label(len(chunks)) for c in pending))
        for chunk in pending:
            self._copy_chunk(chunk, len(chunks))

    # -- phase 2 ----------------------------------------------------------------------------------
    def copy_recent(self) -> PhaseReport:
        """Phase 2: rows inserted above the phase-1 high-water mark or changed since its cutoff."""
        self._ensure_started()
        self._finish_chunks()
        report = PhaseReport("recent")
        with self.target.connect() as conn:
            phase = self.checkpoints.phase(conn)
        if phase.recent.get("done"):
            log.info("%s phase 2 already done (%s rows)", self.where, f"{phase.recent.get('rows', 0):,}")
            return report
        if "high_water" not in phase.recent:
            phase.recent = {"high_water": self._max_key(self.source), "cutoff": self._max_watermark(),
                            "position": None, "rows": 0, "done": False}
            with self.target.begin() as conn:
                self.checkpoints.save_phase(conn, phase)
        delta = DeltaBounds(phase.high_water, phase.cutoff)
        label = f"{self.where} phase 2 (recent: {delta.describe()})"
        if phase.recent.get("position") is not None:
            log.info("%s: resuming after key %s", label, phase.recent["position"])
        progress = Progress(label, 0, int(phase.recent.get("rows") or 0), log)
        limit = max(MIN_BATCH_ROWS, self.step.batch.rows)

        def checkpoint(tconn: Connection, last: Key, rows: int) -> None:
            phase.recent["position"] = last
            phase.recent["rows"] = int(phase.recent.get("rows") or 0) + rows
            self.checkpoints.save_phase(tconn, phase)

        with self._source_conn() as sconn:
            while True:
                self.throttle.wait()
                self.lock.check()
                t0 = time.monotonic()
                rows, _ = self._guarded(lambda: self.copier.copy_delta(
                    sconn, delta, phase.recent.get("position"), limit, checkpoint))
                if sconn is not None:
                    sconn.rollback()
                if rows:
                    progress.batch(rows, time.monotonic() - t0)
                if rows < limit:
                    break
        phase.recent["done"] = True
        with self.target.begin() as conn:
            self.checkpoints.save_phase(conn, phase)
        log.info("%s", progress.summary())
        report.rows, report.batches, report.seconds = progress.copied, progress.batches, progress.elapsed
        return report

    # -- phase 3 ----------------------------------------------------------------------------------
    def final_sync(self) -> PhaseReport:
        """Phase 3 (or, with it disabled, the closing count): finishes the step in the ledger."""
        self._ensure_started()
        self._finish_chunks()
        with self.target.connect() as conn:
            phase = self.checkpoints.phase(conn)
        if self.step.phases.recent and not phase.recent.get("done"):
            self.copy_recent()
            with self.target.connect() as conn:
                phase = self.checkpoints.phase(conn)
        row = self._history()
        if row is not None and row.status == "applied":
            log.info("%s already applied by %s; nothing to do", self.where, row.by)
            return PhaseReport("final_sync", detail={"already_applied": True})
        bounds = phase.recent if phase.recent else {"high_water": phase.high_water, "cutoff": phase.cutoff}
        if self.step.phases.final_sync:
            report = self._locked_sync(DeltaBounds(bounds.get("high_water"), bounds.get("cutoff")))
        else:
            report = self._closing_count(bounds.get("high_water"))
        assert row is not None
        row = self._carried_on(row)
        self.ledger.finish(row.id, "applied", started_at=row.started_at,
                           verified=json.dumps([report.detail["verified"]]))
        log.info("%s applied: %s", self.where, report.detail["verified"])
        return report

    def _locked_sync(self, delta: DeltaBounds) -> PhaseReport:
        """Only the last delta is copied under the lock; the row counts are as of the lock (see lock_counts)."""
        label = f"{self.where} phase 3 (final sync under lock: {delta.describe()})"
        report = PhaseReport("final_sync")
        self.lock.check()
        t0 = time.monotonic()
        with ExitStack() as stack:
            counts = self._lock_counts(stack)
            with self._write_lock(label) as lconn:
                locked_at = time.monotonic()
                log.info("%s: locked %s against writes", label, ", ".join(self.spec.lock_tables))
                self._copy_last_delta(lconn, delta, locked_at, label, report)
                counts.take((lconn, lconn if self._shares_connection else None))
            self._check_lock_held(time.monotonic() - locked_at, label, report)
            counted_at = time.monotonic()
            source_count, target_count = counts.finish()
        count_seconds = time.monotonic() - counted_at
        report.seconds = time.monotonic() - t0
        report.detail.update(source_rows=source_count, target_rows=target_count, count_seconds=round(count_seconds, 3))
        log.info("%s: row counts taken %s (%.3f s after the lock)", label, counts.when, count_seconds)
        self._check_counts(source_count, target_count, f"the whole table ({counts.when})")
        report.detail["verified"] = (f"row counts match: source {source_count:,} = target {target_count:,} "
                                     f"({counts.when})")
        return report

    def _lock_counts(self, stack: ExitStack) -> LockCounts:
        sides = (CountSide("source", self.source, self.source_dialect, self._count_source),
                 CountSide("target", self.target, self.target_dialect, self._count_target))
        return LockCounts(sides, stack, snapshots=not self._shares_connection)

    def _write_lock(self, label: str) -> AbstractContextManager[Connection]:
        spec, step = self.spec, self.step

        def could_not_lock(exc: Exception) -> BaseException:
            return TransientBackfillFailed(f"{label}: could not lock {', '.join(spec.lock_tables)} within "
                                           f"{step.max_lock_seconds:g} s: {db_error_line(exc)}")

        lock_engine = self.target if self._shares_connection else self.source
        return self.source_dialect.write_lock(lock_engine, spec.lock_names, step.max_lock_seconds,
                                              failed=could_not_lock)

    def _copy_last_delta(self, lconn: Connection, delta: DeltaBounds, locked_at: float, label: str,
                         report: PhaseReport) -> None:
        limit = max(MIN_BATCH_ROWS, self.step.batch.rows)
        source = None if self._shares_connection else lconn
        after: Key | None = None
        while True:
            held = time.monotonic() - locked_at
            if held > self.step.max_lock_seconds:
                raise BackfillFailed(
                    f"{label}: the write lock was held {held:.2f} s, over max_lock_seconds "
                    f"{self.step.max_lock_seconds:g}; released it without finishing. The delta is too big for "
                    f"one lock window: run phase 2 again closer to the cutover, or raise max_lock_seconds.")
            rows, last = self._guarded(lambda a=after: self._delta_batch(source, lconn, delta, a, limit))
            report.rows += rows
            report.batches += 1 if rows else 0
            if rows < limit:
                return
            after = last

    def _check_lock_held(self, held: float, label: str, report: PhaseReport) -> None:
        """``held``: from the moment the lock was granted until its transaction committed."""
        report.detail["lock_seconds"] = round(held, 3)
        log.info("%s: copied %s rows in %d batch(es); lock held %.3f s (max %g s)", label, f"{report.rows:,}",
                 report.batches, held, self.step.max_lock_seconds)
        if held > self.step.max_lock_seconds:
            raise BackfillFailed(f"{label}: the write lock was held {held:.2f} s, over max_lock_seconds "
                                 f"{self.step.max_lock_seconds:g}")

    def _delta_batch(self, source: Connection | None, lconn: Connection, delta: DeltaBounds, after: Key | None,
                     limit: int) -> tuple[int, Key | None]:
        if self._shares_connection:  # the lock is the target transaction itself: write inside it
            return self.copier.copy_delta(None, delta, after, limit, None, tconn=lconn)
        return self.copier.copy_delta(source, delta, after, limit, None)

    def _closing_count(self, upper: Key | None) -> PhaseReport:
        if upper is None:  # the source was empty when the step began
            source_count, target_count = 0, self._count_target()
        else:  # two full scans on two servers: run them side by side
            with ThreadPoolExecutor(max_workers=2) as pool:
                source_job = pool.submit(self._count_source, None, upper)
                target_count = self._count_target(None, upper)
                source_count = source_job.result()
        self._check_counts(source_count, target_count, f"keys up to {upper}")
        return PhaseReport("finish", detail={"source_rows": source_count, "target_rows": target_count,
                                             "verified": f"row counts match for keys up to {upper}: source "
                                                         f"{source_count:,} = target {target_count:,}"})

    def _check_counts(self, source_count: int, target_count: int, scope: str) -> None:
        if source_count != target_count:
            raise BackfillFailed(
                f"{self.where}: row counts differ for {scope}: source {source_count:,}, target {target_count:,} "
                f"({target_count - source_count:+,}). Rows deleted in the source after they were copied, or a "
                f"filter/transform that drops rows, cause this; the run fails and rolls back.")

    # -- whole step (CLI, apply_through) --------------------------------------------------------------
    def run(self) -> StepResult:
        t0 = time.monotonic()
        row = self._history()
        if row is not None and row.status == "applied":
            if row.checksum != backfill_checksum(self.step):
                raise ChecksumMismatch(self.plan_id, self.step.id, row.checksum, backfill_checksum(self.step),
                                       row.by)
            return StepResult(self.step.id, "already_applied")
        chunks = self.start()
        for info in chunks:
            self.copy_chunk(info["chunk"])
        if self.step.phases.recent:
            self.copy_recent()
        report = self.final_sync()
        return StepResult(self.step.id, "applied", time.monotonic() - t0, 0,
                          [str(report.detail.get("verified", ""))])

    def verify(self) -> StepResult:
        """Re-check, read-only, that the target holds as many rows as the source (up to the last high-water
        mark when the source stays live)."""
        t0 = time.monotonic()
        with self.target.connect() as conn:
            phase = self.checkpoints.phase(conn) if self.checkpoints.exists(conn) else PhaseState()
        upper = (phase.recent or {}).get("high_water") or phase.high_water
        report = self._closing_count(upper)
        return StepResult(self.step.id, "verified", time.monotonic() - t0, 0, [report.detail["verified"]])
