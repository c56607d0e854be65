from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from airflow_migrate_provider.core.dialects import dialect_named
from airflow_migrate_provider.core.steps import actions_for, step_checksum
from airflow_migrate_provider.operators.base import MigrationOperator


class ApplyStepOperator(MigrationOperator):
    """Applies one schema step (a no-op if the ledger says it is applied) and verifies it."""

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

    def describe(self, dialect: str = "postgresql") -> list[str]:
        step = self.plan.step(self.step_id)
        actions = actions_for(step, dialect_named(dialect))
        lines = [f"checksum {step_checksum(step)[:12]}; "
                 f"{'one transaction' if actions.transactional else 'statement by statement'}"
                 + ("; IRREVERSIBLE (point of no return)" if actions.irreversible else "")]
        for label, statements in (("up", actions.up), ("verify", actions.verify),
                                  ("down (on rollback)", actions.down),
                                  ("verify_down (on rollback)", actions.verify_down)):
            if statements:
                lines.append(f"{label}:")
                lines += [f"    {s}" for stmt in statements for s in f"{stmt};".splitlines()]
        return lines
