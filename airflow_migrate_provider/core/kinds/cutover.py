"""The ``cutover`` step kind: switch the application from the old table to the new one a ``dual_write`` step
keeps in sync (verify → approve → window → catch up → switch under a brief lock → smoke → disable old writes);
reverted by switching back with every write made on the new side replayed into the old table."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_migrate_provider.core.actions import (
    ActionPlan,
    CaptureChanges,
    GuardWrites,
    ReplayChanges,
    Switch,
    WriteLock,
)
from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.kinds.base import StepKind, TaskShape, TaskSpec
from airflow_migrate_provider.core.kinds.registry import register
from airflow_migrate_provider.core.ledger import HistoryRow
from airflow_migrate_provider.core.step_result import StepResult
from airflow_migrate_provider.errors import CutoverDeferral, CutoverFailed
from airflow_migrate_provider.plan.model import CutoverStep

if TYPE_CHECKING:
    from airflow_migrate_provider.core.capture.cutover import Cutover
    from airflow_migrate_provider.core.dialects import Dialect

log = logging.getLogger(__name__)


def cutover_of(ctx: RunContext, step: CutoverStep) -> Cutover:
    from airflow_migrate_provider.core.capture.cutover import Cutover

    if ctx.plan is None:
        raise CutoverFailed(f"cutover '{step.id}' needs its plan (to find dual_write step '{step.dual_write}')")
    return Cutover(ctx, step, ctx.plan.step(step.dual_write), ctx.variables)


def _how(step: CutoverStep) -> tuple[str, str]:
    spec = step.switch_reads
    if spec.view is not None:
        return f"view {spec.view.name} reads the new table", f"view {spec.view.name} reads the old table again"
    if spec.rename is not None:
        return (f"old table → {spec.rename.old_table_becomes}, new table takes the old name",
                "names swapped back")
    if spec.variable is not None:
        return f"Airflow Variable {spec.variable.key} = {spec.variable.value!r}", "the Variable's previous value"
    assert spec.http is not None
    return (f"HTTP {spec.http.switch.method} {spec.http.switch.url.split('?', 1)[0]}",
            f"HTTP {spec.http.switch_back.method} {spec.http.switch_back.url.split('?', 1)[0]}")


@register
class CutoverKind(StepKind[CutoverStep]):
    name = "cutover"
    operator = "CutoverOperator"
    model = CutoverStep
    restore_replaces_revert = False  # the new table holds the application's writes since the switch

    def checksum(self, step: CutoverStep) -> str:
        from airflow_migrate_provider.core.capture.cutover import cutover_checksum

        return cutover_checksum(step)

    def plan_actions(self, step: CutoverStep, dialect: Dialect) -> ActionPlan:
        do, back = _how(step)
        old, new = f"<old table of {step.dual_write}>", f"<new table of {step.dual_write}>"
        actions = [WriteLock((old,), step.max_lock_seconds), ReplayChanges("<its change table>", old, new),
                   CaptureChanges(new, "<reverse change table>", "<reverse triggers>", ("<key>",), "target"),
                   Switch(step.switch_reads.how, do, back)]
        if step.disable_old_writes.read_only or step.disable_old_writes.revoke_from:
            actions.append(GuardWrites(old, tuple(step.disable_old_writes.revoke_from)))
        return ActionPlan("cutover", tuple(actions), transactional=False)

    def needs_apply_before(self, row: HistoryRow | None) -> bool:
        return row is None or row.status != "applied"

    def task_shape(self, step: CutoverStep) -> TaskShape:
        do, back = _how(step)
        tasks = [TaskSpec("verify", self.operator, {"phase": "consistency"}, describe=(
            f"compares the tables of '{step.dual_write}' row by row while writes continue (one EXCEPT query each way "
            f"in one database, checksums with drill-down across two); keys with changes still being replayed are in "
            f"flight, any other difference fails (nothing switched)",))]
        if step.approval:
            request = {"subject": f"Approve the cutover '{step.id}' (switch to the new table of '{step.dual_write}')?",
                       "body": f"Cutover **`{step.id}`** switches the application from the old table to the new one "
                               f"kept in sync by `{step.dual_write}`: {step.description or 'no description'}\n\n"
                               f"**Approve**: catch up, then a write lock of at most {step.max_lock_seconds:g} s on "
                               f"the old table, the final replay and the switch ({do}).",
                       "summary_from": "verify"}
            tasks.append(TaskSpec("approve", "ApprovalOperator", {"approval": request}, describe=(
                "holds for a person's approval in the Airflow UI; its body summarises the verification; a rejection "
                "or no answer fails the run, which rolls back (nothing switched)",)))
        if step.window is not None:
            w = step.window
            tasks.append(TaskSpec("wait_window", self.operator, {"phase": "wait_window"}, describe=(
                f"waits, deferred, for the window {', '.join(w.days)} {w.start}-{w.end} {w.timezone}; does not start "
                f"a cutover it cannot finish before the window closes ({w.outside} outside it)",)))
        tasks += [
            TaskSpec("catch_up", "DualWriteOperator", {"phase": "catch_up", "step_id": step.dual_write}, describe=(
                f"deferred on the triggerer: replays until the lag of '{step.dual_write}' is under its threshold",)),
            TaskSpec("switch", self.operator, {"phase": "switch"}, describe=(
                "installs reverse capture on the new table (writes made there after the switch can go back on "
                "rollback); locks the old table against writes, replays the last delta, switches: " + do
                + f"; releases (fails and rolls back past max_lock_seconds {step.max_lock_seconds:g} s); counts both "
                "tables at the lock's snapshot after releasing it",))]
        if step.smoke:
            tasks.append(TaskSpec("smoke", self.operator, {"phase": "smoke"}, describe=tuple(
                f"smoke check '{c.name}': " + (c.sql or f"HTTP {c.http.method} {c.http.url.split('?', 1)[0]}")  # type: ignore[union-attr]
                for c in step.smoke)))
        guard = step.disable_old_writes
        tasks.append(TaskSpec("disable_old_writes", self.operator, {"phase": "disable_old_writes"}, describe=(
            "replays the last writes that reached the old table, drops its capture"
            + (" (it refuses writes since the switch: a trigger installed under the lock)" if guard.read_only else "")
            + (f", revokes writes from {', '.join(guard.revoke_from)}" if guard.revoke_from else ""),
            f"on rollback: lock the new table, replay its writes into the old one, switch back ({back})")))
        return TaskShape(tuple(tasks), group_tooltip=f"cutover of {step.dual_write}: verify, approve, switch")

    def describe(self, step: CutoverStep, dialect: Dialect | None) -> list[str]:
        return [line for task in self.task_shape(step).tasks for line in task.describe]

    def window_check(self, step: CutoverStep, ctx: RunContext, now: datetime | None = None) -> None:
        """Raise CutoverDeferral (wait) or CutoverFailed (fail safe) when the cutover must not start now."""
        if step.window is None:
            return
        from airflow_migrate_provider.core.capture.window import check_window

        cut = cutover_of(ctx, step)
        lag, _age = cut.forward.lag()
        needs = step.max_lock_seconds + 60 + lag / 1_000  # lock budget, smoke and a replay of the backlog
        found = check_window(step.window, now or datetime.now(timezone.utc), needs)
        if found.ok:
            log.info("cutover '%s': %s", step.id, found.why)
            return
        if step.window.outside == "fail" or found.next_start is None:
            raise CutoverFailed(f"cutover '{step.id}': {found.why}; the plan says to fail outside the window "
                                f"(window.outside: fail): nothing was switched")
        raise CutoverDeferral(found.next_start, f"cutover '{step.id}': {found.why}")

    def apply(self, ctx: RunContext, step: CutoverStep) -> StepResult:
        """Every phase in one call (outside Airflow; no approval hold, a closed window fails)."""
        t0 = time.monotonic()
        row = ctx.ledger.applied().get(step.id)
        if row is not None and row.status == "applied":
            return StepResult(step.id, "already_applied", 0.0, 0, [f"already applied by {row.by}"])
        cut = cutover_of(ctx, step)
        notes: list[str] = []
        if row is None:
            notes.append(cut.verify()["summary"])
            try:
                self.window_check(step, ctx)
            except CutoverDeferral as wait:
                raise CutoverFailed(f"{wait.why}; outside Airflow a cutover does not wait for its window") from None
            report = cut.switch()
            notes.append(f"switched ({report.switched}); lock held {report.lock_seconds:.3f} s")
            notes += report.notes
        notes += cut.smoke()
        notes += cut.disable_old_writes()
        return StepResult(step.id, "applied", time.monotonic() - t0, len(notes), notes)

    def verify(self, ctx: RunContext, step: CutoverStep) -> StepResult:
        from airflow_migrate_provider.core.capture.cutover import SWITCHED

        row = ctx.ledger.applied().get(step.id)
        if row is None or row.progress < SWITCHED:
            raise CutoverFailed(f"cutover '{step.id}' is not applied: reads were not switched")
        from airflow_migrate_provider.core.capture.switch import describe

        return StepResult(step.id, "verified", 0.0, 0, [f"switched: {describe(row.actions.extra['switch'])}"])

    def revert(self, ctx: RunContext, applied: HistoryRow) -> StepResult:
        from airflow_migrate_provider.core.capture.cutover import revert_cutover, revert_unswitched

        if applied.progress >= 1:
            return revert_cutover(ctx, applied, ctx.variables)
        return revert_unswitched(ctx, applied)

    def on_run_success(self, ctx: RunContext, applied: HistoryRow) -> list[str]:
        from airflow_migrate_provider.core.capture.cutover import drop_reverse_capture

        return drop_reverse_capture(ctx, applied) if applied.progress >= 1 else []

    def progress(self, ledger: Any, step: CutoverStep) -> str:
        return ""
