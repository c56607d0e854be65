"""The ledger as a table: which steps are applied, by whom, when, and whether their SQL still matches."""

from __future__ import annotations

import json

from airflow_migrate_provider.core.kinds import kind_of
from airflow_migrate_provider.core.ledger import HistoryRow, Ledger, as_utc, holder_state
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
    table += runs_on_steps(plan, ledger, applied)
    table += "".join(kind_of(step).progress(ledger, step) for step in plan.steps)
    return f"plan '{plan.id}'\n{table}\n{lock_line(ledger)}"


def runs_on_steps(plan: Plan, ledger: Ledger, applied: dict[str, HistoryRow]) -> str:
    """For each applied step more than one run worked on: who started it, who resumed it, who finished it."""
    lines = []
    for step in plan.steps:
        row = applied.get(step.id)
        if row is None or row.resumed_from is None:
            continue
        rows = ledger.workers(row)
        done = [f"started by {rows[0].by} ({rows[0].status})"]
        done += [f"resumed by {r.by} ({r.status})" for r in rows[1:-1 if row.status == "applied" else None]]
        if row.status == "applied":
            done.append(f"resumed and finished by {row.by}")
        lines.append(f"  {step.id}: " + ", ".join(done))
    return "\nruns that worked on a step:\n" + "\n".join(lines) if lines else ""


def lock_line(ledger: Ledger) -> str:
    """Who holds the lock, and whether that holder is alive: a dead pid is never shown as a plain holder."""
    held = ledger.lock_holder()
    if held is None:
        return "lock: free"
    until = as_utc(held["expires_at"]).isoformat(timespec="seconds")
    state = holder_state(ledger.engine, held)
    if state.alive is False or state.expired:
        return (f"lock: held by {held['holder']} (dead: {state.describe().removeprefix('dead: ')}; expiry "
                f"{until}); the next run takes it over, or run `airflow-migrate unlock`")
    note = f"alive: {state.why}" if state.alive else "no task of that run is working right now"
    return f"lock: held by {held['holder']} until {until} ({note})"


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
