"""The ``dual_write`` step kind: capture the old table's writes, copy its history, replay the captured changes
into the new table until it has caught up; reverted by dropping the capture and emptying the new table."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.actions import (
    ActionPlan,
    CaptureChanges,
    CopyRange,
    DeleteRows,
    DropCapture,
    ReplayChanges,
)
from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.kinds.base import StepKind, TaskShape, TaskSpec, digest
from airflow_migrate_provider.core.kinds.registry import register
from airflow_migrate_provider.core.ledger import HistoryRow, Ledger, as_utc
from airflow_migrate_provider.core.step_result import StepResult
from airflow_migrate_provider.errors import CaptureError, TransientCaptureError, db_error_line
from airflow_migrate_provider.plan.model import DualWriteStep

if TYPE_CHECKING:
    from airflow_migrate_provider.core.capture.history import HistoryCopy
    from airflow_migrate_provider.core.capture.replay import Replayer, ReplayTotals
    from airflow_migrate_provider.core.dialects import Dialect
    from airflow_migrate_provider.core.dialects.capture import CaptureNames

log = logging.getLogger(__name__)

FORWARD_SLOT, REVERSE_SLOT = -2, -3  # checkpoint rows of the forward and reverse replays


def capture_names(plan_id: str, step: DualWriteStep) -> CaptureNames:
    from airflow_migrate_provider.core.dialects.capture import CaptureNames

    return CaptureNames.of(plan_id, step.id, "forward", step.source.table, step.source_key())


def forward_replayer(ctx: RunContext, step: DualWriteStep) -> Replayer:
    """Old table (source) → new table (target), through the step's transform."""
    from airflow_migrate_provider.core.capture.replay import Replayer

    return Replayer(ctx.plan_id, step.history_step(), capture_names(ctx.plan_id, step), ctx.source_or_target,
                    ctx.engine, FORWARD_SLOT, f"replay '{step.id}' ({step.source.table} → {step.target})")


def lift_reverse_guard(ctx: RunContext, step: DualWriteStep) -> None:
    """A rolled-back cutover leaves the new table refusing writes until this step is reverted too; when this step
    stays applied (applied by an earlier run) its replay, and the next cutover, must write there again."""
    from airflow_migrate_provider.core.dialects import dialect_for
    from airflow_migrate_provider.core.dialects.capture import CaptureNames, capture_sql

    reverse = CaptureNames.of(ctx.plan_id, step.id, "reverse", step.target, step.key)
    with ctx.engine.begin() as conn:
        capture_sql(dialect_for(ctx.engine)).guard_writes(conn, reverse, False)


def history_copy(ctx: RunContext, step: DualWriteStep) -> HistoryCopy:
    from airflow_migrate_provider.core.capture.history import HistoryCopy

    return HistoryCopy(ctx.plan_id, step.history_step(), ctx.source_or_target, ctx.engine, ctx.ledger, ctx.who,
                       ctx.lock, sleep=ctx.sleep, can_defer=ctx.can_defer)


def caught_up(step: DualWriteStep, changes: int, age_s: float) -> bool:
    return changes <= step.catch_up.max_lag_changes and age_s <= step.catch_up.max_lag_seconds


def _actions(plan_id: str, step: DualWriteStep) -> ActionPlan:
    names = capture_names(plan_id, step)
    capture = CaptureChanges(step.source.table, names.change_table, names.trigger, names.key)
    history = CopyRange(step.source.table, step.target, tuple(step.key), tuple(step.columns.items()),
                        step.source.filter)
    return ActionPlan("dual_write", (capture, history, ReplayChanges(names.change_table, step.source.table,
                                                                      step.target)),
                      (DeleteRows(step.target, "the table was empty when the history copy began"),
                       *capture.reverse()), transactional=False)


