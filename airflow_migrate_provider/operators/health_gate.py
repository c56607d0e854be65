from __future__ import annotations

import json
import time
from datetime import timedelta
from typing import Any

from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger
from airflow.sdk import Context

from airflow_migrate_provider.core.ledger import Ledger
from airflow_migrate_provider.core.steps import step_checksum
from airflow_migrate_provider.core.verify.gate import health_gate, load_baseline
from airflow_migrate_provider.errors import VerificationFailed
from airflow_migrate_provider.operators.base import MigrationOperator
from airflow_migrate_provider.plan.model import HealthGateStep


class HealthGateOperator(MigrationOperator):
    """Watches application health for the step's window; fails (→ rollback) at the first breach.

    Between samples the task defers (a TimeDeltaTrigger), so a long window holds no worker slot. The
    baseline is the one preflight recorded in the ledger before anything changed.
    """

    def __init__(self, *, step_id: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.step_id = step_id

    @property
    def step(self) -> HealthGateStep:
        step = self.plan.step(self.step_id)
        assert isinstance(step, HealthGateStep)
        return step

    def run_migration(self, context: Context) -> dict[str, Any]:
        return self.watch(context, started_at=time.time(), samples=0)

    def resume_watch(self, context: Context, event: Any = None, started_at: float = 0.0, samples: int = 0,
                     baseline: dict[str, float] | None = None) -> dict[str, Any]:
        result = self.translating_errors(lambda: self.watch(context, started_at, samples, baseline))
        self.inject_fault(context)
        return result

    def watch(self, context: Context, started_at: float, samples: int,
              baseline: dict[str, float] | None = None) -> dict[str, Any]:
        step, who = self.step, self.who(context)
        engines = self._engines()
        try:
            ledger = Ledger(engines["target"], self.plan.id)
            if baseline is None:
                baseline = load_baseline(ledger, step.id, who)
                if baseline is None:
                    self.log.warning("no baseline recorded in preflight for gate '%s' (was preflight cleared "
                                     "out of the run?); a threshold relative to the baseline fails the gate",
                                     step.id)
                    baseline = {}
            gate = health_gate(step, engines)
            values = gate.sample()
            samples += 1
            result = gate.evaluate(values, baseline or None)
            elapsed = time.time() - started_at
            self.log.info("health gate '%s' sample %d at %.0f s of %.0f s: %s (baseline %s)", step.id, samples,
                          elapsed, step.window_seconds, values, baseline or "-")
            if not result.passed:
                self._record(ledger, who, "failed", {"values": values, "baseline": baseline,
                                                     "detail": result.detail})
                raise VerificationFailed(step.id, "(health gate)", f"{result.detail} after {elapsed:.0f} s "
                                         f"(sample {samples}); rolling back")
            if elapsed + step.interval_seconds > step.window_seconds:
                self._record(ledger, who, "applied", {"values": values, "baseline": baseline, "samples": samples})
                self.log.info("health gate '%s' held for %.0f s (%d samples)", step.id, elapsed, samples)
                return {"step": step.id, "passed": True, "samples": samples, "last": values}
        finally:
            for engine in {id(e): e for e in engines.values()}.values():
                engine.dispose()
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=step.interval_seconds)), method_name="resume_watch",
                   kwargs={"started_at": started_at, "samples": samples, "baseline": baseline})
        raise AssertionError("unreachable: defer() raises")

    def _engines(self) -> dict[str, Any]:
        target, _ = self.open_target()
        return {"target": target, "source": self.open_source() or target}

    def _record(self, ledger: Ledger, who: Any, status: str, details: dict[str, Any]) -> None:
        step = self.step
        row_id, started = ledger.start(step.id, "apply", step_checksum(step),
                                       {"kind": "health_gate", "transactional": True, "irreversible": False,
                                        "up": [f"watch {', '.join(m.name for m in step.metrics)}"], "down": []}, who)
        text = json.dumps(details, default=str)
        ledger.finish(row_id, status, started_at=started, verified=text if status == "applied" else None,
                      error=None if status == "applied" else text)

    def describe(self, dialect: str = "postgresql") -> list[str]:
        step = self.step
        rules = ", ".join(f"{t.metric} > {t.max:g}" if t.max is not None else
                          f"{t.metric} > {t.max_ratio_to_baseline:g}x baseline" for t in step.effective_thresholds())
        return [f"samples {', '.join(m.name for m in step.metrics)} every {step.interval_seconds:g} s for "
                f"{step.window_seconds:g} s (deferring in between); fails → rollback when {rules or 'never'}"]
