"""Replay captured changes into the other table, in checkpointed batches, idempotently.

A batch takes the oldest ``limit`` rows of the change table (by ``seq``) and brings every key they name to its
*current* state on the captured side: keys whose row is gone (or no longer matches the filter) are deleted in
the destination, the others are upserted through the step's transform. The destination's transaction also
records the replay checkpoint; then exactly the change rows read are deleted. So:

- a row changed many times replays once, with its latest values; replaying twice writes the same values;
- a crash between the two commits replays those changes again (harmless), never loses one;
- a change committed late with a lower ``seq`` than a replayed one is still in the table, and replays next.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.backfill.copier import BatchCopier
from airflow_migrate_provider.core.backfill.spec import BackfillSpec, resolve_spec
from airflow_migrate_provider.core.backfill.state import dumps
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.dialects.capture import CaptureNames, CaptureSql, capture_sql
from airflow_migrate_provider.core.ledger import checkpoints, utcnow
from airflow_migrate_provider.plan.model import BackfillStep

log = logging.getLogger(__name__)

_PARAMS_PER_STATEMENT = 900  # under SQLite's oldest limit of 999 bound parameters


@dataclass
class ReplayBatch:
    """What one batch did."""

    changes: int
    upserted: int
    deleted: int
    seconds: float
    last_seq: int


@dataclass
class ReplayTotals:
    """What a replay did so far (this call) and the lag it left."""

    changes: int = 0
    upserted: int = 0
    deleted: int = 0
    batches: int = 0
    seconds: float = 0.0
    lag_changes: int = 0
    lag_seconds: float = 0.0

    def add(self, batch: ReplayBatch) -> None:
        self.changes += batch.changes
        self.upserted += batch.upserted
        self.deleted += batch.deleted
        self.batches += 1
        self.seconds += batch.seconds

    def line(self) -> str:
        rate = f", {self.changes / self.seconds:,.0f} changes/s" if self.seconds > 0 else ""
        return (f"{self.changes:,} changes in {self.batches} batch(es) ({self.upserted:,} rows upserted, "
                f"{self.deleted:,} deleted{rate}); lag now {self.lag_changes:,} changes, oldest "
                f"{self.lag_seconds:.1f} s")


class _ChangedKeys:
    """The copier's delta predicate: source rows whose key is named by change rows ``lo..hi``."""

    def __init__(self, names: CaptureNames, sql: CaptureSql, lo: int, hi: int):
        self.names, self.sql, self.lo, self.hi = names, sql, lo, hi

    def predicate(self, spec: BackfillSpec, params: dict[str, Any]) -> str:
        params.update(seq_lo=self.lo, seq_hi=self.hi)
        src = spec.src
        return (f"{src.row(spec.key_exprs)} IN (SELECT {', '.join(self.sql.change_columns(self.names))} FROM "
                f"{src.ident(self.names.change_table)} WHERE seq >= {src.param('seq_lo')} AND seq <= "
                f"{src.param('seq_hi')})")


