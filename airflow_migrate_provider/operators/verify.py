from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from airflow.sdk import Context

from airflow_migrate_provider.core.steps import step_checksum
from airflow_migrate_provider.core.verify.suite import VerifyReport, run_verify_step
from airflow_migrate_provider.errors import VerificationFailed
from airflow_migrate_provider.operators.base import MigrationOperator
from airflow_migrate_provider.plan.model import VerifyStep

REPORTS_ENV = "AIRFLOW_MIGRATE_REPORTS"


def report_dir(dag_id: str, run_id: str) -> Path:
    """Where a run's verification reports go: ``$AIRFLOW_MIGRATE_REPORTS`` (else ``$AIRFLOW_HOME/
    migration_reports``) / dag / run."""
    base = os.environ.get(REPORTS_ENV) or str(Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
                                              / "migration_reports")
    return Path(base) / dag_id / re.sub(r"[^A-Za-z0-9_.+-]", "_", run_id)


class VerifyOperator(MigrationOperator):
    """Runs a `kind: verify` step: source-vs-target checks, expectations, performance. Logs the report table,
    writes JSON/HTML artifacts (their path goes to the ledger and XCom), and fails when a check fails, which
    sends the run to its rollback."""

    def __init__(self, *, step_id: str, plan_dir: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.step_id, self.plan_dir = step_id, plan_dir

    def run_migration(self, context: Context) -> dict[str, Any]:
        step = self.plan.step(self.step_id)
        assert isinstance(step, VerifyStep)
        with self.runner(context) as runner:
            ledger, who = runner.ledger, runner.who
            row_id, started = ledger.start(step.id, "apply", step_checksum(step),
                                           {"kind": "verify", "transactional": True, "irreversible": False,
                                            "up": [f"checks: {', '.join(step.checks)}"], "down": []}, who)
            try:
                report = run_verify_step(step, runner.source or runner.engine, runner.engine,
                                         Path(self.plan_dir) if self.plan_dir else None)
            except Exception as exc:
                ledger.finish(row_id, "failed", started_at=started, error=str(exc))
                raise
            path = report.write(report_dir(who.dag_id, who.run_id))
            self.log.info("verification of step '%s' (%.2f s):\n%s\nreport: %s", step.id, report.seconds,
                          report.table(), path)
            summary = report.summary()
            if report.passed:
                ledger.finish(row_id, "applied", started_at=started, verified=json.dumps(summary))
                return summary
            ledger.finish(row_id, "failed", started_at=started, error=json.dumps(summary))
        raise VerificationFailed(step.id, "(verification suite)", _failure_line(report))

    def describe(self, dialect: str = "postgresql") -> list[str]:
        step = self.plan.step(self.step_id)
        assert isinstance(step, VerifyStep)
        src = step.source.table or "(query)" if step.source else "-"
        extra = [x for x, on in (("expectations", step.expectations), ("performance", step.performance)) if on]
        return [f"compares {src} (source) with {step.target.table or '(query)'} (target): "
                f"{', '.join([*step.checks, *extra])}; fails the run on any difference"]


def _failure_line(report: VerifyReport) -> str:
    failed = "; ".join(f"{r.check}: {r.detail or 'failed'}" for r in report.failed)
    return f"{len(report.failed)} of {len(report.results)} checks failed ({failed}); report: {report.artifact}"