@register
class DualWriteKind(StepKind[DualWriteStep]):
    name = "dual_write"
    operator = "DualWriteOperator"
    model = DualWriteStep
    restore_replaces_revert = False  # the old table holds the application's writes made during the run

    def checksum(self, step: DualWriteStep) -> str:
        return digest(step.model_dump(mode="json", include={"source", "target", "key", "columns",
                                                            "reverse_columns"}))

    def plan_actions(self, step: DualWriteStep, dialect: Dialect) -> ActionPlan:
        return _actions("<plan>", step)

    def touched_tables(self, step: DualWriteStep, dialect: str) -> list[str]:
        return [step.target]  # the old table stays the application's: a restore must never undo its writes

    def needs_apply_before(self, row: HistoryRow | None) -> bool:
        return row is None or row.status != "applied"

    def task_shape(self, step: DualWriteStep) -> TaskShape:
        """capture → start → copy_chunk (mapped) → replay → catch_up."""
        src, tgt = step.source.table, step.target
        lag = f"{step.catch_up.max_lag_changes:,} changes and {step.catch_up.max_lag_seconds:g} s"
        return TaskShape((
            TaskSpec("capture", self.operator, {"phase": "capture"}, describe=(
                f"checks {src} has a primary key and {tgt} is empty; installs triggers on {src} that record every "
                f"insert, update and delete (by key) in a change table; records in the ledger when capture began",)),
            TaskSpec("start", self.operator, {"phase": "start"}, describe=(
                f"splits the history of {src} (rows up to the max key now) into {step.chunks} chunk(s)",)),
            TaskSpec("copy_chunk", self.operator, {"phase": "chunk"}, mapped_over="start", map_arg="chunk",
                     map_label="label", describe=(
                         f"copies one key range of {src} into {tgt} through the transform, a checkpoint per batch",)),
            TaskSpec("replay", self.operator, {"phase": "replay"}, describe=(
                f"replays the bulk of the changes captured meanwhile into {tgt} in batches of "
                f"{step.replay.batch_changes:,}, until at most one batch (or the threshold) is left",)),
            TaskSpec("catch_up", self.operator, {"phase": "catch_up"}, describe=(
                f"deferred on the triggerer: keeps replaying, logging the lag every {step.catch_up.poll_seconds:g} s, "
                f"until it is under {lag} (fails after {step.catch_up.timeout_minutes:g} min)",)),
        ), group_tooltip=f"dual write {src} → {tgt}: capture, history, replay, catch-up")

    def describe(self, step: DualWriteStep, dialect: Dialect | None) -> list[str]:
        return [line for task in self.task_shape(step).tasks for line in task.describe]

    # -- phases -------------------------------------------------------------------------------------
    def capture(self, ctx: RunContext, step: DualWriteStep) -> dict[str, Any]:
        """Install capture (or find it installed by this step's current apply): the first phase."""
        row = ctx.ledger.applied().get(step.id)
        checksum = self.checksum(step)
        if row is not None and row.checksum != checksum:
            from airflow_migrate_provider.errors import ChecksumMismatch

            raise ChecksumMismatch(ctx.plan_id, step.id, row.checksum, checksum, row.by)
        names = capture_names(ctx.plan_id, step)
        source = ctx.source_or_target
        if row is not None and row.status == "applied":
            log.info("dual_write '%s' is applied (by %s): nothing to capture", step.id, row.by)
            return {"step": step.id, "change_table": names.change_table, "already": True}
        from airflow_migrate_provider.core.dialects import dialect_for
        from airflow_migrate_provider.core.dialects.capture import capture_sql

        sql = capture_sql(dialect_for(source))
        with source.connect() as conn:
            installed = sql.triggers_exist(conn, names)
            leftover = _has_table(conn, names.change_table)
            conn.rollback()
        if row is not None and installed:
            log.info("dual_write '%s': capture already installed by %s", step.id, row.by)
            return {"step": step.id, "change_table": names.change_table, "already": True}
        if leftover and row is None:
            raise CaptureError(_leftover_message(ctx.ledger, step, names))
        _check_tables(ctx, step, source)
        actions = _actions(ctx.plan_id, step)
        row_id, _ = ctx.ledger.start(step.id, "apply", checksum, actions, ctx.who)
        ctx.ledger.record_progress(row_id, 1)  # from here on it counts as applied: a rollback drops the capture
        try:
            with source.begin() as conn:
                sql.drop(conn, names)  # a half-installed capture of this same apply
                sql.install(conn, names)
        except sa_exc.SQLAlchemyError as exc:
            raise _db_failure(f"dual_write '{step.id}': installing capture on {step.source.table} failed", exc,
                              source) from exc
        log.info("dual_write '%s': capturing writes to %s into %s (triggers %s_*)", step.id, step.source.table,
                 names.change_table, names.trigger)
        return {"step": step.id, "change_table": names.change_table, "already": False}

    def replay(self, ctx: RunContext, step: DualWriteStep, *, deadline: float | None = None,
               bulk: bool = False) -> ReplayTotals:
        """Replay until caught up (or ``deadline``); checks the run lock before every batch. ``bulk``: stop once
        at most a batch (or the threshold) is left, the rest being the catch-up's."""
        _require_capture(ctx, step)
        lift_reverse_guard(ctx, step)
        replayer = forward_replayer(ctx, step)
        left = max(step.replay.batch_changes, step.catch_up.max_lag_changes)

        def done(changes: int, age: float) -> bool:
            return changes <= left if bulk else caught_up(step, changes, age)

        try:
            totals = replayer.replay_until(step.replay.batch_changes, done, deadline=deadline, check=ctx.lock.check)
        except sa_exc.SQLAlchemyError as exc:
            raise _db_failure(f"{replayer.label}: a batch failed", exc, replayer.source, replayer.target) from exc
        log.info("%s: %s", replayer.label, totals.line())
        return totals

    def finish(self, ctx: RunContext, step: DualWriteStep, totals: ReplayTotals) -> StepResult:
        """Caught up: the step counts as applied (its capture stays on until the cutover)."""
        row = ctx.ledger.applied().get(step.id)
        if row is not None and row.status != "applied":
            note = f"caught up: {totals.line()}"
            ctx.ledger.finish(row.id, "applied", started_at=as_utc(row.started_at), verified=json.dumps([note]))
        return StepResult(step.id, "applied", totals.seconds, totals.batches, [totals.line()])

    def apply(self, ctx: RunContext, step: DualWriteStep) -> StepResult:
        """Every phase in one call (outside Airflow): capture, history, replay until caught up."""
        t0 = time.monotonic()
        row = ctx.ledger.applied().get(step.id)
        if row is not None and row.status == "applied":
            return StepResult(step.id, "already_applied", 0.0, 0, [f"already applied by {row.by}"])
        self.capture(ctx, step)
        copied = history_copy(ctx, step).copy_all()
        deadline = time.monotonic() + step.catch_up.timeout_minutes * 60
        totals = self.replay(ctx, step, deadline=deadline)
        if not caught_up(step, totals.lag_changes, totals.lag_seconds):
            raise CaptureError(_not_caught_up(step, totals))
        result = self.finish(ctx, step, totals)
        result.verified.insert(0, f"history: {copied:,} rows copied")
        result.duration_s = time.monotonic() - t0
        return result

    def capturing(self, ctx: RunContext, step: DualWriteStep) -> bool:
        """Whether the step's change capture is installed (a cutover's disable_old_writes drops it)."""
        with ctx.source_or_target.connect() as conn:
            return _has_table(conn, capture_names(ctx.plan_id, step).change_table)

    def verify(self, ctx: RunContext, step: DualWriteStep) -> StepResult:
        """Read-only: the new table exists; while capture is on, the replay lag."""
        if not self.capturing(ctx, step):  # a cutover took over (and may have renamed the tables)
            return StepResult(step.id, "verified", 0.0, 0, ["capture is off (the cutover disabled it)"])
        with ctx.engine.connect() as conn:
            if not _has_table(conn, step.target):
                raise CaptureError(f"dual_write '{step.id}': the new table '{step.target}' does not exist")
        changes, age = forward_replayer(ctx, step).lag()
        return StepResult(step.id, "verified", 0.0, 0, [f"capture on; lag {changes:,} changes, oldest {age:.1f} s"])

    def revert(self, ctx: RunContext, applied: HistoryRow) -> StepResult:
        """Drop the capture and empty the new table (it was empty when the history copy began)."""
        from airflow_migrate_provider.core.backfill.state import Checkpoints
        from airflow_migrate_provider.core.dialects import dialect_for
        from airflow_migrate_provider.core.dialects.capture import CaptureNames, capture_sql

        t0 = time.monotonic()
        capture = next(a for a in applied.actions.undo if isinstance(a, DropCapture))
        table = next(a.table for a in applied.actions.undo if isinstance(a, DeleteRows))
        names = CaptureNames(capture.table, capture.change_table, capture.trigger, tuple(capture.key))
        row_id, started = ctx.ledger.start(applied.step_id, "revert", applied.checksum, applied.actions, ctx.who)
        try:
            with ctx.source_or_target.begin() as conn:
                capture_sql(dialect_for(ctx.source_or_target)).drop(conn, names)
            reverse = CaptureNames.of(ctx.plan_id, applied.step_id, "reverse", table, _key_of(applied))
            with ctx.engine.begin() as conn:
                new_side = capture_sql(dialect_for(ctx.engine))  # a cutover that died before it recorded a switch
                new_side.drop(conn, reverse)
                new_side.guard_writes(conn, reverse, False)  # lifted in the transaction that empties the table
                deleted = _empty(conn, table)
                Checkpoints(ctx.plan_id, applied.step_id).clear(conn)
                notes = [f"dropped the capture on {capture.table} ({capture.change_table})",
                         f"deleted the {deleted:,} rows copied into '{table}'" if deleted is not None else
                         f"table '{table}' no longer exists; nothing to delete"]
                ctx.ledger.finish(row_id, "reverted", started_at=started, verified=json.dumps(notes), conn=conn)
            with ctx.engine.begin() as conn:  # a guard switched off by a row change leaves objects (MySQL)
                new_side.drop(conn, reverse)
        except sa_exc.SQLAlchemyError as exc:
            ctx.ledger.finish(row_id, "failed", started_at=started, error=db_error_line(exc))
            raise CaptureError(f"dual_write '{applied.step_id}': revert failed: {db_error_line(exc)}") from exc
        log.info("dual_write '%s' reverted: %s", applied.step_id, "; ".join(notes))
        return StepResult(applied.step_id, "reverted", time.monotonic() - t0, 2, notes)

    def after_restore(self, conn: Connection, ledger: Ledger, step_id: str) -> None:
        from airflow_migrate_provider.core.backfill.state import Checkpoints

        Checkpoints(ledger.plan_id, step_id).clear(conn)

    def progress(self, ledger: Ledger, step: DualWriteStep) -> str:
        from airflow_migrate_provider.core.kinds.backfill import backfill_progress

        return backfill_progress(ledger, step.id)


