"""Plan → Airflow DAG: one TaskGroup per phase, a rollback teardown and a final outcome task.

    preflight.check >> backup.create >> steps.<id> >> ... >> verify.verify_steps
                    >> rollback.revert_applied (teardown) >> outcome (all_done)

- ``backup.create`` exists when the plan declares a backup; it runs before any step changes data.
- An irreversible step is preceded by ``steps.before_<id>.verify`` (the steps before it re-verified) and
  ``steps.before_<id>.approve`` (Airflow's ApprovalOperator: a person approves in the UI; a rejection or no
  answer in time fails the run, which rolls back).

- The rollback is a teardown of the preflight: it always gets a chance to run, skips itself when no
  phase failed, and is skipped when preflight itself failed (nothing was applied; maybe another run holds
  the lock, and its work must not be touched).
- ``outcome`` fails the run when any phase failed, so a rolled-back migration never shows as success,
  while the rollback task itself shows success.
"""

from __future__ import annotations

from datetime import timedelta
from itertools import pairwise
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator
from airflow.sdk import DAG, TaskGroup, TriggerRule

from airflow_migrate_provider.operators import (
    ApplyStepOperator,
    BackfillOperator,
    BackupOperator,
    HealthGateOperator,
    MigrationOutcomeOperator,
    PreflightOperator,
    RollbackOperator,
    VerifyOperator,
    VerifyStepsOperator,
)
from airflow_migrate_provider.plan.model import BackfillStep, HealthGateStep, Plan, SchemaStep, VerifyStep

PREFLIGHT_TASK = "preflight.check"
BACKUP_TASK = "backup.create"
VERIFY_TASK = "verify.verify_steps"
ROLLBACK_TASK = "rollback.revert_applied"
OUTCOME_TASK = "outcome"


def step_task_id(step_id: str) -> str:
    return f"steps.{step_id}"


def backfill_task_ids(step: BackfillStep) -> list[str]:
    """A backfill step's tasks, in order: start, the mapped chunk copy, recent (phase 2), final."""
    final = "final_sync" if step.phases.final_sync else "finish"
    names = ["start", "copy_chunk", *(["copy_recent"] if step.phases.recent else []), final]
    return [f"{step_task_id(step.id)}.{name}" for name in names]


def gate_task_ids(step_id: str) -> list[str]:
    """The verification gate and the approval hold before an irreversible step."""
    return [f"steps.before_{step_id}.verify", f"steps.before_{step_id}.approve"]


def _is_irreversible(step: Any) -> bool:
    return isinstance(step, SchemaStep) and step.irreversible


def step_task_ids(plan: Plan) -> list[str]:
    """Every task that applies a step (with the gates before irreversible ones), in plan order."""
    ids = []
    for step in plan.steps:
        if _is_irreversible(step):
            ids += gate_task_ids(step.id)
        ids += backfill_task_ids(step) if isinstance(step, BackfillStep) else [step_task_id(step.id)]
    return ids


def phase_task_ids(plan: Plan) -> list[str]:
    """The tasks whose failure means the run failed and must roll back: backup, steps, final verify."""
    return [*([BACKUP_TASK] if plan.backup else []), *step_task_ids(plan), VERIFY_TASK]


def _approval_gate(plan: Plan, step: SchemaStep, common: dict[str, Any]) -> tuple[Any, Any]:
    """Verify what is applied so far, then hold for a person's approval before the point of no return."""
    backup_line = ("Backup: `{{ ti.xcom_pull(task_ids='" + BACKUP_TASK + "')['backup_id'] }}` (verified)."
                   if plan.backup else "No backup is declared in the plan.")
    body = (f"Step **`{step.id}`** of plan `{plan.id}` is **irreversible**: {step.description or 'no description'}"
            f"\n\nThe steps before it are applied and their verification just passed. {backup_line}\n\n"
            f"**Approve**: the step runs; if anything fails afterwards, automatic rollback stops at this step.\n"
            f"**Reject** (or no answer within {plan.approval.timeout_hours:g} h): the run fails and rolls back "
            f"everything it applied.")
    with TaskGroup(f"before_{step.id}", tooltip=f"point of no return: verification gate and approval for {step.id}"):
        verify = VerifyStepsOperator(task_id="verify", before_step=step.id, **common)
        approve = ApprovalOperator(
            task_id="approve", subject=f"Approve irreversible step '{step.id}' of migration '{plan.id}'?",
            body=body, response_timeout=timedelta(hours=plan.approval.timeout_hours), fail_on_reject=True,
            assigned_users=[{"id": u, "name": u} for u in plan.approval.assigned_users] or None, retries=0,
        )
        verify >> approve
    return verify, approve


