"""Plan → Airflow DAG, from the Airflow-free task graph (``core.task_graph``): one TaskGroup per phase, a
rollback teardown and a final outcome task.

    preflight.check >> backup.create >> steps.<id> >> ... >> verify.verify_steps
                    >> rollback.revert_applied (teardown) >> outcome (all_done)

- ``backup.create`` exists when the plan declares a backup; it runs before any step changes data.
- Each step gets the tasks its kind's shape asks for (one task, or a group such as a backfill's start →
  mapped chunks → recent → final sync).
- A point of no return is preceded by ``steps.before_<id>.verify`` (the steps before it re-verified) and
  ``steps.before_<id>.approve`` (Airflow's ApprovalOperator: a person approves in the UI; a rejection or no
  answer in time fails the run, which rolls back).
- The rollback is a teardown of the preflight: it always gets a chance to run, skips itself when no
  phase failed, and is skipped when preflight itself failed (nothing was applied; maybe another run holds
  the lock, and its work must not be touched). It watches exactly the phase tasks built here.
- ``outcome`` fails the run when any phase failed, so a rolled-back migration never shows as success,
  while the rollback task itself shows success.
"""

from __future__ import annotations

from contextlib import ExitStack
from datetime import timedelta
from itertools import pairwise
from typing import Any

from airflow.sdk import DAG, TaskGroup

from airflow_migrate_provider.core.task_graph import (
    BACKUP_TASK,
    GROUP_TOOLTIPS,
    OUTCOME_TASK,
    PREFLIGHT_TASK,
    ROLLBACK_TASK,
    VERIFY_TASK,
    GraphTask,
    TaskGraph,
    build_task_graph,
)
from airflow_migrate_provider.operators import OPERATORS
from airflow_migrate_provider.plan.model import Plan

__all__ = ["BACKUP_TASK", "OUTCOME_TASK", "PREFLIGHT_TASK", "ROLLBACK_TASK", "VERIFY_TASK", "build_dag",
           "gate_task_ids", "phase_task_ids", "step_task_id"]


def step_task_id(step_id: str) -> str:
    return f"steps.{step_id}"


def gate_task_ids(step_id: str) -> list[str]:
    """The verification gate and the approval hold before an irreversible step."""
    return [f"steps.before_{step_id}.verify", f"steps.before_{step_id}.approve"]


def phase_task_ids(plan: Plan) -> list[str]:
    """The tasks whose failure means the run failed and must roll back: backup, steps, final verify."""
    return build_task_graph(plan).watched_task_ids()


DOC_SOURCE_LIMIT = 100_000  # characters of the plan's YAML shown in the DAG docs (stored with every parse)


def template_safe(text: str) -> str:
    """Plan text shown in a Jinja-rendered field, as literal text (never evaluated as a template)."""
    return text.replace("{", "{{ '{' }}")


def _approval(plan: Plan, step: Any, task: GraphTask) -> Any:
    from airflow.providers.standard.operators.hitl import ApprovalOperator  # only plans with a point of no return

    backup_line = ("Backup: `{{ ti.xcom_pull(task_ids='" + BACKUP_TASK + "')['backup_id'] }}` (verified)."
                   if plan.backup else "No backup is declared in the plan.")
    body = (f"Step **`{step.id}`** of plan `{plan.id}` is **irreversible**: "
            f"{template_safe(step.description or 'no description')}"
            f"\n\nThe steps before it are applied and their verification just passed. {backup_line}\n\n"
            f"**Approve**: the step runs; if anything fails afterwards, automatic rollback stops at this step.\n"
            f"**Reject** (or no answer within {plan.approval.timeout_hours:g} h): the run fails and rolls back "
            f"everything it applied.")
    return ApprovalOperator(
        task_id=task.name, subject=f"Approve irreversible step '{step.id}' of migration '{plan.id}'?",
        body=body, response_timeout=timedelta(hours=plan.approval.timeout_hours), fail_on_reject=True,
        assigned_users=[{"id": u, "name": u} for u in plan.approval.assigned_users] or None, retries=0,
    )


def _kind_approval(plan: Plan, request: dict[str, Any], task: GraphTask) -> Any:
    """An approval a step kind asks for in its task shape: its subject and body (plan text, shown as written),
    and the summary a sibling task returned (``summary_from``), pulled from XCom when the hold starts."""
    from airflow.providers.standard.operators.hitl import ApprovalOperator

    body = template_safe(request["body"])
    if request.get("summary_from"):
        sibling = task.task_id.rsplit(".", 1)[0] + "." + request["summary_from"]
        body += "\n\n**Summary**: {{ ti.xcom_pull(task_ids='" + sibling + "')['summary'] }}"
    body += (f"\n\n**Reject** (or no answer within {plan.approval.timeout_hours:g} h): the run fails and rolls "
             f"back everything it applied.")
    return ApprovalOperator(
        task_id=task.name, subject=template_safe(request["subject"]), body=body,
        response_timeout=timedelta(hours=plan.approval.timeout_hours), fail_on_reject=True,
        assigned_users=[{"id": u, "name": u} for u in plan.approval.assigned_users] or None, retries=0,
    )


