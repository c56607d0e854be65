from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from airflow_migrate_provider.errors import VerificationFailed
from airflow_migrate_provider.operators.base import MigrationOperator
from airflow_migrate_provider.plan.model import READ_ONLY_KINDS


class VerifyStepsOperator(MigrationOperator):
    """Re-runs every step's verify queries once all steps are applied, changing nothing."""

    def run_migration(self, context: Context) -> dict[str, Any]:
        plan = self.plan
        with self.runner(context) as runner:
            applied = runner.ledger.applied()
            missing = [s.id for s in plan.steps if s.id not in applied and s.kind not in READ_ONLY_KINDS]
            if missing:
                raise VerificationFailed(missing[0], "(ledger)", f"steps not applied in the target: {missing}")
            results = [runner.verify(step) for step in plan.steps]
        total = sum(len(r.verified) for r in results)
        self.log.info("verification passed: %d queries over %d steps", total, len(results))
        return {"steps": len(results), "queries_passed": total}

    def describe(self, dialect: str = "postgresql") -> list[str]:
        return [f"re-runs the verify queries of all {len(self.plan.steps)} steps (read-only)"]
