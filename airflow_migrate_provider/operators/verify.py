from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import Context

from airflow_migrate_provider.core.kinds import kind_of
from airflow_migrate_provider.operators.base import MigrationOperator


class VerifyOperator(MigrationOperator):
    """Runs a `kind: verify` step: source-vs-target checks, expectations, performance. Logs the report table,
    writes JSON/HTML artifacts (their path goes to the ledger and XCom), and fails when a check fails, which
    sends the run to its rollback."""

    def __init__(self, *, step_id: str, plan_dir: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.step_id, self.plan_dir = step_id, plan_dir

    def run_migration(self, context: Context) -> dict[str, Any]:
        step = self.plan.step(self.step_id)
        plan_dir = Path(self.plan_dir) if self.plan_dir else None
        with self.run_context(context, plan_dir=plan_dir) as ctx:
            return kind_of(step).apply(ctx, step).details
