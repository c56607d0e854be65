"""Runs one backfill step's phases in a child process, so that a test can SIGKILL it at any moment.

Usage: ``python backfill_resume_worker.py '<json config>'`` with the keys ``source_url``, ``target_url``,
``plan`` (a plan document), ``step_id`` and ``run_id``. The worker prints one marker line per phase on
stdout (``ready``, ``start``, ``phase1``, ``phase2``, ``phase3``, ``done``), each with the seconds since
``ready``, and logs the engine's INFO lines on stderr.

The module also holds the plain helpers that test_backfill_resume.py shares with the worker (plans, the
runner, the phases in order). It is not a conftest: the child process imports it by path.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.backfill.runner import BackfillRunner
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
from airflow_migrate_provider.core.steps import StepRunner
from airflow_migrate_provider.plan.model import Plan

STEP_ID = "copy_orders"
COLUMNS = ["id", "n", "s", "j", "amount", "updated_at"]


def plan_doc(plan_id: str, source_table: str, target_table: str, *, chunks: int = 2, batch_rows: int = 2000,
             lag_seconds: int = 0, max_lock_seconds: float = 10.0) -> dict[str, Any]:
    """A one-step plan: back-fill ``source_table`` into ``target_table`` by ``id`` with ``updated_at``."""
    return {"id": plan_id, "connections": {"target": "t", "source": "s"}, "steps": [{
        "kind": "backfill", "id": STEP_ID, "source": {"table": source_table}, "target": target_table,
        "key": "id", "watermark": "updated_at", "watermark_lag_seconds": lag_seconds, "chunks": chunks,
        "batch": {"rows": batch_rows, "seconds": None}, "max_lock_seconds": max_lock_seconds}]}


def backfill_runner(source: Engine, target: Engine, plan: Plan, run_id: str) -> BackfillRunner:
    """The BackfillRunner of the plan's step for one (simulated) task try."""
    ledger = Ledger(target, plan.id)
    ledger.ensure()
    runner = StepRunner(target, dialect_for(target), ledger, RunIdentity(plan.id, run_id), plan=plan,
                        source=source)
    return runner.backfill(plan.step(STEP_ID))


def run_all_phases(bf: BackfillRunner, mark: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    """start, every chunk, phase 2, phase 3, in the order Airflow runs them; the final sync's report."""
    mark("start")
    chunks = bf.start()
    mark("phase1")
    for info in chunks:
        bf.copy_chunk(info["chunk"])
    mark("phase2")
    bf.copy_recent()
    mark("phase3")
    report = bf.final_sync()
    mark("done")
    return report.to_json()


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("airflow_migrate_provider").setLevel(logging.INFO)
    source, target = create_engine(cfg["source_url"]), create_engine(cfg["target_url"])
    plan = Plan.model_validate(cfg["plan"])
    bf = backfill_runner(source, target, plan, cfg["run_id"])
    t0 = time.perf_counter()

    def mark(what: str) -> None:
        print(f"{what} {time.perf_counter() - t0:.4f}", flush=True)

    mark("ready")
    report = run_all_phases(bf, mark)
    print(f"report {json.dumps(report, default=str)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
