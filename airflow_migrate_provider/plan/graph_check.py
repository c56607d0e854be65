"""What the DAG build would reject, found while validating: a plan that validates builds its DAG.

The checks run on the Airflow-free task graph (``core.task_graph``, the one the DAG is built from):

- every task id once, and no task id that is also a TaskGroup's id (a step named ``before_<id>`` beside the
  irreversible step ``<id>``, whose verification gate and approval live in the group ``steps.before_<id>``);
- Airflow's rules for ids: at most 250 characters, task names of letters, digits, ``_ - .``, group names
  of letters, digits, ``_ -``;
- ``fault_injection.task`` names a task of this DAG that can fail on purpose (not an approval), and its
  ``map_index`` only a mapped task.

Each problem comes with the plan location (``("steps", 2, "id")``) the loader turns into a line.
"""

from __future__ import annotations

import difflib
import re
from typing import Any

Loc = tuple[str | int, ...]
ID_MAX_CHARS = 250  # Airflow's limit for dag_id and task_id (airflow.sdk.definitions._internal.node.validate_key)
_TASK_NAME = re.compile(r"[\w.-]+")  # airflow.sdk.definitions._internal.node.KEY_REGEX
_GROUP_NAME = re.compile(r"[\w-]+")  # ... GROUP_KEY_REGEX
_LISTED = 12  # task ids listed in a message


def graph_problems(plan: Any) -> list[tuple[Loc, str]]:
    """(location, message) for every way ``plan``'s DAG could not be built as validated."""
    from airflow_migrate_provider.core.task_graph import build_task_graph

    graph = build_task_graph(plan)
    ids = [task.task_id for task in graph.tasks]
    found = _id_problems(plan, ids)
    if plan.fault_injection is not None:
        found += _fault_problems(plan.fault_injection, graph)
    return found


def _step_loc(plan: Any, task_id: str) -> Loc:
    """The step a task id comes from (``steps.<id>...``, ``steps.before_<id>...``), else the plan's id."""
    parts = task_id.split(".")
    if parts[0] != "steps" or len(parts) < 2:
        return ("id",)
    index = {step.id: i for i, step in enumerate(plan.steps)}
    name = parts[1]
    if name in index:
        return ("steps", index[name], "id")
    if name.startswith("before_") and name[len("before_"):] in index:
        return ("steps", index[name[len("before_"):]], "id")
    return ("steps",)


def _id_problems(plan: Any, ids: list[str]) -> list[tuple[Loc, str]]:
    groups = {task_id.rsplit(".", depth)[0] for task_id in ids for depth in range(1, task_id.count(".") + 1)}
    found: list[tuple[Loc, str]] = []
    seen: set[str] = set()
    for task_id in ids:
        if task_id in groups:
            members = sorted(other for other in ids if other.startswith(task_id + "."))
            found.append((_step_loc(plan, task_id), _clash(task_id, f"the TaskGroup of {', '.join(members)}")))
        elif task_id in seen:
            found.append((_step_loc(plan, task_id), _clash(task_id, "the id of another task")))
        seen.add(task_id)
        found += [(_step_loc(plan, task_id), message) for message in _airflow_key_problems(task_id)]
    return found


def _clash(task_id: str, other: str) -> str:
    parts = task_id.split(".")
    step = parts[1] if len(parts) > 1 else task_id
    hint = ""
    if step.startswith("before_"):
        hint = (f" (`before_<id>` is the group Airflow gets for the verification gate and approval before the "
                f"irreversible step `{step[len('before_'):]}`)")
    return (f"step '{step}' makes the task '{task_id}', which is also {other}{hint}; Airflow needs each id once: "
            f"rename step '{step}'")


def _airflow_key_problems(task_id: str) -> list[str]:
    """What Airflow's validate_key would say about the task id and its group names."""
    problems = []
    if len(task_id) > ID_MAX_CHARS:
        problems.append(f"the task id '{task_id[:60]}...' has {len(task_id)} characters, more than Airflow's "
                        f"{ID_MAX_CHARS}; use a shorter step id")
    *groups, name = task_id.split(".")
    bad = [part for part in groups if not _GROUP_NAME.fullmatch(part)]
    if not _TASK_NAME.fullmatch(name) or bad:
        problems.append(f"the task id '{task_id}' is not one Airflow accepts (letters, digits, _ - . only)")
    return problems


def _fault_problems(fault: Any, graph: Any) -> list[tuple[Loc, str]]:
    tasks = {task.task_id: task for task in graph.tasks}
    can_fail = [task_id for task_id, task in tasks.items() if task.operator != "ApprovalOperator"]
    task = tasks.get(fault.task)
    if task is None or task.operator == "ApprovalOperator":
        why = "is an approval, which cannot fail on purpose" if task is not None else "is not a task of this plan's DAG"
        advice = _suggest(fault.task, can_fail)
        return [(("fault_injection", "task"), f"fault_injection.task '{fault.task}' {why}; {advice}")]
    if fault.map_index is not None and task.mapped_over is None:
        return [(("fault_injection", "map_index"), f"fault_injection.map_index is given but '{fault.task}' is not a "
                 "mapped task (it has no map index): remove map_index")]
    return []


def _suggest(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    if close:
        return "did you mean " + " or ".join(f"'{c}'" for c in close) + "?"
    shown = ", ".join(candidates[:_LISTED]) + (f", ... ({len(candidates)} in all)" if len(candidates) > _LISTED else "")
    return f"the tasks are: {shown}"
