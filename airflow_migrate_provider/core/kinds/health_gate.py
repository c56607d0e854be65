"""The ``health_gate`` step kind: sample application health (SQL or an HTTP JSON endpoint) over a window,
against the baseline preflight recorded before anything changed; a breach fails the run (→ rollback)."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_migrate_provider.core.actions import Action, ActionPlan, HttpCall, SampleMetric
from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.kinds.base import StepKind
from airflow_migrate_provider.core.kinds.registry import register
from airflow_migrate_provider.core.step_result import StepResult
from airflow_migrate_provider.core.verify import gate
from airflow_migrate_provider.errors import VerificationFailed
from airflow_migrate_provider.plan.model import HealthGateStep

if TYPE_CHECKING:
    from airflow_migrate_provider.core.dialects import Dialect

log = logging.getLogger(__name__)


@dataclass
class GateWatch:
    """Where a watch stands between samples (what a deferred task carries to its next sample)."""

    started_at: float
    samples: int = 0
    baseline: dict[str, float] | None = None
    done: bool = False
    last: dict[str, Any] = field(default_factory=dict)


@register
class HealthGateKind(StepKind[HealthGateStep]):
    name = "health_gate"
    operator = "HealthGateOperator"
    model = HealthGateStep
    read_only = True

    def plan_actions(self, step: HealthGateStep, dialect: Dialect) -> ActionPlan:
        samples: list[Action] = [SampleMetric(m.name, m.sql, step.database) if m.sql is not None
                                 else HttpCall("GET", m.url or "", m.name) for m in step.metrics]
        return ActionPlan(self.name, tuple(samples), (), transactional=True, irreversible=False)

    def describe(self, step: HealthGateStep, dialect: Dialect | None) -> list[str]:
        rules = ", ".join(f"{t.metric} > {t.max:g}" if t.max is not None else
                          f"{t.metric} > {t.max_ratio_to_baseline:g}x baseline" for t in step.effective_thresholds())
        return [f"samples {', '.join(m.name for m in step.metrics)} every {step.interval_seconds:g} s for "
                f"{step.window_seconds:g} s (deferring in between); fails → rollback when {rules or 'never'}"]

    def before_run(self, ctx: RunContext, step: HealthGateStep) -> str | None:
        gate.capture_baseline(step, ctx.engines(), ctx.ledger, ctx.who)
        return "health baselines recorded"

    def watch_once(self, ctx: RunContext, step: HealthGateStep, watch: GateWatch) -> GateWatch:
        """Take one sample and judge it: raises ``VerificationFailed`` on a breach; ``done`` once the window
        has held."""
        if watch.baseline is None:
            watch.baseline = gate.load_baseline(ctx.ledger, step.id, ctx.who)
            if watch.baseline is None:
                log.warning("no baseline recorded in preflight for gate '%s' (was preflight cleared out of the "
                            "run?); a threshold relative to the baseline fails the gate", step.id)
                watch.baseline = {}
        health = gate.health_gate(step, ctx.engines())
        values = health.sample()
        watch.samples += 1
        result = health.evaluate(values, watch.baseline or None)
        elapsed = time.time() - watch.started_at
        log.info("health gate '%s' sample %d at %.0f s of %.0f s: %s (baseline %s)", step.id, watch.samples,
                 elapsed, step.window_seconds, values, watch.baseline or "-")
        if not result.passed:
            self._record(ctx, step, "failed", {"values": values, "baseline": watch.baseline,
                                               "detail": result.detail})
            raise VerificationFailed(step.id, "(health gate)", f"{result.detail} after {elapsed:.0f} s "
                                     f"(sample {watch.samples}); rolling back")
        watch.last = values
        if elapsed + step.interval_seconds > step.window_seconds:
            self._record(ctx, step, "applied", {"values": values, "baseline": watch.baseline,
                                                "samples": watch.samples})
            log.info("health gate '%s' held for %.0f s (%d samples)", step.id, elapsed, watch.samples)
            watch.done = True
        return watch

    def apply(self, ctx: RunContext, step: HealthGateStep) -> StepResult:
        """Watch the whole window in this process, sleeping between samples (the operator defers instead)."""
        watch = GateWatch(time.time())
        while not self.watch_once(ctx, step, watch).done:
            ctx.sleep(step.interval_seconds)
        return StepResult(step.id, "applied", time.time() - watch.started_at, 0,
                          [f"held for {step.window_seconds:g} s ({watch.samples} samples)"],
                          {"step": step.id, "passed": True, "samples": watch.samples, "last": watch.last})

    def _record(self, ctx: RunContext, step: HealthGateStep, status: str, details: dict[str, Any]) -> None:
        row_id, started = ctx.ledger.start(step.id, "apply", self.checksum(step),
                                           self.plan_actions(step, ctx.dialect), ctx.who)
        text = json.dumps(details, default=str)
        ctx.ledger.finish(row_id, status, started_at=started, verified=text if status == "applied" else None,
                          error=None if status == "applied" else text)
