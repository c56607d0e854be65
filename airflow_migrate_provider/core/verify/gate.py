"""A plan's `kind: health_gate` step: the gate built from the plan, and its baseline kept in the ledger.

The baseline is sampled in preflight, before anything changes, and stored as a ``baseline`` row of the
ledger history (ignored by everything that looks for applied steps), so the gate compares against the
application as it was before this run, whichever worker runs the gate and however often it is cleared.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.ledger import Ledger, RunIdentity, history
from airflow_migrate_provider.plan.model import HealthGateStep

log = logging.getLogger(__name__)
BASELINE_ACTION = "baseline"


def health_gate(step: HealthGateStep, engines: dict[str, Engine]) -> Any:
    """The core HealthGate for a plan step."""
    from airflow_migrate_provider.core.verify.health import HealthGate, Metric, Threshold

    return HealthGate([Metric(m.name, sql=m.sql, url=m.url, json_path=m.json_path) for m in step.metrics],
                      [Threshold(t.metric, max=t.max, max_ratio_to_baseline=t.max_ratio_to_baseline)
                       for t in step.effective_thresholds()],
                      engines=engines, database=step.database)


def capture_baseline(step: HealthGateStep, engines: dict[str, Engine], ledger: Ledger,
                     who: RunIdentity) -> dict[str, Any]:
    """Sample a health gate's metrics now (preflight) and record the medians in the ledger."""
    baseline = health_gate(step, engines).capture_baseline(samples=step.baseline_samples,
                                                           interval_s=min(1.0, step.interval_seconds))
    row_id, started = ledger.start(step.id, BASELINE_ACTION, "-", {"kind": "health_gate", "baseline": baseline},
                                   who)
    ledger.finish(row_id, "recorded", started_at=started, verified=json.dumps(baseline))
    log.info("health gate '%s': baseline %s", step.id, baseline)
    return baseline


def load_baseline(ledger: Ledger, step_id: str, who: RunIdentity) -> dict[str, float] | None:
    """The baseline this run's preflight recorded for ``step_id`` (None if it recorded none)."""
    with ledger.engine.connect() as conn:
        raw = conn.execute(
            select(history.c.sql).where(history.c.plan_id == ledger.plan_id, history.c.step_id == step_id,
                                        history.c.action == BASELINE_ACTION, history.c.dag_id == who.dag_id,
                                        history.c.run_id == who.run_id, history.c.status == "recorded")
            .order_by(history.c.id.desc()).limit(1)
        ).scalar()
    return json.loads(raw)["baseline"] if raw else None
