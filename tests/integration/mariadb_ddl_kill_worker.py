"""Applies (or reverts) a schema step in a child process, so that a test can SIGKILL it mid-step on MariaDB.

Usage: ``python mariadb_ddl_kill_worker.py '<json config>'`` with the keys ``url``, ``plan`` (YAML text; its first
step is applied), ``run_id``, ``try_number``, ``action`` (apply | revert) and ``stall_after`` (a statement number or
null). The worker runs the step through StepRunner (the task's own code path) and prints ``ran <n>`` after each
statement has committed on the server, before the ledger records it; with ``stall_after`` = n it prints
``stall <n>`` and sleeps right there, so that a kill lands in the window where MariaDB has committed a DDL statement
the ledger does not know about. Prints ``done`` at the end.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from migrate_it_support import runner_for
from sqlalchemy import create_engine

from airflow_migrate_provider.core.kinds import schema
from airflow_migrate_provider.core.ledger import RunIdentity
from airflow_migrate_provider.core.rollback import rollback_run
from airflow_migrate_provider.plan.loader import parse_plan


def instrument(stall_after: int | None) -> None:
    execute = schema._execute
    ran = {"n": 0}

    def reporting_execute(ctx: Any, conn: Any, step_id: str, action: str, statement: str) -> None:
        execute(ctx, conn, step_id, action, statement)
        ran["n"] += 1
        print(f"ran {ran['n']}", flush=True)
        if stall_after == ran["n"]:
            print(f"stall {ran['n']}", flush=True)
            time.sleep(120)

    schema._execute = reporting_execute  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    cfg = json.loads(argv[1])
    instrument(cfg["stall_after"])
    engine = create_engine(cfg["url"])
    plan = parse_plan(cfg["plan"])
    who = RunIdentity("d", cfg["run_id"], cfg["try_number"], host="kill-host", pid=1)
    ledger, runner = runner_for(engine, plan.id, who)
    if cfg["action"] == "apply":
        runner.apply(plan.steps[0])
    else:
        rollback_run(ledger, runner, who)
    print("done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
