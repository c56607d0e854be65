"""Fault injection under dag.test(): for every example plan and every task before the rollback, the task fails
right after doing its work (the plan's test-only ``fault_injection``). Every time the DagRun must end failed,
the rollback must have run (preflight excepted: nothing can be applied before it) and the schema and data of
every table must equal what they were before the run, with the rollback's report saying so table by table.

By default one fault per kind of task runs (preflight, backup, each step kind, each backfill phase, the final
verify), spread over SQLite, PostgreSQL and MariaDB: ``DEFAULT_CASES``. The other faults of the matrix are marked
``slow``: ``./scripts/test --slow`` runs them all."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import yaml
from e2e_support import REPO, query, seed, states

from airflow_migrate_provider.dag_builder import (
    PREFLIGHT_TASK,
    ROLLBACK_TASK,
    phase_task_ids,
)
from airflow_migrate_provider.demo import example_plan_path
from airflow_migrate_provider.plan.model import Plan

pytestmark = [pytest.mark.dag, pytest.mark.timeout(300)]

EXAMPLES = {
    "add_user_preferences": ("sqlite", example_plan_path("add_user_preferences.yaml")),
    "backfill_users": ("sqlite", example_plan_path("backfill_users.yaml")),
    "add_user_preferences_pg": ("postgresql", REPO / "dags" / "plans" / "add_user_preferences.yaml"),
    "backfill_users_pg": ("postgresql", REPO / "dags" / "plans" / "backfill_users_pg.yaml"),
    "add_user_preferences_mariadb": ("mariadb", REPO / "dags" / "plans" / "add_user_preferences_mariadb.yaml"),
}
_ids = itertools.count(1)


def fault_points(path: Path) -> list[tuple[str, int | None]]:
    """(task id, map index) for every task of the plan's DAG that runs before the rollback."""
    plan = Plan.model_validate(yaml.safe_load(path.read_text()))
    return [(task, 1 if task.endswith(".copy_chunk") else None) for task in [PREFLIGHT_TASK, *phase_task_ids(plan)]]


CASES = [(name, task, index) for name, (_, path) in EXAMPLES.items() for task, index in fault_points(path)]


def task_kind(example: str, task: str) -> str:
    """What kind of work a fault point interrupts: ``preflight``, ``backup``, ``final verify``, ``step
    <kind>`` (a one-task step), ``backfill <phase>`` (a task of a step's group: start, copy_chunk, ...)."""
    if task == PREFLIGHT_TASK:
        return "preflight"
    group, _, rest = task.partition(".")
    if group != "steps":
        return {"backup": "backup", "verify": "final verify"}.get(group, group)
    step_id, _, phase = rest.partition(".")
    plan = Plan.model_validate(yaml.safe_load(EXAMPLES[example][1].read_text()))
    kind = next(step.kind for step in plan.steps if step.id == step_id)
    return f"{kind} {phase}" if phase else f"step {kind}"


def representative_cases() -> list[tuple[str, str, int | None]]:
    """One case per task kind; of its candidates the one on the dialect picked least so far, then the one
    deepest into its plan (the most to roll back), then the first."""
    by_kind: dict[str, list[tuple[int, int, tuple[str, str, int | None]]]] = {}
    for position, case in enumerate(CASES):
        depth = [c for c in CASES if c[0] == case[0]].index(case)
        by_kind.setdefault(task_kind(case[0], case[1]), []).append((position, depth, case))
    picked, per_dialect = [], {"sqlite": 0, "postgresql": 0, "mariadb": 0}
    for candidates in by_kind.values():
        _, _, case = min(candidates, key=lambda c: (per_dialect[EXAMPLES[c[2][0]][0]], -c[1], c[0]))
        per_dialect[EXAMPLES[case[0]][0]] += 1
        picked.append(case)
    return picked


DEFAULT_CASES = representative_cases()


@pytest.fixture
def backups(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("AIRFLOW_MIGRATE_BACKUPS", str(tmp_path / "backups"))
    monkeypatch.setenv("AIRFLOW_MIGRATE_REPORTS", str(tmp_path / "reports"))
    return tmp_path


def test_every_example_has_a_backup_and_many_fault_points():
    assert len(CASES) >= 25
    for _, path in EXAMPLES.values():
        assert Plan.model_validate(yaml.safe_load(path.read_text())).backup is not None


def test_the_default_cases_cover_every_task_kind_on_both_dialects():
    assert {task_kind(n, t) for n, t, _ in DEFAULT_CASES} == {task_kind(n, t) for n, t, _ in CASES}
    assert {EXAMPLES[n][0] for n, _, _ in DEFAULT_CASES} == {"sqlite", "postgresql", "mariadb"}
    assert len(DEFAULT_CASES) < len(CASES) / 2


@pytest.mark.parametrize(("example", "task", "map_index"),
                         [case if case in DEFAULT_CASES else pytest.param(*case, marks=pytest.mark.slow)
                          for case in CASES],
                         ids=[f"{n}:{t}" + (f"[{i}]" if i is not None else "") for n, t, i in CASES])
def test_fault_rolls_back_to_the_state_before_the_run(example, task, map_index, request, run_plan, fingerprint,
                                                      backups):
    dialect, path = EXAMPLES[example]
    db = request.getfixturevalue({"postgresql": "pg_database", "mariadb": "mariadb_database"}.get(dialect,
                                                                                                   "sqlite_database"))
    seed(db)
    plan = yaml.safe_load(path.read_text())
    plan["id"] = f"fault_{next(_ids)}"
    plan["fault_injection"] = {"task": task, "map_index": map_index}
    before = fingerprint(db)

    dag_run = run_plan(plan, db)

    got = states(dag_run)
    assert dag_run.state == "failed", got
    failed = [ti for ti in dag_run.get_task_instances() if ti.task_id == task
              and (map_index is None or ti.map_index == map_index)]
    assert [str(ti.state) for ti in failed] == ["failed"]
    assert got["outcome"] == "failed"
    assert fingerprint(db) == before, "the rollback did not bring the tables back to their state before the run"
    applied_left = query(db.sqlalchemy_url, "SELECT count(*) FROM airflow_migrate_history h WHERE action = 'apply' "
                                            "AND status = 'applied' AND NOT EXISTS (SELECT 1 FROM "
                                            "airflow_migrate_history r WHERE r.step_id = h.step_id AND r.id > h.id "
                                            "AND r.action = 'revert' AND r.status = 'reverted')")
    assert applied_left == [(0,)]
    if task == PREFLIGHT_TASK:  # nothing can be applied before preflight: the rollback does not run
        assert got[ROLLBACK_TASK] in ("skipped", "upstream_failed")
        return
    assert got[ROLLBACK_TASK] == "success"
    report = json.loads(next((backups / "reports").rglob("rollback.json")).read_text())
    assert report["backup"] is not None
    assert report["tables"], "the rollback report lists no table"
    assert all(t["equal"] for t in report["tables"]), report["tables"]
