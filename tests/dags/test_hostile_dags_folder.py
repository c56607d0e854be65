"""Hostile plans in the dags folder: each becomes one import error of its own DAG file, with file:line, quickly
(an alias bomb must not hold the DAG processor past its import timeout), and the good plan still loads."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
from e2e_support import REPO

from tests.unit.plan.hostile_corpus import CASES

pytestmark = pytest.mark.timeout(120)
HOSTILE = {"alias_bomb_kwargs": ":22:17: aliases expand this value", "brackets_600_in_tags": ":9:70: lists and "
           "mappings are nested too deeply", "nul_byte_line_5": ":5:15: a NUL byte", "tag_over_100": ":9:8: tags.0",
           "before_step_clashes_with_gate": ":5:5: step 'before_drop' makes the task 'steps.before_drop'",
           "invalid_utf8_line_6": ":6:16: cannot read plan file"}


def test_hostile_plans_are_each_their_own_import_error(tmp_path: Path) -> None:
    from airflow.dag_processing.dagbag import DagBag

    folder = tmp_path / "dags"
    (folder / "plans").mkdir(parents=True)
    shutil.copy(REPO / "dags" / "migration_plans.py", folder / "migration_plans.py")
    shutil.copy(REPO / "dags" / "plans" / "add_user_preferences.yaml", folder / "plans" / "good.yaml")
    for name in HOSTILE:
        (folder / "plans" / f"{name}.yaml").write_bytes(CASES[name].content)
    DagBag(dag_folder=str(folder))  # the loader module writes the per-plan DAG files

    started = time.perf_counter()
    bag = DagBag(dag_folder=str(folder))
    elapsed = time.perf_counter() - started

    assert bag.dag_ids == ["add_user_preferences_pg"]
    assert sorted(bag.import_errors) == sorted(str(folder / "plans" / f"{name}.py") for name in HOSTILE)
    for name, expected in HOSTILE.items():
        message = bag.import_errors[str(folder / "plans" / f"{name}.py")]
        assert f"{folder / 'plans' / name}.yaml{expected}" in message, message[:500]
        # Airflow shows the import's frames (dagbag_import_error_tracebacks); no other error beside ours
        assert message.count("Traceback") <= 1 and "RecursionError" not in message and "MemoryError" not in message
    assert elapsed < 20, f"filling the DagBag took {elapsed:.1f} s"
