"""Apply, revert and verify a plan's steps in one run context, each by asking the step's kind.

This module names no kind: :func:`kind_of` / :func:`kind_named` find the class that owns a step (or the kind
recorded in a ledger row), and the kind does the work.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.kinds import kind_named, kind_of
from airflow_migrate_provider.core.ledger import HistoryRow, Ledger, RunIdentity
from airflow_migrate_provider.core.step_result import LockCheck, NoLockCheck, StepResult

if TYPE_CHECKING:
    from airflow_migrate_provider.core.dialects import Dialect

log = logging.getLogger(__name__)


def step_checksum(step: Any) -> str:
    """What the ledger compares to refuse an applied step that was edited afterwards (the kind decides)."""
    return kind_of(step).checksum(step)


class StepRunner:
    """Runs a plan's steps in one :class:`RunContext` (one target, one run identity, one lock)."""

    def __init__(self, engine: Engine, dialect: Dialect, ledger: Ledger, who: RunIdentity,
                 lock: LockCheck | None = None, *, plan: Any = None, source: Engine | None = None,
                 context: RunContext | None = None):
        self.ctx = context or RunContext(engine, dialect, ledger, who, lock or NoLockCheck(), plan, source)

    @classmethod
    def of(cls, ctx: RunContext) -> StepRunner:
        return cls(ctx.engine, ctx.dialect, ctx.ledger, ctx.who, context=ctx)

    @property
    def engine(self) -> Engine:
        return self.ctx.engine

    @property
    def dialect(self) -> Dialect:
        return self.ctx.dialect

    @property
    def ledger(self) -> Ledger:
        return self.ctx.ledger

    @property
    def who(self) -> RunIdentity:
        return self.ctx.who

    @property
    def source(self) -> Engine | None:
        return self.ctx.source

    def backfill(self, step: Any, **options: Any) -> Any:
        """The runner of a backfill step (its phases one by one), with ``sleep`` / ``can_defer`` overrides."""
        from airflow_migrate_provider.core.kinds.backfill import runner_for

        return runner_for(replace(self.ctx, **options), step)

    # -- one step -----------------------------------------------------------------------------------
    def apply(self, step: Any) -> StepResult:
        """Apply ``step`` unless the ledger says it is applied already (then a no-op)."""
        return kind_of(step).apply(self.ctx, step)

    def revert(self, applied: HistoryRow) -> StepResult:
        """Undo a step with what its ledger row recorded at apply time (not the plan's current text)."""
        return kind_named(applied.actions.kind).revert(self.ctx, applied)

    def verify(self, step: Any) -> StepResult:
        """Re-check, read-only, that an applied step still holds."""
        return kind_of(step).verify(self.ctx, step)

    def after_success(self) -> list[str]:
        """This run succeeded: each step it applied drops what only a rollback needed (a reverse capture, say)."""
        done = []
        for row in self.ledger.applied_by_run(self.who):
            done += [f"{row.step_id}: {note}" for note in kind_named(row.actions.kind).on_run_success(self.ctx, row)]
        return done

    # -- in plan order ------------------------------------------------------------------------------
    def apply_through(self, plan: Any, step_id: str) -> list[StepResult]:
        """Bring the target to the state right after ``step_id``: apply, in plan order, every step up to it
        that is not applied. Clearing only a failed task after a rollback reverted its predecessors thus
        re-applies them first instead of failing on their missing changes."""
        step = plan.step(step_id)
        results = self.apply_before(plan, step_id)
        results.append(self.apply(step))
        return results

    def apply_before(self, plan: Any, step_id: str) -> list[StepResult]:
        """Apply, in plan order, every step before ``step_id`` that its kind says must be (re-)applied."""
        applied = self.ledger.applied()
        results = []
        for step in plan.steps:
            if step.id == step_id:
                return results
            if not kind_of(step).needs_apply_before(applied.get(step.id)):
                continue
            log.warning("earlier step '%s' is not applied in the target (reverted by a rollback?); "
                        "applying it first", step.id)
            results.append(self.apply(step))
        raise KeyError(f"plan '{plan.id}' has no step '{step_id}'")
