from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from airflow_migrate_provider.core.ledger import Ledger
from airflow_migrate_provider.core.preflight import run_preflight
from airflow_migrate_provider.core.verify.gate import capture_baselines
from airflow_migrate_provider.operators.base import MigrationOperator
from airflow_migrate_provider.plan.model import HealthGateStep


class PreflightOperator(MigrationOperator):
    """Checks connections, the plan checklist and the ledger, and takes the run lock."""

    def run_migration(self, context: Context) -> dict[str, Any]:
        plan, who = self.plan, self.who(context)
        target, _ = self.open_target()
        source = None
        try:
            source = self.open_source()
            ledger = Ledger(target, plan.id)
            report = run_preflight(plan, target, ledger, who, source)
            if any(isinstance(step, HealthGateStep) for step in plan.steps):
                capture_baselines(plan, {"target": target, "source": source or target}, ledger, who)
                report.passed.append("health baselines recorded")
        finally:
            target.dispose()
            if source is not None:
                source.dispose()
        return {"passed": report.passed}

    def describe(self, dialect: str = "postgresql") -> list[str]:
        return ["checks: target (and source) reachable; every reversible step has a down; every step has a "
                "verify; ledger tables exist and no applied step was edited; takes the run lock"]
