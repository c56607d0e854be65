"""Rollback as a stack built from the ledger: revert what this run applied, newest first."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
from airflow_migrate_provider.core.steps import StepResult, StepRunner
from airflow_migrate_provider.errors import MigrateError, RevertFailed

log = logging.getLogger(__name__)


@dataclass
class RollbackReport:
    """What the rollback did, for the task log and the run summary."""

    reverted: list[StepResult] = field(default_factory=list)
    stopped_at: str | None = None  # the irreversible step where automatic rollback stopped
    left_applied: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.reverted and self.stopped_at is None:
            return "rollback: this run had applied no step; nothing to revert"
        parts = [f"rollback: reverted {len(self.reverted)} step(s)"
                 + (f" ({', '.join(r.step_id for r in self.reverted)})" if self.reverted else "")]
        if self.stopped_at:
            parts.append(f"stopped at the point of no return '{self.stopped_at}'; still applied: "
                         f"{', '.join(self.left_applied)}")
        return "; ".join(parts)


def rollback_run(ledger: Ledger, runner: StepRunner, who: RunIdentity) -> RollbackReport:
    """Revert, newest first, every step ``who``'s run applied and that is still applied.

    The stack comes from the ledger, so it is right after retries and manual clears, and reverts use the
    down SQL recorded at apply time. An irreversible step is a point of no return: rollback stops there.
    """
    report = RollbackReport()
    stack = ledger.applied_by_run(who)
    log.info("rollback stack for %s: %s", who.run_key, [r.step_id for r in stack] or "empty")
    for position, row in enumerate(stack):
        if row.actions.get("irreversible"):
            report.stopped_at = row.step_id
            report.left_applied = [r.step_id for r in stack[position:]]
            log.warning("step '%s' is irreversible (a point of no return): automatic rollback stops here; "
                        "steps applied before it stay applied: %s", row.step_id, report.left_applied)
            break
        try:
            report.reverted.append(runner.revert(row))
        except MigrateError as exc:
            remaining = [r.step_id for r in stack[position:]]
            raise RevertFailed(
                f"reverting step '{row.step_id}' failed: {exc}\n"
                f"reverted so far: {[r.step_id for r in report.reverted] or 'none'}; still applied by this "
                f"run: {remaining}. Fix the cause and clear the rollback task to retry, or restore the "
                f"affected tables from the backup."
            ) from exc
    log.info("%s", report.summary())
    return report