class Replayer:
    """Replays one capture (``names``, on ``source``) into the destination table of ``step`` (on ``target``).

    ``step`` is a backfill-shaped description of the copy (source table, destination, key, transform), so a
    replay applies exactly the transform the history copy applied. ``slot`` tells the checkpoint rows of the
    forward (-2) and reverse (-3) replays of one plan step apart; None keeps no checkpoint row (the destination
    is not the ledger's database: a replay back into the old one).
    """

    def __init__(self, plan_id: str, step: BackfillStep, names: CaptureNames, source: Engine, target: Engine,
                 slot: int | None, label: str):
        self.plan_id, self.step, self.names = plan_id, step, names
        self.source, self.target, self.slot, self.label = source, target, slot, label
        self.capture = capture_sql(dialect_for(source))

    @cached_property
    def spec(self) -> BackfillSpec:
        return resolve_spec(self.step, self.source, self.target)

    @cached_property
    def copier(self) -> BatchCopier:
        return BatchCopier(self.spec, self.target)

    @property
    def _shares_connection(self) -> bool:
        return self.spec.same_database and self.spec.tgt.single_writer

    # -- lag ----------------------------------------------------------------------------------------
    def lag(self, within: Connection | None = None) -> tuple[int, float]:
        if within is not None and self._shares_connection:
            return self.capture.lag(within, self.names)
        with self.source.connect() as conn:
            found = self.capture.lag(conn, self.names)
            conn.rollback()
        return found

    # -- one batch ----------------------------------------------------------------------------------
    @contextmanager
    def _connections(self, within: Connection | None) -> Iterator[tuple[Connection, Connection]]:
        """(source, target) connections; one and the same, in one transaction, for a single-writer database
        (``within``'s open transaction when given: the cutover's lock)."""
        if self._shares_connection:
            if within is not None:
                yield within, within
                return
            with self.target.begin() as conn:
                yield conn, conn
            return
        with self.source.connect() as sconn, self.target.begin() as tconn:
            yield sconn, tconn
            sconn.rollback()

    def _read_changes(self, sconn: Connection, limit: int) -> list[tuple[Any, ...]]:
        src = self.spec.src
        kcols = ", ".join(self.capture.change_columns(self.names))
        return [tuple(r) for r in sconn.exec_driver_sql(
            f"SELECT seq, {kcols} FROM {src.ident(self.names.change_table)} ORDER BY seq "
            f"LIMIT {src.param('lim')}", {"lim": limit}).all()]

    def _gone_keys(self, sconn: Connection, lo: int, hi: int) -> list[tuple[Any, ...]]:
        """Keys named by change rows ``lo..hi`` that have no (matching) row on the captured side now."""
        spec, src = self.spec, self.spec.src
        kcols = self.capture.change_columns(self.names)
        # an anti-join on the key (NOT EXISTS): NOT IN (subquery) makes PostgreSQL read the whole table per batch,
        # or per change row once the keys do not fit in work_mem
        match = " AND ".join(f"{e} = am_c.{k}" for e, k in zip(spec.key_exprs, kcols, strict=True))
        sql = (f"SELECT DISTINCT {', '.join(f'am_c.{k}' for k in kcols)} FROM {src.ident(self.names.change_table)} "
               f"AS am_c WHERE am_c.seq >= {src.param('lo')} AND am_c.seq <= {src.param('hi')} AND NOT EXISTS "
               f"(SELECT 1 FROM {spec.source_from}{spec.where(match)})")
        return [tuple(r) for r in sconn.exec_driver_sql(sql, {"lo": lo, "hi": hi}).all()]

    def _delete_keys(self, tconn: Connection, keys: list[tuple[Any, ...]]) -> int:
        if not keys:
            return 0
        spec, tgt = self.spec, self.spec.tgt
        where = " AND ".join(f"{ident} = {tgt.param(f'k{i}')}" for i, ident in enumerate(spec.key_idents))
        result = tconn.exec_driver_sql(f"DELETE FROM {spec.target_table} WHERE {where}",
                                       [{f"k{i}": tgt.key_value(v) for i, v in enumerate(key)} for key in keys])
        return max(int(result.rowcount or 0), 0)

    def _upsert_keys(self, sconn: Connection, tconn: Connection, lo: int, hi: int, shared: bool) -> int:
        changed = _ChangedKeys(self.names, self.capture, lo, hi)
        total, after = 0, None
        while True:
            rows, after = self.copier.copy_delta(None if shared else sconn, changed, after, 50_000, None,
                                                 tconn=tconn)
            total += rows
            if rows == 0 or after is None:
                return total

    def _forget(self, conn: Connection, seqs: list[int]) -> None:
        src = self.spec.src
        table = src.ident(self.names.change_table)
        for start in range(0, len(seqs), _PARAMS_PER_STATEMENT):
            part = seqs[start:start + _PARAMS_PER_STATEMENT]
            params = {f"s{i}": s for i, s in enumerate(part)}
            conn.exec_driver_sql(f"DELETE FROM {table} WHERE seq IN ({', '.join(src.param(p) for p in params)})",
                                 params)

    def replay_batch(self, limit: int, within: Connection | None = None) -> ReplayBatch | None:
        """Replay the oldest ``limit`` changes; None when there are none. ``within``: on a single-writer
        database, the open transaction to work in (it holds the database's write lock)."""
        t0 = time.monotonic()
        shared = self._shares_connection
        with self._connections(within) as (sconn, tconn):
            changes = self._read_changes(sconn, limit)
            if not changes:
                return None
            seqs = [int(c[0]) for c in changes]
            lo, hi = min(seqs), max(seqs)
            deleted = self._delete_keys(tconn, self._gone_keys(sconn, lo, hi))
            upserted = self._upsert_keys(sconn, tconn, lo, hi, shared)
            if self.slot is not None:
                self._checkpoint(tconn, len(seqs), upserted, deleted, hi)
            if shared:
                self._forget(tconn, seqs)
        if not shared:
            with self.source.begin() as conn:
                self._forget(conn, seqs)
        return ReplayBatch(len(seqs), upserted, deleted, time.monotonic() - t0, hi)

    # -- many batches -------------------------------------------------------------------------------
    def replay_until(self, batch_changes: int, done: Callable[[int, float], bool], *, deadline: float | None = None,
                     check: Callable[[], None] | None = None, every_s: float = 2.0,
                     within: Connection | None = None) -> ReplayTotals:
        """Replay batches until ``done(lag_changes, lag_seconds)`` or the ``deadline`` (monotonic time);
        ``check`` runs before every batch (the run lock). Logs one line per batch, at most every ``every_s``."""
        totals = ReplayTotals()
        totals.lag_changes, totals.lag_seconds = self.lag(within)
        last_line = float("-inf")
        while not done(totals.lag_changes, totals.lag_seconds):
            if deadline is not None and time.monotonic() >= deadline:
                break
            if check is not None:
                check()
            batch = self.replay_batch(batch_changes, within)
            totals.lag_changes, totals.lag_seconds = self.lag(within)
            if batch is None:
                if not done(totals.lag_changes, totals.lag_seconds):
                    time.sleep(0.05)  # writers' changes are not committed yet
                continue
            totals.add(batch)
            if time.monotonic() - last_line >= every_s:
                last_line = time.monotonic()
                rate = batch.changes / batch.seconds if batch.seconds > 0 else 0.0
                eta = f", ETA {totals.lag_changes / rate:.0f} s" if rate > 0 and totals.lag_changes else ""
                log.info("%s: batch %d: %s changes (%s upserted, %s deleted) in %.2f s, %s changes/s; lag %s "
                         "changes, oldest %.1f s%s", self.label, totals.batches, f"{batch.changes:,}",
                         f"{batch.upserted:,}", f"{batch.deleted:,}", batch.seconds, f"{rate:,.0f}",
                         f"{totals.lag_changes:,}", totals.lag_seconds, eta)
        return totals

    def drain(self, batch_changes: int, check: Callable[[], None] | None = None,
              within: Connection | None = None) -> ReplayTotals:
        """Replay until the change table is empty (as far as committed changes go)."""
        return self.replay_until(batch_changes, lambda n, _age: n == 0, check=check, within=within)

    # -- checkpoint ---------------------------------------------------------------------------------
    def _checkpoint(self, tconn: Connection, changes: int, upserted: int, deleted: int, last_seq: int) -> None:
        mine = ((checkpoints.c.plan_id == self.plan_id) & (checkpoints.c.step_id == self.step.id)
                & (checkpoints.c.chunk == self.slot))
        row = tconn.execute(select(checkpoints.c.phase_state).where(mine)).first()
        state = json.loads(row[0]) if row is not None and row[0] else {"batches": 0, "upserted": 0, "deleted": 0}
        state = {"batches": state["batches"] + 1, "upserted": state["upserted"] + upserted,
                 "deleted": state["deleted"] + deleted}
        values = {"position": dumps([last_seq]), "phase_state": json.dumps(state), "updated_at": utcnow()}
        if row is None:
            tconn.execute(insert(checkpoints).values(plan_id=self.plan_id, step_id=self.step.id, chunk=self.slot,
                                                     rows_total=0, rows_copied=changes, status="replaying",
                                                     **values))
        else:
            tconn.execute(update(checkpoints).where(mine).values(rows_copied=checkpoints.c.rows_copied + changes,
                                                                 **values))

    def replayed(self) -> int:
        """Changes replayed so far, as checkpointed."""
        with self.target.connect() as conn:
            value = conn.execute(select(checkpoints.c.rows_copied).where(
                checkpoints.c.plan_id == self.plan_id, checkpoints.c.step_id == self.step.id,
                checkpoints.c.chunk == self.slot)).scalar()
        return int(value or 0)
