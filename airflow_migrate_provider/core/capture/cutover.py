"""The cutover of a dual-write: verify, catch up, switch under a brief lock, smoke-test, disable old writes; and
the way back (switch back, replay the new side's writes into the old table).

The switch, step by step:

1. outside any lock: replay until the lag is small; install *reverse* capture on the new table (so every write
   the application makes there after the switch can be replayed back to the old table on rollback);
2. lock the old table against writes; replay what is left (the delta only); take a snapshot of both tables
   (where the database keeps snapshots); check the lock budget; switch (a view or a rename in the lock's own
   transaction, so it is atomic with it; a Variable or an HTTP call while the lock holds); release;
3. count both tables at the snapshot, after releasing the lock; replay any write that reached the old table
   after all (a statement that was waiting for the lock).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.actions import (
    ActionPlan,
    CaptureChanges,
    GuardWrites,
    Note,
    ReplayChanges,
    Switch,
    WriteLock,
)
from airflow_migrate_provider.core.backfill.lock_counts import CountSide, LockCounts
from airflow_migrate_provider.core.capture import switch as switching
from airflow_migrate_provider.core.capture.replay import Replayer
from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.dialects import Dialect, dialect_for
from airflow_migrate_provider.core.dialects.capture import CaptureNames, CaptureSql, capture_sql
from airflow_migrate_provider.core.kinds.base import digest
from airflow_migrate_provider.core.kinds.dual_write import (
    FORWARD_SLOT,
    REVERSE_SLOT,
    capture_names,
    forward_replayer,
    lift_reverse_guard,
)
from airflow_migrate_provider.core.ledger import HistoryRow, as_utc
from airflow_migrate_provider.core.step_result import StepResult
from airflow_migrate_provider.errors import CutoverFailed, TransientCutoverFailed, db_error_line
from airflow_migrate_provider.plan.model import BackfillStep, CutoverStep, DualWriteStep

log = logging.getLogger(__name__)

SMALL_LAG = 1_000  # changes left for the final replay under the lock, at most
# the cutover's ledger row progress: a Variable/HTTP switch may have been sent (a rollback switches back, which is
# harmless if it was not), or the switch is done
MAYBE_SWITCHED, SWITCHED = 1, 2


def cutover_checksum(step: CutoverStep) -> str:
    """What must not change once a cutover switched: which tables, how it switches, what it disables."""
    return digest(step.model_dump(mode="json", include={"dual_write", "switch_reads", "disable_old_writes"}))


def _quoted(dialect: Dialect, table: str) -> str:
    return dialect.ident(table)


@dataclass
class SwitchReport:
    """What the switch did, for the log, XCom and the ledger."""

    lock_seconds: float = 0.0
    final_changes: int = 0
    old_rows: int = 0
    new_rows: int = 0
    counted: str = ""
    switched: str = ""
    stragglers: int = 0
    notes: list[str] = field(default_factory=list)
    switch_sent: bool = False  # a Variable/HTTP switch was sent (or its sending began)

    def to_json(self) -> dict[str, Any]:
        return {"lock_seconds": round(self.lock_seconds, 3), "final_changes": self.final_changes,
                "old_rows": self.old_rows, "new_rows": self.new_rows, "counted": self.counted,
                "switched": self.switched, "stragglers": self.stragglers, "notes": self.notes}


class Cutover:
    """One cutover step in one run context; ``dual_write`` is the step whose tables it switches."""

    def __init__(self, ctx: RunContext, step: CutoverStep, dual_write: DualWriteStep, variables: Any = None):
        self.ctx, self.step, self.dw, self.variables = ctx, step, dual_write, variables
        self.where = f"cutover '{step.id}'"
        self.old_engine, self.new_engine = ctx.source_or_target, ctx.engine

    # -- pieces -------------------------------------------------------------------------------------
    @cached_property
    def old_sql(self) -> CaptureSql:
        return capture_sql(dialect_for(self.old_engine))

    @cached_property
    def new_sql(self) -> CaptureSql:
        return capture_sql(dialect_for(self.new_engine))

    @cached_property
    def forward(self) -> Replayer:
        return forward_replayer(self.ctx, self.dw)

    def reverse_names(self, new_table: str | None = None) -> CaptureNames:
        return CaptureNames.of(self.ctx.plan_id, self.dw.id, "reverse", new_table or self.dw.target, self.dw.key)

    def switched(self) -> bool:
        """Whether this step's switch is done (recorded as switched in the ledger)."""
        row = self._row()
        return row is not None and row.progress >= SWITCHED

    @cached_property
    def names(self) -> CaptureNames:
        """The dual_write step's (forward) capture on the old table."""
        return capture_names(self.ctx.plan_id, self.dw)

    def _forward_now(self, recorded: dict[str, Any]) -> Replayer:
        """The forward replay with the tables' names after the switch (a rename swaps them)."""
        now = switching.names_after(recorded, True)
        if (now.old, now.new) == (self.dw.source.table, self.dw.target):
            return self.forward
        step = _renamed(self.dw.history_step(), now.old, now.new)
        return Replayer(self.ctx.plan_id, step, self.names, self.old_engine,
                        self.new_engine, FORWARD_SLOT, f"{self.where}: replay ({now.old} → {now.new})")

    def _check_reverse(self) -> None:
        """The way back must work before anything is switched: resolve the reverse copy against the tables."""
        from airflow_migrate_provider.errors import BackfillSpecError

        reverse = Replayer(self.ctx.plan_id, self.dw.reverse_step(), self.reverse_names(), self.new_engine,
                           self.old_engine, REVERSE_SLOT, "reverse")
        try:
            reverse.spec  # noqa: B018
        except BackfillSpecError as exc:
            raise CutoverFailed(
                f"{self.where}: writes made on the new side after the switch could not be replayed back into "
                f"{self.dw.source.table} on rollback, so nothing was switched: {exc}. Give the dual_write step "
                f"`reverse_columns` for the old columns the transform changes") from exc

    @property
    def atomic_switch(self) -> bool:
        """The switch commits with the lock's transaction (a view or rename where DDL is transactional); else it
        is marked 'maybe switched' before it is sent, and a rollback switches back."""
        return self.step.switch_reads.in_database and dialect_for(self.old_engine).transactional_ddl

    @property
    def shared(self) -> bool:
        """Old and new table in one single-writer database: one connection does everything."""
        return self.forward.spec.same_database and self.forward.spec.tgt.single_writer

    def _row(self) -> HistoryRow | None:
        return self.ctx.ledger.applied().get(self.step.id)

    # -- verify: consistency while writes continue ---------------------------------------------------
    def verify(self) -> dict[str, Any]:
        """Compare every row of the old table (through the transform) with the new one (one EXCEPT query each way
        in one database, checksums with drill-down across two); differences on keys with changes not yet replayed
        are in flight, not divergence. Divergent keys fail it."""
        from airflow_migrate_provider.core.verify.base import Side
        from airflow_migrate_provider.core.verify.checksums import checksums

        lift_reverse_guard(self.ctx, self.dw)
        self.forward.replay_until(self.dw.replay.batch_changes, lambda n, _a: n <= self.dw.replay.batch_changes,
                                  check=self.ctx.lock.check)
        if self.forward.spec.same_database:
            found, detail, unlisted = self._differing_keys_in_sql()
            shown: dict[tuple[Any, ...], str] = {k: f"key {k if len(k) > 1 else k[0]!r}" for k in found}
        else:
            source = Side(self.old_engine, table=self.dw.source.table, filter=self.dw.source.filter,
                          label="old table")
            target = Side(self.new_engine, table=self.dw.target, label="new table")
            result = checksums(source, target, list(self.dw.key), dict(self.dw.columns), max_reported=10_000)
            shown = {_key_tuple(d.key): str(d) for d in result.differences}
            detail = f"{result.source}; {result.detail}"
            unlisted = result.total_differences - len(result.differences)
        pending = self._pending_keys()
        divergent = [text for key, text in shown.items() if key not in pending]
        in_flight = len(shown) - len(divergent)
        summary = (f"{self.dw.source.table} → {self.dw.target}: {detail}"
                   + (f"; {in_flight:,} key(s) differ with changes still being replayed (in flight)"
                      if in_flight else ""))
        log.info("%s: verification while writes continue: %s", self.where, summary)
        if divergent or unlisted > 0:
            listed = "; ".join(divergent[:10])
            raise CutoverFailed(
                f"{self.where}: the new table diverges from the old one on {len(divergent) + unlisted:,} key(s) that "
                f"have no change waiting to be replayed (something else wrote to {self.dw.target}, or a transform "
                f"gives different values): {listed}. Nothing was switched.")
        return {"step": self.step.id, "passed": True, "summary": summary, "in_flight": in_flight}

    def _differing_keys_in_sql(self, cap: int = 10_000, conn: Connection | None = None,
                               replayer: Replayer | None = None) -> tuple[set[tuple[Any, ...]], str, int]:
        """Both tables in one database: the keys whose rows differ, by one EXCEPT query each way (one snapshot:
        ``conn``'s, e.g. the lock's, else a connection of its own). ``replayer`` names the tables (after a rename)."""
        spec = (replayer or self.forward).spec
        rows = f"SELECT {spec.select_list(spec.fast_path)} FROM {spec.source_from}{spec.where(None)}"
        new = f"SELECT {', '.join(spec.column_idents)} FROM {spec.target_table}"
        keys = ", ".join(spec.key_idents)
        sql = (f"SELECT {keys} FROM ({rows} EXCEPT {new}) AS only_old UNION "
               f"SELECT {keys} FROM ({new} EXCEPT {rows}) AS only_new")
        count = f"SELECT count(*) FROM {spec.source_from}{spec.where(None)}"
        if conn is not None:
            found = [tuple(r) for r in conn.exec_driver_sql(sql).fetchmany(cap + 1)]
            total = int(conn.exec_driver_sql(count).scalar() or 0)
        else:
            with self.old_engine.connect() as own:
                found = [tuple(r) for r in own.exec_driver_sql(sql).fetchmany(cap + 1)]
                total = int(own.exec_driver_sql(count).scalar() or 0)
                own.rollback()
        detail = (f"{total:,} rows compared in SQL (EXCEPT both ways), "
                  + (f"{len(found):,} key(s) differ" if found else "all equal"))
        return set(found[:cap]), detail, max(len(found) - cap, 0)

    def _compare_at_the_switch(self, conn: Connection, replayer: Replayer, report: SwitchReport,
                               switched: bool) -> None:
        """Both tables in one database: every row compared as of the lock (nothing is in flight then)."""
        found, detail, unlisted = self._differing_keys_in_sql(conn=conn, replayer=replayer)
        report.notes.append(f"rows at the switch: {detail}")
        if found or unlisted:
            keys = ", ".join(repr(k[0] if len(k) == 1 else k) for k in sorted(found, key=repr)[:10])
            raise CutoverFailed(f"{self.where}: at the switch the new table differs from the old one on "
                                f"{len(found) + unlisted:,} key(s): {keys}; "
                                + ("the rollback switches reads back" if switched else "nothing was switched"))

    def _pending_keys(self) -> set[tuple[Any, ...]]:
        cols = ", ".join(self.old_sql.change_columns(self.names))
        with self.old_engine.connect() as conn:
            found = {tuple(r) for r in conn.exec_driver_sql(
                f"SELECT DISTINCT {cols} FROM {self.old_sql.d.ident(self.names.change_table)}").all()}
            conn.rollback()
        return found

    # -- catch up -------------------------------------------------------------------------------------
    def catch_up(self) -> Any:
        """Replay until at most SMALL_LAG changes are left (what the lock's final replay may take), within the
        dual_write step's catch-up timeout."""
        target = min(SMALL_LAG, self.dw.catch_up.max_lag_changes or SMALL_LAG)
        totals = self.forward.replay_until(self.dw.replay.batch_changes, lambda n, _a: n <= target,
                                           deadline=time.monotonic() + self.dw.catch_up.timeout_minutes * 60,
                                           check=self.ctx.lock.check)
        if totals.lag_changes > target:
            raise CutoverFailed(f"{self.where}: still {totals.lag_changes:,} changes behind after "
                                f"{self.dw.catch_up.timeout_minutes:g} min of catching up; nothing was switched "
                                f"(writes arrive faster than the replay)", transient=True)
        return totals

    # -- switch -----------------------------------------------------------------------------------------
    def _actions(self, recorded: dict[str, Any], reverse: CaptureNames) -> ActionPlan:
        old, new = self.dw.source.table, self.dw.target
        do = [WriteLock((old,), self.step.max_lock_seconds), ReplayChanges(self.names.change_table, old, new),
              CaptureChanges(new, reverse.change_table, reverse.trigger, reverse.key, "target"),
              Switch(recorded["how"], switching.describe(recorded), switching.describe(recorded, back=True))]
        if self.step.disable_old_writes.read_only or self.step.disable_old_writes.revoke_from:
            do.append(GuardWrites(old, tuple(self.step.disable_old_writes.revoke_from)))
        undo = [Note(f"lock {new} against writes; replay its writes back into {old}; "
                     f"switch back: {switching.describe(recorded, back=True)}; drop the reverse capture")]
        extra = {"switch": recorded, "reverse_capture": reverse.to_json(),
                 "reverse_step": self.dw.reverse_step().model_dump(mode="json"),
                 "guard": {"read_only": self.step.disable_old_writes.read_only,
                           "roles": list(self.step.disable_old_writes.revoke_from)},
                 "forward_capture": self.names.to_json()}
        return ActionPlan("cutover", tuple(do), tuple(undo), transactional=False, extra=extra)

    def switch(self, before_lock: Callable[[], None] | None = None) -> SwitchReport:
        """Steps 1-3 of the module docstring. A no-op when this step already switched. ``before_lock`` runs after
        the catch-up, right before anything is recorded (the window check: the catch-up may have outlasted it)."""
        row = self._row()
        if row is not None and row.progress >= SWITCHED:
            recorded = row.actions.extra["switch"]
            log.info("%s: already switched by %s", self.where, row.by)
            return SwitchReport(switched=switching.describe(recorded), notes=[f"switched by {row.by}"])
        if row is not None and row.progress == MAYBE_SWITCHED:
            sent = switching.describe(row.actions.extra["switch"])
            raise CutoverFailed(
                f"{self.where}: an earlier try ({row.by}) sent the switch ({sent}) or was about to, and died before "
                f"it finished: the application may have written both tables since. "
                f"Not switching again: the rollback switches back to what was recorded before that try and replays the "
                f"new side's writes into the old table; run the cutover again afterwards")
        spec = self.forward.spec  # resolved before any lock: introspection needs its own connections
        self.forward.copier  # noqa: B018 - same
        self._check_reverse()
        reverse = self.reverse_names()
        lift_reverse_guard(self.ctx, self.dw)
        self.catch_up()
        if before_lock is not None:
            before_lock()
        with self.old_engine.connect() as conn:
            recorded = switching.prepare_switch(self.step.switch_reads, self.dw.source.table, self.dw.target, conn,
                                                self.old_sql, self.variables)
            conn.rollback()
        row_id, started = self.ctx.ledger.start(self.step.id, "apply", cutover_checksum(self.step),
                                                self._actions(recorded, reverse), self.ctx.who)
        with self.new_engine.begin() as conn:
            self.new_sql.drop(conn, reverse)  # a half-done earlier try of this same apply
            self.new_sql.install(conn, reverse)
        if self.step.disable_old_writes.read_only:
            with self.old_engine.begin() as conn:  # off until the lock switches it on
                self.old_sql.prepare_guard(conn, self.names)
        report = SwitchReport()
        try:
            if not self.atomic_switch:  # durable before the call: a rollback then switches back
                self.ctx.ledger.record_progress(row_id, MAYBE_SWITCHED)
            self._switch_under_lock(spec, recorded, row_id, report)
        except BaseException as exc:
            if not report.switch_sent and not self.atomic_switch:
                self.ctx.ledger.record_progress(row_id, 0)  # it failed before the call: nothing to switch back
            self._abandon(row_id, started, reverse, exc)
            raise
        self._after_switch(recorded, report)
        return report

    def _count(self, engine: Engine, table: Any, filter_sql: str | None) -> Any:
        dialect = dialect_for(engine)

        def count(conn: Connection | None) -> int:
            where = f" WHERE ({filter_sql})" if filter_sql else ""
            sql = f"SELECT count(*) FROM {_quoted(dialect, table())}{where}"
            if conn is not None:
                return int(conn.exec_driver_sql(sql).scalar() or 0)
            with engine.connect() as own:
                return int(own.exec_driver_sql(sql).scalar() or 0)
        return count

    def _switch_under_lock(self, spec: Any, recorded: dict[str, Any], row_id: int, report: SwitchReport) -> None:
        names = {"now": switching.names_after(recorded, False)}
        sides = (CountSide("old table", self.old_engine, dialect_for(self.old_engine),
                           self._count(self.old_engine, lambda: names["now"].old, self.dw.source.filter)),
                 CountSide("new table", self.new_engine, dialect_for(self.new_engine),
                           self._count(self.new_engine, lambda: names["now"].new, None)))
        lock_dialect = dialect_for(self.old_engine)
        in_database, atomic = self.step.switch_reads.in_database, self.atomic_switch

        def could_not_lock(exc: Exception) -> BaseException:
            return TransientCutoverFailed(f"{self.where}: could not lock {self.dw.source.table} against writes within "
                                          f"{self.step.max_lock_seconds:g} s: {db_error_line(exc)}; nothing was "
                                          f"switched (retried)")

        with ExitStack() as stack:
            counts = LockCounts(sides, stack, snapshots=not self.shared)
            self.ctx.lock.check()
            # a view switch locks the view too: a writer going through it then waits holding nothing we need
            locked = [self.dw.source.table] + ([recorded["view"]] if recorded["how"] == "view" else [])
            with lock_dialect.write_lock(self.old_engine, locked, self.step.max_lock_seconds,
                                         failed=could_not_lock) as lconn:
                t0 = time.monotonic()
                within = lconn if self.shared else None
                final = self.forward.drain(self.dw.replay.batch_changes, within=within)
                report.final_changes = final.changes
                counts.take((lconn if self.shared else None, lconn if self.shared else None))
                if self.shared:  # one connection, no snapshot to read later: compare now
                    self._compare_at_the_switch(lconn, self.forward, report, switched=False)
                held = time.monotonic() - t0
                if held > self.step.max_lock_seconds:
                    raise CutoverFailed(
                        f"{self.where}: the final replay and checks held the write lock on {self.dw.source.table} "
                        f"{held:.2f} s, "
                        f"over max_lock_seconds {self.step.max_lock_seconds:g} s ({final.changes:,} changes); "
                        f"nothing was switched. Run closer to the cutover with a smaller lag, or raise "
                        f"max_lock_seconds")
                if self.step.disable_old_writes.read_only:  # a write that waited for the lock fails, not lost
                    self.old_sql.guard_writes(lconn, self.names.on(names["now"].old), True)
                if atomic:
                    switching.switch(recorded, lconn, self.old_sql, self.variables)
                    self.ctx.ledger.record_progress(row_id, SWITCHED, conn=lconn)  # one database: atomic with it
                else:
                    # where DDL is not transactional, a view or rename commits the lock's transaction (the guard
                    # with it: a write that waited is refused) and then switches in one statement
                    report.switch_sent = True
                    switching.switch(recorded, lconn if in_database else None, self.old_sql if in_database else None,
                                     self.variables)
                report.lock_seconds = time.monotonic() - t0
            if not atomic:
                self.ctx.ledger.record_progress(row_id, SWITCHED)
            names["now"] = switching.names_after(recorded, True)
            report.old_rows, report.new_rows = counts.finish()
            report.counted = counts.when
            snapshot = counts.snapshot_connection(0)
            if snapshot is not None and self.forward.spec.same_database:
                self._compare_at_the_switch(snapshot, self._forward_now(recorded), report, switched=True)
        report.switched = switching.describe(recorded)
        log.info("%s: switched (%s); write lock on %s held %.3f s (max %g s), final replay %s changes; rows: old %s, "
                 "new %s (%s)", self.where, report.switched, self.dw.source.table, report.lock_seconds,
                 self.step.max_lock_seconds, f"{report.final_changes:,}", f"{report.old_rows:,}",
                 f"{report.new_rows:,}", report.counted)
        if report.old_rows != report.new_rows:
            raise CutoverFailed(f"{self.where}: row counts differ at the switch: old {report.old_rows:,}, new "
                                f"{report.new_rows:,} ({report.counted}); rolling back switches reads back")

    def _abandon(self, row_id: int, started: Any, reverse: CaptureNames, exc: BaseException) -> None:
        """The switch did not happen: drop the reverse capture and close the ledger row (if not switched)."""
        row = next((r for r in self.ctx.ledger.rows(self.step.id) if r.id == row_id), None)
        if row is not None and row.progress >= 1:
            return  # switched: the rollback switches back
        try:
            with self.new_engine.begin() as conn:
                self.new_sql.drop(conn, reverse)
            with self.old_engine.begin() as conn:  # prepared for the lock (off), or rolled back with it
                self.old_sql.guard_writes(conn, self.names, False)
        except sa_exc.SQLAlchemyError as drop_exc:
            log.error("%s: could not drop the reverse capture %s: %s", self.where, reverse.change_table, drop_exc)
        self.ctx.ledger.finish(row_id, "failed", started_at=started, error=str(exc).splitlines()[0][:500])

    def _after_switch(self, recorded: dict[str, Any], report: SwitchReport) -> None:
        """Writes that reached the old table after all (a statement that waited for the lock): replay them now."""
        totals = self._forward_now(recorded).drain(self.dw.replay.batch_changes)
        report.stragglers = totals.changes
        if totals.changes:
            log.warning("%s: %s write(s) reached the old table after the switch and were replayed", self.where,
                        f"{totals.changes:,}")

    # -- smoke -----------------------------------------------------------------------------------------
    def smoke(self) -> list[str]:
        lines = []
        for check in self.step.smoke:
            if check.sql is not None:
                with self.new_engine.connect() as conn:
                    try:
                        row = conn.exec_driver_sql(dialect_for(self.new_engine).fragment(check.sql)).first()
                    except sa_exc.SQLAlchemyError as exc:
                        raise CutoverFailed(f"{self.where}: smoke check '{check.name}' failed: "
                                            f"{db_error_line(exc)}") from exc
                    conn.rollback()
                if row is None or not row[0]:
                    value = row[0] if row else None
                    raise CutoverFailed(f"{self.where}: smoke check '{check.name}' returned {value!r} (not truthy) "
                                        f"right after the switch: rolling back switches reads back")
                lines.append(f"{check.name}: ok")
            else:
                assert check.http is not None
                status = switching.call_http(check.http, f"smoke check '{check.name}'")
                lines.append(f"{check.name}: HTTP {status}")
        for line in lines:
            log.info("%s: smoke %s", self.where, line)
        return lines

    # -- disable old writes ----------------------------------------------------------------------------
    def disable_old_writes(self) -> list[str]:
        """Replay the last old-side writes, drop the forward capture, make the old table read-only; applied."""
        row = self._row()
        if row is None or row.progress < SWITCHED:
            raise CutoverFailed(f"{self.where}: reads were not switched (the switch task did not finish): nothing "
                                f"to disable")
        if row.status == "applied":
            return [f"already done by {row.by}"]
        recorded = row.actions.extra["switch"]
        now = switching.names_after(recorded, True)
        totals = self._forward_now(recorded).drain(self.dw.replay.batch_changes)
        notes = [f"replayed {totals.changes:,} last change(s) from the old table"]
        guard = self.step.disable_old_writes
        with self.old_engine.begin() as conn:
            self.old_sql.drop(conn, self.names)
            notes.append(f"dropped the capture on {now.old}")
            if guard.read_only:
                self.old_sql.guard_writes(conn, self.names.on(now.old), True)
                notes.append(f"{now.old} is read-only (since the switch)")
            if guard.revoke_from:
                self.old_sql.revoke_writes(conn, now.old, list(guard.revoke_from), grant_back=False)
                notes.append(f"revoked writes on {now.old} from {', '.join(guard.revoke_from)}")
        self.ctx.ledger.finish(row.id, "applied", started_at=as_utc(row.started_at), verified=json.dumps(notes))
        for note in notes:
            log.info("%s: %s", self.where, note)
        return notes

    # -- rollback ------------------------------------------------------------------------------------------
    def revert(self, applied: HistoryRow) -> StepResult:
        return revert_cutover(self.ctx, applied, self.variables)


