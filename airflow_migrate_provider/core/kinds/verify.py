"""The ``verify`` step kind: source vs target (counts, structure, samples, checksums), expectations and query
performance. Read-only: it writes a report (JSON/HTML, path in the ledger) and fails the run on a difference."""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING

from airflow_migrate_provider.core.actions import ActionPlan, CompareRows
from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.kinds.base import StepKind
from airflow_migrate_provider.core.kinds.registry import register
from airflow_migrate_provider.core.step_result import StepResult
from airflow_migrate_provider.errors import VerificationFailed
from airflow_migrate_provider.plan.model import VerifyStep

if TYPE_CHECKING:
    from airflow_migrate_provider.core.dialects import Dialect

log = logging.getLogger(__name__)


@register
class VerifyKind(StepKind[VerifyStep]):
    name = "verify"
    operator = "VerifyOperator"
    model = VerifyStep
    read_only = True

    def plan_actions(self, step: VerifyStep, dialect: Dialect) -> ActionPlan:
        extra = [x for x, on in (("expectations", step.expectations), ("performance", step.performance)) if on]
        source = (step.source.table or "(query)") if step.source else "-"
        compare = CompareRows(source, step.target.table or "(query)", (*step.checks, *extra))
        return ActionPlan(self.name, (compare,), (), transactional=True, irreversible=False)

    def describe(self, step: VerifyStep, dialect: Dialect | None) -> list[str]:
        (compare,) = self.plan_actions(step, dialect).do  # type: ignore[arg-type]
        assert isinstance(compare, CompareRows)
        return [f"compares {compare.source} (source) with {compare.target} (target): {', '.join(compare.checks)}; "
                f"fails the run on any difference"]

    def apply(self, ctx: RunContext, step: VerifyStep) -> StepResult:
        """Run the checks, write the report, record the outcome; ``VerificationFailed`` when a check fails."""
        from airflow_migrate_provider.core.verify.suite import run_verify_step

        row_id, started = ctx.ledger.start(step.id, "apply", self.checksum(step),
                                           self.plan_actions(step, ctx.dialect), ctx.who)
        try:
            report = run_verify_step(step, ctx.source_or_target, ctx.engine, ctx.plan_dir)
        except Exception as exc:
            ctx.ledger.finish(row_id, "failed", started_at=started, error=str(exc))
            raise
        path = report.write(ctx.report_dir) if ctx.report_dir is not None else None
        log.info("verification of step '%s' (%.2f s):\n%s\nreport: %s", step.id, report.seconds, report.table(),
                 path or "(not written)")
        summary = report.summary()
        if not report.passed:
            ctx.ledger.finish(row_id, "failed", started_at=started, error=json.dumps(summary))
            failed = "; ".join(f"{r.check}: {r.detail or 'failed'}" for r in report.failed)
            raise VerificationFailed(step.id, "(verification suite)", f"{len(report.failed)} of {len(report.results)} "
                                     f"checks failed ({failed}); report: {report.artifact}")
        ctx.ledger.finish(row_id, "applied", started_at=started, verified=json.dumps(summary))
        return StepResult(step.id, "applied", report.seconds, 0, [f"{len(report.results)} checks passed"], summary)
