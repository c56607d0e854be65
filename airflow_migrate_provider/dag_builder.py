"""Plan → Airflow DAG: one TaskGroup per phase, a rollback teardown and a final outcome task.

    preflight.check >> steps.<id> >> ... >> verify.verify_steps >> rollback.revert_applied (teardown)
                                                                 >> outcome (all_done)

- The rollback is a teardown of the preflight: it always gets a chance to run, skips itself when no
  phase failed, and is skipped when preflight itself failed (nothing was applied; maybe another run holds
  the lock, and its work must not be touched).
- ``outcome`` fails the run when any phase failed, so a rolled-back migration never shows as success,
  while the rollback task itself shows success.
"""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise

from airflow.sdk import DAG, TaskGroup, TriggerRule

from airflow_migrate_provider.operators import (
    ApplyStepOperator,
    MigrationOutcomeOperator,
    PreflightOperator,
    RollbackOperator,
    VerifyStepsOperator,
)
from airflow_migrate_provider.plan.model import Plan

PREFLIGHT_TASK = "preflight.check"
VERIFY_TASK = "verify.verify_steps"
ROLLBACK_TASK = "rollback.revert_applied"
OUTCOME_TASK = "outcome"


def step_task_id(step_id: str) -> str:
    return f"steps.{step_id}"


def _doc_md(plan: Plan, source_text: str | None) -> str:
    parts = [f"# Migration plan `{plan.id}`", plan.description or "",
             f"Target connection: `{plan.connections.target}`"
             + (f", source connection: `{plan.connections.source}`" if plan.connections.source else ""),
             "Steps: " + ", ".join(f"`{s.id}`" for s in plan.steps)]
    if source_text:
        parts.append(f"## Plan source\n```yaml\n{source_text}\n```")
    return "\n\n".join(p for p in parts if p)


def build_dag(plan: Plan, *, source_text: str | None = None, dag_id: str | None = None) -> DAG:
    """Build the DAG that runs ``plan``. Touches no database: safe at DAG-parse time."""
    plan_data = plan.model_dump(mode="json")
    common = {"plan": plan_data}
    with DAG(
        dag_id=dag_id or plan.id,
        description=(plan.description.strip().splitlines() or [f"migration plan {plan.id}"])[0][:200],
        schedule=None,
        catchup=False,
        max_active_runs=1,
        tags=["migration", *plan.tags],
        doc_md=_doc_md(plan, source_text),
        default_args={"retries": plan.retries, "retry_delay": timedelta(seconds=plan.retry_delay_seconds)},
    ) as dag:
        with TaskGroup("preflight", tooltip="connections, checklist, ledger, run lock"):
            preflight = PreflightOperator(task_id="check", **common)
        with TaskGroup("steps", tooltip="schema steps, in plan order"):
            step_tasks = [ApplyStepOperator(task_id=step.id, step_id=step.id, doc_md=step.description or None,
                                            **common) for step in plan.steps]
        with TaskGroup("verify", tooltip="re-verify every step"):
            verify = VerifyStepsOperator(task_id="verify_steps", **common)
        phase_ids = [step_task_id(s.id) for s in plan.steps] + [VERIFY_TASK]
        with TaskGroup("rollback", tooltip="runs only if a phase failed"):
            rollback = RollbackOperator(task_id="revert_applied", watched_task_ids=phase_ids, retries=0,
                                        **common)
        outcome = MigrationOutcomeOperator(
            task_id=OUTCOME_TASK, watched_task_ids=[PREFLIGHT_TASK, *phase_ids], rollback_task_id=ROLLBACK_TASK,
            trigger_rule=TriggerRule.ALL_DONE, retries=0, **common,
        )
        chain_tasks = [preflight, *step_tasks, verify]
        for upstream, downstream in pairwise(chain_tasks):
            upstream >> downstream
        verify >> rollback.as_teardown(setups=preflight)
        rollback >> outcome
    return dag
