"""Runs a dual_write step's replay phase in a child process, so that a test can SIGKILL it in the middle.

Usage: ``python dual_write_kill_worker.py '<json config>'`` with the keys ``source_url``, ``target_url`` (the
same URL for one SQLite file), ``plan`` (the plan's YAML text; its first step is the dual_write step), ``run_id``
and ``stall_at`` (a batch number or null). The worker runs ``DualWriteKind.replay`` — the replay task's own code
path — and prints on stdout ``ready``, then one ``batch <n> <changes> <last seq>`` line per batch and ``done``
when caught up. With ``stall_at`` = n it prints ``stall <n>`` and sleeps when batch n is about to delete the
change rows it read (on two databases: after the new table's transaction committed with its checkpoint; on one
SQLite file: inside the batch's only transaction), so that a kill lands exactly there.

Imported by path from the test (it is not a conftest): no test-only imports beyond the provider itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from sqlalchemy import create_engine

from airflow_migrate_provider.core.capture.replay import Replayer
from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.kinds import kind_named
from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
from airflow_migrate_provider.plan.loader import parse_plan


def say(line: str) -> None:
    print(line, flush=True)


def instrument(stall_at: int | None) -> None:
    """Report every batch on stdout; stall before batch ``stall_at`` forgets its change rows."""
    replay_batch, forget = Replayer.replay_batch, Replayer._forget
    batches = {"n": 0}

    def reporting_batch(self: Replayer, limit: int, within: Any = None) -> Any:
        batches["n"] += 1
        batch = replay_batch(self, limit, within)
        if batch is not None:
            say(f"batch {batches['n']} {batch.changes} {batch.last_seq}")
        return batch

    def stalling_forget(self: Replayer, conn: Any, seqs: list[int]) -> None:
        if stall_at is not None and batches["n"] == stall_at:
            say(f"stall {batches['n']}")
            time.sleep(120)
        forget(self, conn, seqs)

    Replayer.replay_batch = reporting_batch  # type: ignore[method-assign]
    Replayer._forget = stalling_forget  # type: ignore[method-assign]


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("airflow_migrate_provider").setLevel(logging.INFO)
    instrument(cfg.get("stall_at"))
    plan = parse_plan(cfg["plan"])
    target = create_engine(cfg["target_url"])
    source = None if cfg["source_url"] == cfg["target_url"] else create_engine(cfg["source_url"])
    ledger = Ledger(target, plan.id)
    ledger.ensure()
    ctx = RunContext(target, dialect_for(target), ledger, RunIdentity("d", cfg["run_id"], 1), plan=plan,
                     source=source)
    say("ready")
    totals = kind_named("dual_write").replay(ctx, plan.steps[0])
    say(f"done {totals.changes} {totals.lag_changes}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
