"""The end-of-run summary table analysts read in the task log."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
    from airflow_migrate_provider.plan.model import Plan

TASK_STATES_WORST_FIRST = ("failed", "upstream_failed", "up_for_retry", "running", "deferred", "queued",
                           "scheduled", "None", "skipped", "success")


def worst_state(states: list[str]) -> str:
    """The state that says most about a group of task instances (a mapped task, a step's tasks): failures
    first, success last; states not listed rank after all others."""
    order = TASK_STATES_WORST_FIRST
    return min(states, key=lambda s: order.index(s) if s in order else len(order))


def format_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [line.format(*header), line.format(*("-" * w for w in widths))]
    out += [line.format(*map(str, r)) for r in rows]
    return "\n".join(out)


def run_summary_table(plan: Plan, ledger: Ledger, who: RunIdentity, task_states: dict[str, str]) -> str:
    """One row per plan step: its state in the target after this run and what this run did to it."""
    applied = ledger.applied()
    mine = [r for r in ledger.rows() if r.dag_id == who.dag_id and r.run_id == who.run_id]
    rows = []
    for step in plan.steps:
        done = [r for r in mine if r.step_id == step.id]
        actions = ", ".join(f"{r.action} {r.status} (try {r.try_number}, {r.duration_s or 0:.2f}s)"
                            for r in done) or "-"
        state = "applied" if step.id in applied else "not applied"
        tasks = [s for t, s in task_states.items() if t == f"steps.{step.id}" or t.startswith(f"steps.{step.id}.")]
        task_state = worst_state(tasks) if tasks else "-"
        rows.append([step.id, task_state, state, actions])
    return format_table(["step", "task", "in target", "this run"], rows)