def revert_cutover(ctx: RunContext, applied: HistoryRow, variables: Any = None) -> StepResult:
    """Switch back with no write lost: lock the new table, replay its writes into the old table, switch back,
    release; replay stragglers; drop the reverse capture; lift the old table's guard. From the ledger row alone."""
    t0 = time.monotonic()
    extra = applied.actions.extra
    recorded, where = extra["switch"], f"cutover '{applied.step_id}'"
    old_engine, new_engine = ctx.source_or_target, ctx.engine
    old_sql, new_sql = capture_sql(dialect_for(old_engine)), capture_sql(dialect_for(new_engine))
    # a retry after a rename was switched back (and the revert failed later) finds the original names again
    still_switched = recorded["how"] != "rename" or _table_exists(old_engine, recorded["old_table_becomes"])
    now = switching.names_after(recorded, still_switched)
    reverse = CaptureNames.from_json(extra["reverse_capture"])
    forward = CaptureNames.from_json(extra["forward_capture"]).on(now.old)
    notes: list[str] = []
    row_id, started = ctx.ledger.start(applied.step_id, "revert", applied.checksum, applied.actions, ctx.who)
    try:
        guard = extra["guard"]
        notes += _recapture_old_table(forward, old_engine, old_sql)  # before the guard lifts
        with old_engine.begin() as conn:
            old_sql.guard_writes(conn, forward, False)
            if guard["roles"]:
                old_sql.revoke_writes(conn, now.old, guard["roles"], grant_back=True)
        reverse_step = BackfillStep.model_validate(extra["reverse_step"])
        during = _renamed(reverse_step, now.new, now.old)
        reverse_guard = reverse.on(now.new)
        slot = REVERSE_SLOT if ctx.source is None else None  # checkpoints live in the ledger's database only
        replayer = Replayer(ctx.plan_id, during, reverse, new_engine, old_engine, slot,
                            f"{where}: replay back ({now.new} → {now.old})")
        replayer.spec  # noqa: B018 - resolved before the lock
        shared = replayer.spec.same_database and replayer.spec.tgt.single_writer
        lock_dialect = dialect_for(new_engine)
        with new_engine.begin() as conn:  # off until the lock below switches it on
            new_sql.prepare_guard(conn, reverse_guard)
        with lock_dialect.write_lock(new_engine, [now.new], 60.0) as lconn:
            totals = replayer.drain(reverse_step.batch.rows, within=lconn if shared else None)
            notes.append(f"replayed {totals.changes:,} write(s) made on the new side back into {now.old}")
            # a write that waited for the lock fails, not lost
            new_sql.guard_writes(lconn, reverse_guard, True, message=f"{now.new} is a migration's new table and the "
                                 f"migration is rolling back: write to the old table ({recorded['old_table']} once "
                                 f"the rollback is done)")
            if not still_switched:
                notes.append("the names were swapped back by an earlier try")
            else:
                in_database = recorded["how"] in ("view", "rename")
                switching.switch(recorded, lconn if in_database else None, old_sql if in_database else None,
                                 variables, back=True)
                notes.append(f"switched back: {switching.describe(recorded, back=True)}")
        after = Replayer(ctx.plan_id, reverse_step, reverse, new_engine, old_engine, slot,
                         f"{where}: replay back ({reverse_step.source.table} → {reverse_step.target})")
        late = after.drain(reverse_step.batch.rows)
        if late.changes:
            notes.append(f"replayed {late.changes:,} late write(s) back")
        with new_engine.begin() as conn:
            # the guard stays: a write the application still sends to the new table (it read the switch just
            # before it flipped back) must fail, not land where the dual_write revert then deletes it
            new_sql.drop(conn, reverse)
        notes.append(f"dropped the reverse capture on {reverse_step.source.table}; it refuses writes until the "
                     f"dual_write step's revert empties it")
    except (sa_exc.SQLAlchemyError, CutoverFailed) as exc:
        line = db_error_line(exc) if isinstance(exc, sa_exc.SQLAlchemyError) else str(exc)
        ctx.ledger.finish(row_id, "failed", started_at=started, error=line)
        raise CutoverFailed(f"{where}: switching back failed: {line}. Done so far: {'; '.join(notes) or 'nothing'}. "
                            f"Fix the cause and clear the rollback task to retry") from exc
    ctx.ledger.finish(row_id, "reverted", started_at=started, verified=json.dumps(notes))
    for note in notes:
        log.info("%s reverted: %s", where, note)
    return StepResult(applied.step_id, "reverted", time.monotonic() - t0, len(notes), notes)


