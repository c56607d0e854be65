from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import Context

from airflow_migrate_provider.core.kinds import kind_of
from airflow_migrate_provider.operators.base import MigrationOperator


class HealthGateOperator(MigrationOperator):
    """Watches application health for the step's window; fails (→ rollback) at the first breach.

    Between samples the task defers (a TimeDeltaTrigger), so a long window holds no worker slot. The
    baseline is the one preflight recorded in the ledger before anything changed.
    """

    def __init__(self, *, step_id: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.step_id = step_id

    def run_migration(self, context: Context) -> dict[str, Any]:
        import time

        from airflow_migrate_provider.core.kinds.health_gate import GateWatch

        return self.watch(context, GateWatch(started_at=time.time()))

    def resume_watch(self, context: Context, event: Any = None, started_at: float = 0.0, samples: int = 0,
                     baseline: dict[str, float] | None = None) -> dict[str, Any]:
        from airflow_migrate_provider.core.kinds.health_gate import GateWatch

        result = self.translating_errors(lambda: self.watch(context, GateWatch(started_at, samples, baseline)))
        self.inject_fault(context)
        return result

    def watch(self, context: Context, watch: Any) -> dict[str, Any]:
        step = self.plan.step(self.step_id)
        with self.run_context(context) as ctx:
            watch = kind_of(step).watch_once(ctx, step, watch)
        if watch.done:
            return {"step": step.id, "passed": True, "samples": watch.samples, "last": watch.last}
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        from airflow_migrate_provider.operators.deferral import hold_lock_while_deferred

        hold_lock_while_deferred(self, context, step.interval_seconds)
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=step.interval_seconds)), method_name="resume_watch",
                   kwargs={"started_at": watch.started_at, "samples": watch.samples, "baseline": watch.baseline})
        raise AssertionError("unreachable: defer() raises")
