from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from airflow_migrate_provider.core.kinds import kind_of
from airflow_migrate_provider.errors import VerificationFailed
from airflow_migrate_provider.operators.base import MigrationOperator


class VerifyStepsOperator(MigrationOperator):
    """Re-runs every step's verify queries once all steps are applied, changing nothing. With
    ``before_step``: only the steps before it (the verification gate of an irreversible step)."""

    def __init__(self, *, before_step: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.before_step = before_step

    def _steps(self) -> list[Any]:
        steps = list(self.plan.steps)
        if self.before_step is None:
            return steps
        return steps[: [s.id for s in steps].index(self.before_step)]

    def run_migration(self, context: Context) -> dict[str, Any]:
        steps = self._steps()
        with self.runner(context) as runner:
            applied = runner.ledger.applied()
            missing = [s.id for s in steps if s.id not in applied and not kind_of(s).read_only]
            if missing:
                raise VerificationFailed(missing[0], "(ledger)", f"steps not applied in the target: {missing}")
            results = [runner.verify(step) for step in steps]
        total = sum(len(r.verified) for r in results)
        self.log.info("verification passed: %d queries over %d steps", total, len(results))
        return {"steps": len(results), "queries_passed": total}