def _backfill_group(step: BackfillStep, common: dict[str, Any]) -> tuple[Any, Any]:
    """The tasks of one backfill step in their own group: (first task, last task)."""
    kwargs = {"step_id": step.id, **common}
    with TaskGroup(step.id, tooltip=f"backfill {step.target}: chunks, recent rows, final sync"):
        start = BackfillOperator(task_id="start", phase="start", doc_md=step.description or None, **kwargs)
        copy = BackfillOperator.partial(
            task_id="copy_chunk", phase="chunk", map_index_template="{{ task.chunk['label'] }}", **kwargs,
        ).expand(chunk=start.output)
        tasks: list[Any] = [start, copy]
        if step.phases.recent:
            tasks.append(BackfillOperator(task_id="copy_recent", phase="recent", **kwargs))
        tasks.append(BackfillOperator(task_id="final_sync" if step.phases.final_sync else "finish",
                                      phase="final", **kwargs))
        for upstream, downstream in pairwise(tasks):
            upstream >> downstream
    return start, tasks[-1]


def _doc_md(plan: Plan, source_text: str | None) -> str:
    parts = [f"# Migration plan `{plan.id}`", plan.description or "",
             f"Target connection: `{plan.connections.target}`"
             + (f", source connection: `{plan.connections.source}`" if plan.connections.source else ""),
             "Steps: " + ", ".join(f"`{s.id}`" for s in plan.steps)]
    if source_text:
        parts.append(f"## Plan source\n```yaml\n{source_text}\n```")
    return "\n\n".join(p for p in parts if p)


def build_dag(plan: Plan, *, source_text: str | None = None, dag_id: str | None = None,
              plan_dir: str | None = None) -> DAG:
    """Build the DAG that runs ``plan`` (``plan_dir``: the plan file's folder, for relative paths in it).
    Touches no database: safe at DAG-parse time."""
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
        ends: list[tuple[Any, Any]] = []
        if plan.backup is not None:
            with TaskGroup("backup", tooltip="verified backup of the tables the plan touches"):
                backup = BackupOperator(task_id="create", **common)
            ends.append((backup, backup))
        with TaskGroup("steps", tooltip="the plan's steps, in order"):
            for step in plan.steps:
                if _is_irreversible(step):
                    ends.append(_approval_gate(plan, step, common))
                if isinstance(step, BackfillStep):
                    ends.append(_backfill_group(step, common))
                elif isinstance(step, VerifyStep | HealthGateStep):
                    operator = VerifyOperator if isinstance(step, VerifyStep) else HealthGateOperator
                    extra = {"plan_dir": plan_dir} if isinstance(step, VerifyStep) else {}
                    task = operator(task_id=step.id, step_id=step.id, doc_md=step.description or None, **extra,
                                    **common)
                    ends.append((task, task))
                else:
                    task = ApplyStepOperator(task_id=step.id, step_id=step.id, doc_md=step.description or None,
                                             **common)
                    ends.append((task, task))
        with TaskGroup("verify", tooltip="re-verify every step"):
            verify = VerifyStepsOperator(task_id="verify_steps", **common)
        phase_ids = phase_task_ids(plan)
        with TaskGroup("rollback", tooltip="runs only if a phase failed"):
            rollback = RollbackOperator(task_id="revert_applied", watched_task_ids=phase_ids, retries=0,
                                        **common)
        outcome = MigrationOutcomeOperator(
            task_id=OUTCOME_TASK, watched_task_ids=[PREFLIGHT_TASK, *phase_ids], rollback_task_id=ROLLBACK_TASK,
            trigger_rule=TriggerRule.ALL_DONE, retries=0, **common,
        )
        chain_ends = [(preflight, preflight), *ends, (verify, verify)]
        for (_, upstream_last), (downstream_first, _) in pairwise(chain_ends):
            upstream_last >> downstream_first
        verify >> rollback.as_teardown(setups=preflight)
        rollback >> outcome
    return dag
