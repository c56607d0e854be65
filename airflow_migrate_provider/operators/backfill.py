from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from airflow.sdk import Context

from airflow_migrate_provider.errors import ThrottleDeferral
from airflow_migrate_provider.operators.base import MigrationOperator

Phase = Literal["start", "chunk", "recent", "final"]


class BackfillOperator(MigrationOperator):
    """One phase of a backfill step.

    - ``start``: checks the step against the tables, takes the high-water mark, and returns its phase-1
      chunks (the list the ``chunk`` task is mapped over);
    - ``chunk``: copies one key range, resuming from its checkpoint (a mapped task: one per chunk);
    - ``recent``: phase 2, rows inserted or changed since phase 1 began;
    - ``final``: phase 3 under a brief source write lock, then row counts; marks the step applied.

    Earlier plan steps that a rollback reverted are applied again first, and a later phase finishes any
    incomplete earlier one, so clearing just the failed task converges. A throttle pause longer than its
    rule's ``defer_after_seconds`` defers the task (freeing the worker slot) until the metric is back under.
    """

    template_fields = ("chunk",)
    changes_data = True

    def __init__(self, *, step_id: str, phase: Phase, chunk: dict[str, Any] | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.step_id, self.phase, self.chunk = step_id, phase, chunk

    def run_migration(self, context: Context) -> Any:
        step = self.plan.step(self.step_id)
        with self.runner(context, can_defer=True) as runner:
            runner.apply_before(self.plan, step.id)
            backfill = runner.backfill(step)
            try:
                if self.phase == "start":
                    return backfill.start()
                if self.phase == "chunk":
                    return backfill.copy_chunk(int((self.chunk or {})["chunk"])).to_json()
                if self.phase == "recent":
                    return backfill.copy_recent().to_json()
                return backfill.final_sync().to_json()
            except ThrottleDeferral as pause:
                self._defer_until_clear(context, pause)

    def _defer_until_clear(self, context: Context, pause: ThrottleDeferral) -> None:
        from airflow_migrate_provider.operators.deferral import hold_lock_while_deferred
        from airflow_migrate_provider.triggers.throttle import ThrottleTrigger

        rule = pause.rule
        conn_id = self.plan.connections.source or self.target_conn_id if rule.database == "source" \
            else self.target_conn_id
        self.log.warning("%s; freeing the worker slot until it is back under %g", pause, rule.max)
        remaining = max(1.0, rule.give_up_after_seconds - pause.paused_s)
        hold_lock_while_deferred(self, context, remaining)
        self.defer(
            trigger=ThrottleTrigger(conn_id=conn_id, rule_name=rule.name, query=rule.query, max_value=rule.max,
                                    poll_seconds=min(rule.max_pause_seconds, 30.0)),
            method_name="resume_after_throttle",
            timeout=timedelta(seconds=remaining),
        )

    def resume_after_throttle(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        self.log.info("throttle cleared (%s); resuming from the last checkpoint", event)
        return self.execute(context)