def drop_reverse_capture(ctx: RunContext, applied: HistoryRow) -> list[str]:
    """The run succeeded: nothing will be replayed back; drop the reverse capture (and any guard) on the new table."""
    reverse = CaptureNames.from_json(applied.actions.extra["reverse_capture"])
    now = switching.names_after(applied.actions.extra["switch"], True)
    sql = capture_sql(dialect_for(ctx.engine))
    with ctx.engine.begin() as conn:
        sql.guard_writes(conn, reverse.on(now.new), False)
        sql.drop(conn, reverse)
    return [f"dropped the reverse capture on {now.new} ({reverse.change_table}): the run can no longer roll back"]


def revert_unswitched(ctx: RunContext, applied: HistoryRow) -> StepResult:
    """A cutover that never switched (it failed before): drop its reverse capture."""
    reverse = CaptureNames.from_json(applied.actions.extra["reverse_capture"])
    row_id, started = ctx.ledger.start(applied.step_id, "revert", applied.checksum, applied.actions, ctx.who)
    with ctx.engine.begin() as conn:
        capture_sql(dialect_for(ctx.engine)).drop(conn, reverse)
        note = "never switched; dropped the reverse capture"
        ctx.ledger.finish(row_id, "reverted", started_at=started, verified=json.dumps([note]), conn=conn)
    return StepResult(applied.step_id, "reverted", 0.0, 1, [note])


