from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from airflow_migrate_provider.operators.base import MigrationOperator


class PreflightOperator(MigrationOperator):
    """Checks connections, the plan checklist and the ledger, and takes the run lock."""

    def run_migration(self, context: Context) -> dict[str, Any]:
        from airflow_migrate_provider.core.context import RunContext
        from airflow_migrate_provider.core.ledger import Ledger
        from airflow_migrate_provider.core.preflight import before_run, run_preflight
        from airflow_migrate_provider.errors import LockHeld
        from airflow_migrate_provider.run_watch import record_lock_refusal

        plan, who = self.plan, self.who(context)
        target, dialect = self.open_target()
        source = None
        try:
            source = self.open_source()
            ledger = Ledger(target, plan.id)
            try:
                report = run_preflight(plan, target, ledger, who, source, self.target_conn_id)
            except LockHeld as exc:  # not a failed migration: `airflow-migrate run` reports it as refused
                record_lock_refusal(who.dag_id, who.run_id, exc.holder, exc.expires_at)
                raise
            ctx = RunContext(target, dialect, ledger, who, plan=plan, source=source, target_conn_id=self.target_conn_id)
            report.passed += before_run(plan, ctx)
        finally:
            target.dispose()
            if source is not None:
                source.dispose()
        return {"passed": report.passed}