# -- helpers ----------------------------------------------------------------------------------------
def _key_of(applied: HistoryRow) -> list[str]:
    """The new table's key columns, as recorded by the history copy action."""
    return list(next(a.key for a in applied.actions.do if isinstance(a, CopyRange)))


def _has_table(conn: Connection, table: str) -> bool:
    schema, _, name = table.rpartition(".")
    return inspect(conn).has_table(name, schema=schema or None)


def _empty(conn: Connection, table: str) -> int | None:
    if not _has_table(conn, table):
        return None
    quoted = ".".join(conn.dialect.identifier_preparer.quote_identifier(p) for p in table.split("."))
    return int(conn.exec_driver_sql(f"DELETE FROM {quoted}").rowcount or 0)


def _db_failure(message: str, exc: sa_exc.SQLAlchemyError, *engines: Engine) -> CaptureError:
    from airflow_migrate_provider.core.dialects import is_transient

    transient = any(is_transient(e, exc) for e in engines)
    cls = TransientCaptureError if transient else CaptureError
    return cls(f"{message}: {db_error_line(exc)}" + (" (retried: it resumes from its checkpoint)" if transient
                                                       else ""))


def _check_tables(ctx: RunContext, step: DualWriteStep, source: Engine) -> None:
    """Before capture: the old table has a primary key covering the key columns; the new table is empty."""
    schema, _, name = step.source.table.rpartition(".")
    insp = inspect(source)
    if not insp.has_table(name, schema=schema or None):
        raise CaptureError(f"steps.{step.id}.source.table: table '{step.source.table}' does not exist in the "
                           f"source database")
    pk = set(insp.get_pk_constraint(name, schema=schema or None).get("constrained_columns") or [])
    if not pk or not pk <= set(step.source_key()):
        raise CaptureError(
            f"steps.{step.id}.source.table: '{step.source.table}' has "
            + (f"primary key ({', '.join(sorted(pk))})" if pk else "no primary key")
            + f", but the step's key maps to its columns ({', '.join(step.source_key())}). Captured changes name "
            f"rows by key, so the old table needs a primary key made of those columns: add one (e.g. `ALTER TABLE "
            f"{step.source.table} ADD PRIMARY KEY (...)`) or change `key`.")
    with ctx.engine.connect() as conn:
        if not _has_table(conn, step.target):
            raise CaptureError(f"steps.{step.id}.target: table '{step.target}' does not exist in the target: create "
                               f"it in an earlier schema step")
        quoted = ".".join(conn.dialect.identifier_preparer.quote_identifier(p) for p in step.target.split("."))
        existing = conn.exec_driver_sql(f"SELECT count(*) FROM {quoted}").scalar()
    if existing:
        raise CaptureError(f"steps.{step.id}.target: table '{step.target}' already has {existing:,} rows. The "
                           f"history copy fills an empty table, so that a rollback removes exactly what it copied")