def _recapture_old_table(forward: CaptureNames, old_engine: Engine, old_sql: CaptureSql) -> list[str]:
    """The cutover dropped the old table's capture (disable_old_writes): put it back before switching back, so
    the dual_write step, still applied until its own revert, captures the application's writes again."""
    with old_engine.begin() as conn:
        if old_sql.triggers_exist(conn, forward):
            return []
        old_sql.drop(conn, forward)
        old_sql.install(conn, forward)
    return [f"capturing writes to {forward.table} again (the dual_write step is still applied)"]


def _table_exists(engine: Engine, table: str) -> bool:
    from sqlalchemy import inspect

    schema, _, name = table.rpartition(".")
    return inspect(engine).has_table(name, schema=schema or None)


def _renamed(step: BackfillStep, source_table: str, target_table: str) -> BackfillStep:
    """The reverse copy with the tables' current names (a rename switch has swapped them)."""
    data = step.model_dump(mode="json")
    data["source"]["table"], data["target"] = source_table, target_table
    return BackfillStep.model_validate(data)


def _key_tuple(key: Any) -> tuple[Any, ...]:
    return tuple(key) if isinstance(key, (list, tuple)) else (key,)


__all__ = ["FORWARD_SLOT", "Cutover", "SwitchReport", "revert_cutover"]
