"""The core, the plan model and the light CLI commands must work where Airflow is not importable.

Each check runs in a fresh interpreter, so what this test session already imported does not matter.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import airflow_migrate_provider

EXAMPLE = Path(airflow_migrate_provider.__file__).parent / "examples" / "add_user_preferences.yaml"

BLOCK_AIRFLOW = r"""
import sys

class _Blocked:
    TOP = {"airflow"}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.TOP:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _Blocked())
for _name in list(sys.modules):
    if _name.split(".")[0] == "airflow":
        del sys.modules[_name]
try:
    import airflow  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("the airflow blocker does not work")
"""


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_core_and_plan_import_without_airflow() -> None:
    code = BLOCK_AIRFLOW + r"""
import importlib, json, pkgutil
import airflow_migrate_provider.core as core
import airflow_migrate_provider.plan as plan

names = []
for pkg in (core, plan):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        importlib.import_module(info.name)
        names.append(info.name)
for name in ("airflow_migrate_provider.errors", "airflow_migrate_provider.masking"):
    importlib.import_module(name)
    names.append(name)
print(json.dumps(names))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    imported = set(json.loads(result.stdout))
    # the walk really found the modules (an empty walk would pass trivially)
    assert {
        "airflow_migrate_provider.core.ledger",
        "airflow_migrate_provider.core.steps",
        "airflow_migrate_provider.core.actions",
        "airflow_migrate_provider.core.kinds.registry",
        "airflow_migrate_provider.core.kinds.schema",
        "airflow_migrate_provider.core.kinds.backfill",
        "airflow_migrate_provider.core.task_graph",
        "airflow_migrate_provider.core.preflight",
        "airflow_migrate_provider.core.rollback",
        "airflow_migrate_provider.core.lock_keeper",
        "airflow_migrate_provider.core.dialects.postgresql",
        "airflow_migrate_provider.core.dialects.sqlite",
        "airflow_migrate_provider.core.backfill.runner",
        "airflow_migrate_provider.core.backfill.copier",
        "airflow_migrate_provider.core.dialects.pg_copy",
        "airflow_migrate_provider.plan.loader",
        "airflow_migrate_provider.plan.model",
        "airflow_migrate_provider.errors",
        "airflow_migrate_provider.masking",
    } <= imported


def test_validate_works_without_airflow() -> None:
    code = BLOCK_AIRFLOW + f"""
from airflow_migrate_provider import commands
print(len(commands.validate([{str(EXAMPLE)!r}])))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"


def test_cli_validate_runs_without_airflow() -> None:
    code = BLOCK_AIRFLOW + f"""
import sys
sys.argv = ["airflow-migrate", "validate", {str(EXAMPLE)!r}]
from airflow_migrate_provider.cli import main
main()
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "1 plan(s) valid" in result.stdout


def test_render_works_without_airflow() -> None:
    backfill = EXAMPLE.with_name("backfill_users.yaml")
    code = BLOCK_AIRFLOW + f"""
import sys
from airflow_migrate_provider.cli import main
for plan in ({str(EXAMPLE)!r}, {str(backfill)!r}):
    sys.argv = ["airflow-migrate", "render", plan, "--dialect", "sqlite"]
    try:
        main()
    except SystemExit as exit:
        assert not exit.code, exit.code
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "rollback.revert_applied  <RollbackOperator> (teardown)" in out
    assert "steps.move_preferences  <ApplyStepOperator>" in out
    assert "steps.copy_users.copy_chunk  <BackfillOperator, mapped>" in out
    assert "SELECT" in out and "DROP TABLE" in out


def test_light_modules_do_not_import_heavy_packages() -> None:
    code = r"""
import json, sys
import airflow_migrate_provider.commands
import airflow_migrate_provider.cli
import airflow_migrate_provider.dag_loader
heavy = ("airflow", "great_expectations", "pandas")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in heavy)))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_the_heavy_module_check_can_see_airflow() -> None:
    # control for the test above: importing an Airflow-facing module does show up in sys.modules
    code = r"""
import json, sys
import airflow_migrate_provider.dag_builder
print(json.dumps(any(m.split(".")[0] == "airflow" for m in sys.modules)))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) is True