def _leftover_message(ledger: Ledger, step: DualWriteStep, names: CaptureNames) -> str:
    owners = [r for r in ledger.rows(step.id) if r.action == "apply"]
    owner = (f"it was created by {owners[-1].by} (ledger: apply {owners[-1].status}, started "
             f"{owners[-1].started_at:%Y-%m-%d %H:%M:%S} UTC)" if owners else
             "no row of this plan's ledger owns it (left by a run whose ledger was removed?)")
    return (f"dual_write '{step.id}': change table {names.change_table} already exists on {step.source.table}; "
            f"{owner}. Another run's capture may still be in use: roll that run back (clear its rollback task), or, "
            f"if it is dead and abandoned, drop its triggers ({names.trigger}_*) and the change table by hand")


def _require_capture(ctx: RunContext, step: DualWriteStep) -> None:
    from airflow_migrate_provider.core.dialects import dialect_for
    from airflow_migrate_provider.core.dialects.capture import capture_sql

    names = capture_names(ctx.plan_id, step)
    with ctx.source_or_target.connect() as conn:
        ok = capture_sql(dialect_for(ctx.source_or_target)).triggers_exist(conn, names)
    if not ok:
        raise CaptureError(f"dual_write '{step.id}': no capture on {step.source.table} (rolled back meanwhile?): "
                           f"clear the step's capture task to start again")


def _not_caught_up(step: DualWriteStep, totals: ReplayTotals) -> str:
    return (f"dual_write '{step.id}': still {totals.lag_changes:,} changes behind (oldest {totals.lag_seconds:.1f} s) "
            f"after {step.catch_up.timeout_minutes:g} min (threshold {step.catch_up.max_lag_changes:,} changes, "
            f"{step.catch_up.max_lag_seconds:g} s); {totals.line()}. Writes arrive faster than the replay: raise "
            f"replay.batch_changes, throttle the writers, or raise the threshold")
