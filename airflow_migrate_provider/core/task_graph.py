"""Plan → task graph, without Airflow: every task the DAG will have, its group, operator, arguments, order and
what it does. ``dag_builder`` turns this graph into operators; ``airflow-migrate render`` prints it (a dry run
that needs neither Airflow nor a database). Steps are shaped by their kind (:meth:`StepKind.task_shape`).

    preflight.check >> backup.create >> steps.<id> >> ... >> verify.verify_steps
                    >> rollback.revert_applied (teardown) >> outcome (all_done)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from airflow_migrate_provider.core.kinds import kind_of
from airflow_migrate_provider.errors import MigrateError

if TYPE_CHECKING:
    from airflow_migrate_provider.core.dialects import Dialect

PREFLIGHT_TASK = "preflight.check"
BACKUP_TASK = "backup.create"
VERIFY_TASK = "verify.verify_steps"
ROLLBACK_TASK = "rollback.revert_applied"
OUTCOME_TASK = "outcome"

GROUP_TOOLTIPS = {
    "preflight": "connections, checklist, ledger, run lock",
    "backup": "verified backup of the tables the plan touches",
    "steps": "the plan's steps, in order",
    "verify": "re-verify every step",
    "rollback": "runs only if a phase failed",
}


@dataclass(frozen=True)
class GraphTask:
    """One task of the DAG: ``task_id`` (with its groups, dot-separated), the operator class name that runs it,
    its extra arguments, and what it does (for render and the task docs)."""

    task_id: str
    operator: str
    args: dict[str, Any] = field(default_factory=dict)
    describe: tuple[str, ...] = ()
    mapped_over: str | None = None  # task id whose output list this task is mapped over
    map_arg: str = "item"
    map_label: str | None = None
    watched: bool = False  # a phase task: its failure sends the run to its rollback
    teardown: bool = False
    trigger_rule: str = "all_success"
    subgroup_tooltip: str | None = None  # for a task inside a step's own TaskGroup

    @property
    def group(self) -> str | None:
        return self.task_id.split(".", 1)[0] if "." in self.task_id else None

    @property
    def name(self) -> str:
        return self.task_id.rsplit(".", 1)[-1]


@dataclass
class TaskGraph:
    """The tasks in run order: each phase task follows the one before it; rollback and outcome close it."""

    tasks: list[GraphTask]

    def task(self, task_id: str) -> GraphTask:
        return next(t for t in self.tasks if t.task_id == task_id)

    @property
    def chain(self) -> list[GraphTask]:
        """preflight, then every phase task in order (the main chain; rollback and outcome come after)."""
        return [t for t in self.tasks if t.task_id == PREFLIGHT_TASK or t.watched]

    def watched_task_ids(self) -> list[str]:
        return [t.task_id for t in self.tasks if t.watched]

    def render(self) -> list[str]:
        """Each group's tasks with their operator and what they do, for ``airflow-migrate render``."""
        lines: list[str] = []
        current: str | None = "-"
        for task in self.tasks:
            if task.group != current:
                lines += ["", f"[{task.group}]" if task.group else "[outcome]"]
                current = task.group
            operator = f"{task.operator}, mapped" if task.mapped_over else task.operator
            lines.append(f"  {task.task_id}  <{operator}>{' (teardown)' if task.teardown else ''} "
                         f"trigger_rule={task.trigger_rule}")
            lines += [f"      {line}" for line in task.describe]
        return lines


def _approval_gate(plan: Any, step: Any, position: int) -> list[GraphTask]:
    """Verify what is applied so far, then hold for a person's approval before the point of no return."""
    group, tooltip = f"steps.before_{step.id}", f"point of no return: verification gate and approval for {step.id}"
    return [
        GraphTask(f"{group}.verify", "VerifyStepsOperator", {"before_step": step.id}, watched=True,
                  subgroup_tooltip=tooltip, describe=(
                      f"gate before the irreversible step '{step.id}': re-runs the verify queries of the "
                      f"{position} step(s) before it (read-only)",)),
        GraphTask(f"{group}.approve", "ApprovalOperator", {"step_id": step.id}, watched=True,
                  subgroup_tooltip=tooltip, describe=(
                      f"holds for a person's approval in the Airflow UI (timeout {plan.approval.timeout_hours:g} h); "
                      f"a rejection or no answer fails the run, which rolls back",)),
    ]


