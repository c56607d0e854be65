"""The ledger as a table: which steps are applied, by whom, when, and whether their SQL still matches."""

from __future__ import annotations

import json

from sqlalchemy import inspect

from airflow_migrate_provider.core.backfill.state import Checkpoints
from airflow_migrate_provider.core.ledger import BACKFILL_TABLE, Ledger
from airflow_migrate_provider.core.steps import step_checksum
from airflow_migrate_provider.core.summary import format_table
from airflow_migrate_provider.plan.model import BackfillStep, Plan


def status_table(plan: Plan, ledger: Ledger) -> str:
    if not ledger.exists():
        return f"plan '{plan.id}': no ledger in the target yet (the plan has never run there)"
    applied = ledger.applied()
    rows = []
    for step in plan.steps:
        row = applied.get(step.id)
        if row is None:
            last = ledger.rows(step.id)
            note = f"last: {last[-1].action} {last[-1].status}" if last else "never run"
            rows.append([step.id, "not applied", "-", note, "-", "-"])
            continue
        matches = "ok" if row.checksum == step_checksum(step) else "EDITED since applied"
        when = row.finished_at.isoformat(timespec="seconds") if row.finished_at else "-"
        rows.append([step.id, "applied" if row.status == "applied" else "partly applied",
                     f"{row.checksum[:12]} ({matches})", row.by, when, f"{row.duration_s or 0:.2f}s"])
    table = format_table(["step", "state", "checksum", "applied by", "finished", "took"], rows)
    table += "".join(backfill_progress(ledger, step.id) for step in plan.steps if isinstance(step, BackfillStep))
    holder = ledger.lock_holder()
    lock = f"lock: held by {holder['holder']} until {holder['expires_at']}" if holder else "lock: free"
    return f"plan '{plan.id}'\n{table}\n{lock}"


def backfill_progress(ledger: Ledger, step_id: str) -> str:
    """Phase-1 chunks of a backfill step with rows copied / total, from its checkpoints ('' if none)."""
    if not inspect(ledger.engine).has_table(BACKFILL_TABLE):
        return ""
    with ledger.engine.connect() as conn:
        chunks = Checkpoints(ledger.plan_id, step_id).chunks(conn)
    if not chunks:
        return ""
    rows = [[c.label(len(chunks)), c.status, f"{c.rows_copied:,}/{c.rows_total:,}",
             "-" if c.position is None else str(c.position[0] if len(c.position) == 1 else c.position)]
            for c in chunks]
    return f"\nbackfill '{step_id}' phase 1:\n" + format_table(["chunk", "status", "rows", "last key"], rows)


def verification_report(plan: Plan, ledger: Ledger) -> str:
    """The verify queries that passed when each currently applied step was applied."""
    if not ledger.exists():
        return "no ledger: nothing was verified"
    applied = ledger.applied()
    lines = []
    for step in plan.steps:
        row = applied.get(step.id)
        passed = json.loads(row.verified) if row is not None and row.verified else []
        lines.append(f"  {step.id}: " + (f"{len(passed)} verify quer{'y' if len(passed) == 1 else 'ies'} passed"
                                         if row is not None else "not applied"))
        lines += [f"    ok  {' '.join(q.split())[:110]}" for q in passed]
    return "\n".join(lines)
