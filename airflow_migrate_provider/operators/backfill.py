from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from airflow.sdk import Context

from airflow_migrate_provider.core.backfill.throttle import ThrottleDeferral
from airflow_migrate_provider.operators.base import MigrationOperator
from airflow_migrate_provider.plan.model import BackfillStep

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

    @property
    def step(self) -> BackfillStep:
        step = self.plan.step(self.step_id)
        assert isinstance(step, BackfillStep)
        return step

    def run_migration(self, context: Context) -> Any:
        step = self.step
        with self.runner(context) as runner:
            runner.apply_before(self.plan, step.id)
            backfill = runner.backfill(step, can_defer=True)
            try:
                if self.phase == "start":
                    return backfill.start()
                if self.phase == "chunk":
                    return backfill.copy_chunk(int((self.chunk or {})["chunk"])).to_json()
                if self.phase == "recent":
                    return backfill.copy_recent().to_json()
                return backfill.final_sync().to_json()
            except ThrottleDeferral as pause:
                self._defer_until_clear(pause)

    def _defer_until_clear(self, pause: ThrottleDeferral) -> None:
        from airflow_migrate_provider.triggers.throttle import ThrottleTrigger

        rule = pause.rule
        conn_id = self.plan.connections.source_or_target if rule.database == "source" else self.plan.connections.target
        self.log.warning("%s; freeing the worker slot until it is back under %g", pause, rule.max)
        remaining = max(1.0, rule.give_up_after_seconds - pause.paused_s)
        self.defer(
            trigger=ThrottleTrigger(conn_id=conn_id, rule_name=rule.name, query=rule.query, max_value=rule.max,
                                    poll_seconds=min(rule.max_pause_seconds, 30.0)),
            method_name="resume_after_throttle",
            timeout=timedelta(seconds=remaining),
        )

    def resume_after_throttle(self, context: Context, event: dict[str, Any] | None = None) -> Any:
        self.log.info("throttle cleared (%s); resuming from the last checkpoint", event)
        return self.execute(context)

    def describe(self, dialect: str = "postgresql") -> list[str]:
        step = self.step
        source = step.source.table or "(query)"
        return {
            "start": [f"checks {source} → {step.target} (columns, types, unique key, empty target); takes the "
                      f"high-water mark of key {', '.join(step.key)}; splits phase 1 into {step.chunks} chunk(s)"],
            "chunk": [f"copies one key range of {source} into {step.target}, a checkpoint per batch (mapped: one "
                      f"task per chunk); each batch reads:", f"  {_batch_select(step)}"],
            "recent": ["copies rows inserted above the high-water mark"
                       + (f" or with {step.watermark} at/after the cutoff" if step.watermark else "")],
            "final": [f"locks {', '.join(step.source.lock_tables or [source])} against writes (max "
                      f"{step.max_lock_seconds:g} s), copies the last delta, compares row counts"
                      if step.phases.final_sync else "compares row counts up to the last high-water mark"],
        }[self.phase]


def _batch_select(step: BackfillStep) -> str:
    """The shape of one phase-1 batch's source query, from the plan alone (no database needed)."""
    items = [f"{' '.join(expr.split())} AS {name}" for name, expr in step.columns.items()]
    items.append("<every other column of " + step.target + ", by name>")
    source = step.source.table or f"({' '.join((step.source.query or '').split())}) AS src"
    key = step.key[0] if len(step.key) == 1 else f"({', '.join(step.key)})"
    where = [f"{key} > :last_key", f"{key} <= :batch_end"] + ([f"({step.source.filter})"] if step.source.filter else [])
    return f"SELECT {', '.join(items)} FROM {source} WHERE {' AND '.join(where)}"
