"""The ledger as a table: which steps are applied, by whom, when, and whether their SQL still matches."""

from __future__ import annotations

import json

from airflow_migrate_provider.core.kinds import kind_of
from airflow_migrate_provider.core.ledger import Ledger
from airflow_migrate_provider.core.summary import format_table
from airflow_migrate_provider.plan.model import Plan


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
        matches = "ok" if row.checksum == kind_of(step).checksum(step) else "EDITED since applied"
        when = row.finished_at.isoformat(timespec="seconds") if row.finished_at else "-"
        rows.append([step.id, "applied" if row.status == "applied" else "partly applied",
                     f"{row.checksum[:12]} ({matches})", row.by, when, f"{row.duration_s or 0:.2f}s"])
    table = format_table(["step", "state", "checksum", "applied by", "finished", "took"], rows)
    table += "".join(kind_of(step).progress(ledger, step) for step in plan.steps)
    holder = ledger.lock_holder()
    lock = f"lock: held by {holder['holder']} until {holder['expires_at']}" if holder else "lock: free"
    return f"plan '{plan.id}'\n{table}\n{lock}"


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
