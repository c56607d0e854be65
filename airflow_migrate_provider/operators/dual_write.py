"""The Airflow side of a ``dual_write`` step: one operator, one task per phase."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any, Literal

from airflow.sdk import Context

from airflow_migrate_provider.core.kinds import kind_of
from airflow_migrate_provider.operators.base import MigrationOperator

Phase = Literal["capture", "start", "chunk", "replay", "catch_up"]


class DualWriteOperator(MigrationOperator):
    """One phase of a dual_write step (see ``DualWriteStep``):

    - ``capture``: installs change capture on the old table (recorded in the ledger);
    - ``start`` / ``chunk``: the history copy, one mapped task per key-range chunk, resumable per batch;
    - ``replay``: replays the bulk of the captured changes (until at most one batch or the threshold is left);
    - ``catch_up``: a deferrable sensor: it defers at once to the triggerer, which replays and logs the lag each
      round until the lag is under the threshold (at once when it already is); then it marks the step applied.
      A cutover runs this phase again right before switching.
    """

    template_fields = ("chunk",)
    changes_data = True

    def __init__(self, *, step_id: str, phase: Phase, chunk: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.step_id, self.phase, self.chunk = step_id, phase, chunk

    def run_migration(self, context: Context) -> Any:
        from airflow_migrate_provider.core.kinds.dual_write import forward_replayer, history_copy

        step = self.plan.step(self.step_id)
        kind = kind_of(step)
        with self.runner(context) as runner:
            runner.apply_before(self.plan, step.id)
            ctx = runner.ctx
            if self.phase == "capture":
                return kind.capture(ctx, step)
            row = ctx.ledger.applied().get(step.id)
            if row is not None and row.status == "applied" and (self.phase in ("start", "chunk")
                                                                  or not kind.capturing(ctx, step)):
                self.log.info("dual_write '%s' is applied (by %s)%s: nothing to do", step.id, row.by,
                              "" if self.phase in ("start", "chunk") else " and its capture is off (cut over)")
                return {"step": step.id, "phase": self.phase, "already": True}
            if self.phase == "start":
                return history_copy(ctx, step).start()
            if self.phase == "chunk":
                return history_copy(ctx, step).copy_chunk(int((self.chunk or {})["chunk"])).to_json()
            if self.phase == "replay":  # the bulk of the backlog, here; the last stretch is the catch-up's
                deadline = time.monotonic() + step.catch_up.timeout_minutes * 60
                totals = kind.replay(ctx, step, deadline=deadline, bulk=True)
                return {"step": step.id, "phase": self.phase, "replayed": totals.changes,
                        "lag_changes": totals.lag_changes, "lag_seconds": round(totals.lag_seconds, 1)}
            changes, age = forward_replayer(ctx, step).lag()
            self.log.info("dual_write '%s': %s change(s) to replay (oldest %.1f s)", step.id, f"{changes:,}", age)
        self._defer_catching_up(context, time.time())

    def _defer_catching_up(self, context: Context, started_at: float) -> None:
        from airflow_migrate_provider.triggers.catch_up import CatchUpTrigger

        step = self.plan.step(self.step_id)
        who = self.who(context)
        remaining = max(1.0, step.catch_up.timeout_minutes * 60 - (time.time() - started_at))
        self.log.info("dual_write '%s': catching up deferred on the triggerer (lag logged every %g s, at most %.0f "
                      "min)", step.id, step.catch_up.poll_seconds, remaining / 60)
        self.defer(trigger=CatchUpTrigger(plan=self.plan_data, step_id=step.id, target_conn_id=self.target_conn_id,
                                          who=[who.dag_id, who.run_id, who.try_number],
                                          timeout_seconds=remaining),
                   method_name="resume_catch_up", timeout=timedelta(seconds=remaining + 300))

    def resume_catch_up(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        from airflow_migrate_provider.errors import CaptureError
        from airflow_migrate_provider.operators.base import airflow_error

        event = event or {}
        if event.get("status") != "caught_up":
            raise airflow_error(CaptureError(str(event.get("message") or f"catch-up ended without catching up: "
                                                                           f"{event}")))
        step = self.plan.step(self.step_id)

        def finish() -> Any:
            from airflow_migrate_provider.core.capture.replay import ReplayTotals

            with self.run_context(context) as ctx:
                totals = ReplayTotals(changes=int(event.get("replayed", 0)), lag_changes=int(event["lag_changes"]),
                                      lag_seconds=float(event["lag_seconds"]))
                kind_of(step).finish(ctx, step, totals)
            return {"step": step.id, "phase": self.phase, **event}

        result = self.translating_errors(finish)
        self.inject_fault(context)
        return result