def _doc_md(plan: Plan, source_text: str | None) -> str:
    parts = [f"# Migration plan `{plan.id}`", plan.description or "",
             f"Target connection: `{plan.connections.target}`"
             + (f", source connection: `{plan.connections.source}`" if plan.connections.source else ""),
             "Steps: " + ", ".join(f"`{s.id}`" for s in plan.steps)]
    if source_text:
        shown = source_text[:DOC_SOURCE_LIMIT]
        more = (f"\n\n(the first {DOC_SOURCE_LIMIT:,} of {len(source_text):,} characters; the plan file has the rest)"
                if len(source_text) > DOC_SOURCE_LIMIT else "")
        parts.append(f"## Plan source\n```yaml\n{shown}\n```{more}")
    return "\n\n".join(p for p in parts if p)


class _Builder:
    """Instantiates the graph's tasks inside their TaskGroups, remembering each built task by id."""

    def __init__(self, plan: Plan, graph: TaskGraph, common: dict[str, Any], plan_dir: str | None):
        self.plan, self.graph, self.common, self.plan_dir = plan, graph, common, plan_dir
        self.built: dict[str, Any] = {}
        self.steps = {step.id: step for step in plan.steps}
        self.groups: dict[str, Any] = {}

    def _group(self, stack: ExitStack, task: GraphTask) -> None:
        parts = task.task_id.split(".")[:-1]
        for depth in range(1, len(parts) + 1):
            path = ".".join(parts[:depth])
            tooltip = GROUP_TOOLTIPS.get(path) if depth == 1 else task.subgroup_tooltip
            group = self.groups.get(path) or TaskGroup(parts[depth - 1], tooltip=tooltip or "")
            self.groups[path] = group
            stack.enter_context(group)

    def watched(self) -> list[str]:
        """The ids Airflow gave the phase tasks built so far: a failure of any of them means roll back."""
        return [self.built[t.task_id].task_id for t in self.graph.tasks if t.watched and t.task_id in self.built]

    def build(self, task: GraphTask) -> Any:
        with ExitStack() as stack:
            self._group(stack, task)
            if task.operator == "ApprovalOperator" and "approval" in task.args:
                built = _kind_approval(self.plan, task.args["approval"], task)
            elif task.operator == "ApprovalOperator":
                built = _approval(self.plan, self.steps[task.args["step_id"]], task)
            else:
                built = self._operator(task)
        self.built[task.task_id] = built
        return built

    def _operator(self, task: GraphTask) -> Any:
        operator = OPERATORS[task.operator]
        kwargs: dict[str, Any] = {**task.args, **self.common}
        if task.operator == "VerifyOperator":
            kwargs["plan_dir"] = self.plan_dir
        if "step_id" in task.args:
            kwargs["doc_md"] = self.steps[task.args["step_id"]].description or None
        if task.operator == "RollbackOperator":
            kwargs.update(watched_task_ids=self.watched(), retries=0)
        if task.operator == "MigrationOutcomeOperator":
            kwargs.update(watched_task_ids=[self.built[PREFLIGHT_TASK].task_id, *self.watched()],
                          rollback_task_id=ROLLBACK_TASK, retries=0, trigger_rule=task.trigger_rule)
        if task.mapped_over is None:
            return operator(task_id=task.name, **kwargs)
        template = "{{ task." + task.map_arg + "['" + (task.map_label or "label") + "'] }}"
        return operator.partial(task_id=task.name, map_index_template=template, **kwargs).expand(
            **{task.map_arg: self.built[task.mapped_over].output})


def build_dag(plan: Plan, *, source_text: str | None = None, dag_id: str | None = None,
              plan_dir: str | None = None) -> DAG:
    """Build the DAG that runs ``plan`` (``plan_dir``: the plan file's folder, for relative paths in it).
    Touches no database: safe at DAG-parse time."""
    graph = build_task_graph(plan)
    common = {"plan": plan.model_dump(mode="json"), "target_conn_id": plan.connections.target}
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
        builder = _Builder(plan, graph, common, plan_dir)
        chain = [builder.build(task) for task in graph.chain]
        for upstream, downstream in pairwise(chain):
            upstream >> downstream
        rollback = builder.build(graph.task(ROLLBACK_TASK))
        outcome = builder.build(graph.task(OUTCOME_TASK))
        chain[-1] >> rollback.as_teardown(setups=builder.built[PREFLIGHT_TASK])
        rollback >> outcome
    return dag