def _step_tasks(step: Any, dialect: Dialect | None) -> list[GraphTask]:
    kind = kind_of(step)
    shape = kind.task_shape(step)
    base = f"steps.{step.id}"
    if shape.group_tooltip is None:
        (spec,) = shape.tasks
        return [GraphTask(base, spec.operator, {"step_id": step.id, **spec.args}, watched=True,
                          describe=tuple(kind.describe(step, dialect)) if dialect is not None else ())]
    return [GraphTask(f"{base}.{spec.name}", spec.operator, {"step_id": step.id, **spec.args},
                      describe=spec.describe, mapped_over=f"{base}.{spec.mapped_over}" if spec.mapped_over else None,
                      map_arg=spec.map_arg, map_label=spec.map_label, watched=True,
                      subgroup_tooltip=shape.group_tooltip)
            for spec in shape.tasks]


def _backup_lines(plan: Any, dialect: str) -> tuple[str, ...]:
    from airflow_migrate_provider.core.backup.make import backup_tables

    spec = plan.backup
    try:
        tables = ", ".join(backup_tables(plan, dialect)) or "none"
    except MigrateError as exc:
        tables = f"cannot tell: {exc}"
    return (f"{spec.strategy} backup of: {tables}" + (" (writes blocked while copying)" if spec.lock_writes else ""),
            "verifies row counts and checksums of the copy against the live tables, records the manifest; "
            + ("steps that change data refuse to run without it" if spec.required else "optional"))


def build_task_graph(plan: Any, dialect: str | None = None) -> TaskGraph:
    """Every task ``plan`` needs, in order. Touches no database and imports no Airflow. With ``dialect``, each
    task also says what it will do on that database (``render``); without, that work is skipped (DAG parse)."""
    sql_dialect = None
    if dialect is not None:
        from airflow_migrate_provider.core.dialects import dialect_named  # rendering only: not at DAG-parse time

        sql_dialect = dialect_named(dialect)
    tasks = [GraphTask(PREFLIGHT_TASK, "PreflightOperator", describe=(
        "checks: target (and source) reachable; every reversible step has a down; every step has a verify; ledger "
        "tables exist and no applied step was edited; takes the run lock",))]
    if plan.backup is not None:
        tasks.append(GraphTask(BACKUP_TASK, "BackupOperator", watched=True,
                               describe=_backup_lines(plan, dialect) if dialect is not None else ()))
    for position, step in enumerate(plan.steps):
        if kind_of(step).is_point_of_no_return(step):
            tasks += _approval_gate(plan, step, position)
        tasks += _step_tasks(step, sql_dialect)
    tasks.append(GraphTask(VERIFY_TASK, "VerifyStepsOperator", watched=True, describe=(
        f"re-runs the verify queries of all {len(plan.steps)} steps (read-only)",)))
    rollback = ["teardown: runs only when a phase failed; reverts, newest first, exactly the steps this run applied "
                "(from the ledger), each with the down SQL recorded when it was applied, then its verify_down; stops "
                "at an irreversible step"]
    if plan.backup is not None:
        rollback.append("then compares every backed-up table with the backup (rows, checksum, definition) and "
                        "restores the ones that differ (or all, if a revert failed); reports table by table")
    tasks.append(GraphTask(ROLLBACK_TASK, "RollbackOperator", teardown=True, trigger_rule="all_done_setup_success",
                           describe=tuple(rollback)))
    tasks.append(GraphTask(OUTCOME_TASK, "MigrationOutcomeOperator", trigger_rule="all_done", describe=(
        "always runs last: summary table, releases the run lock, fails the run if any phase failed",)))
    return TaskGraph(tasks)
