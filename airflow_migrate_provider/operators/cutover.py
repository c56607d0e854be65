"""The Airflow side of a ``cutover`` step: verify, wait for the window, switch, smoke, disable old writes."""

from __future__ import annotations

from typing import Any, Literal

from airflow.sdk import Context

from airflow_migrate_provider.core.kinds import kind_of
from airflow_migrate_provider.errors import CutoverDeferral
from airflow_migrate_provider.operators.base import MigrationOperator

Phase = Literal["consistency", "wait_window", "switch", "smoke", "disable_old_writes"]


class CutoverOperator(MigrationOperator):
    """One phase of a cutover step (see ``CutoverStep``). ``wait_window`` defers (no worker slot) until the
    plan's cutover window opens wide enough to finish; ``switch`` holds the old table's write lock only for the
    final delta and the switch itself."""

    changes_data = True

    def __init__(self, *, step_id: str, phase: Phase, **kwargs: Any):
        super().__init__(**kwargs)
        self.step_id, self.phase = step_id, phase

    def run_migration(self, context: Context) -> Any:
        from airflow_migrate_provider.core.kinds.cutover import cutover_of

        step = self.plan.step(self.step_id)
        kind = kind_of(step)
        with self.runner(context) as runner:
            runner.apply_before(self.plan, step.id)
            ctx = runner.ctx
            row = ctx.ledger.applied().get(step.id)
            if row is not None and row.status == "applied":
                self.log.info("cutover '%s' is applied (by %s): nothing to do", step.id, row.by)
                return {"step": step.id, "phase": self.phase, "already": True}
            cut = cutover_of(ctx, step)
            if self.phase == "consistency":
                return cut.verify()
            if self.phase == "wait_window":
                try:
                    kind.window_check(step, ctx)
                    return {"step": step.id, "window": "open"}
                except CutoverDeferral as wait:
                    pending = wait
            elif self.phase == "switch":
                try:  # a catch-up may outlast the window: checked again right before the lock
                    if not cut.switched():
                        kind.window_check(step, ctx)
                    return {"step": step.id, **cut.switch(before_lock=lambda: kind.window_check(step, ctx)).to_json()}
                except CutoverDeferral as wait:
                    pending = wait
            elif self.phase == "smoke":
                return {"step": step.id, "smoke": cut.smoke()}
            else:
                return {"step": step.id, "disabled": cut.disable_old_writes()}
        self._wait_for_window(context, pending)

    def _wait_for_window(self, context: Context, wait: CutoverDeferral) -> None:
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        from airflow_migrate_provider.core.ledger import as_utc, utcnow
        from airflow_migrate_provider.operators.deferral import hold_lock_while_deferred

        self.log.info("%s; waiting (deferred) until %s", wait.why, wait.until.isoformat())
        hold_lock_while_deferred(self, context, (as_utc(wait.until) - utcnow()).total_seconds())
        self.defer(trigger=DateTimeTrigger(moment=wait.until), method_name="resume_window")

    def resume_window(self, context: Context, event: Any = None) -> Any:
        return self.execute(context)
