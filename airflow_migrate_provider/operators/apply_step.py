from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from airflow_migrate_provider.operators.base import MigrationOperator


class ApplyStepOperator(MigrationOperator):
    """Applies one step through its kind (a no-op if the ledger says it is applied) and verifies it; earlier
    steps a rollback reverted are applied again first."""

    changes_data = True

    def __init__(self, *, step_id: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.step_id = step_id

    def run_migration(self, context: Context) -> dict[str, Any]:
        with self.runner(context) as runner:
            results = runner.apply_through(self.plan, self.step_id)
        result = results[-1]
        return {"step": result.step_id, "outcome": result.outcome, "duration_s": round(result.duration_s, 3),
                "also_applied": [r.step_id for r in results[:-1]]}
