"""The dags/ loader: one DAG per plan file, and a broken plan breaks only its own file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from e2e_support import REPO

pytestmark = pytest.mark.timeout(120)

BROKEN_PLAN = """\
id: broken_plan
connections:
  target: app_db
steps:
  - id: create_t
    up: CREATE TABLE t (id int)
    verify: SELECT 1
"""


def _dags_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "dags"
    (folder / "plans").mkdir(parents=True)
    shutil.copy(REPO / "dags" / "migration_plans.py", folder / "migration_plans.py")
    shutil.copy(REPO / "dags" / "plans" / "add_user_preferences.yaml", folder / "plans" / "good.yaml")
    (folder / "plans" / "broken.yaml").write_text(BROKEN_PLAN)
    return folder


def _parse(folder: Path):
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(folder))


def test_loader_gives_each_plan_its_own_dag_file(tmp_path):
    folder = _dags_folder(tmp_path)
    _parse(folder)  # the loader module writes the per-plan DAG files
    assert (folder / "plans" / "good.py").exists()
    assert (folder / "plans" / "broken.py").exists()

    bag = _parse(folder)

    assert "add_user_preferences_pg" in bag.dag_ids


def test_broken_plan_is_an_import_error_of_its_own_file_only(tmp_path):
    folder = _dags_folder(tmp_path)
    _parse(folder)

    bag = _parse(folder)

    assert "add_user_preferences_pg" in bag.dag_ids
    assert list(bag.import_errors) == [str(folder / "plans" / "broken.py")]
    message = bag.import_errors[str(folder / "plans" / "broken.py")]
    assert "broken.yaml:5:5: steps.0: step 'create_t' has no `down`" in message
    assert len(bag.dags) == 1


def test_example_dags_folder_parses_without_errors():
    bag = _parse(REPO / "dags")
    assert not bag.import_errors
    assert "add_user_preferences_pg" in bag.dag_ids
    dag = bag.dags["add_user_preferences_pg"]
    assert [t.task_id for t in dag.topological_sort()][:3] == ["preflight.check", "backup.create",
                                                              "steps.create_user_preferences"]
