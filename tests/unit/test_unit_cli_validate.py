"""``airflow-migrate validate``: in-process through typer's CliRunner, and through the console script's
``main()`` (the ``cli`` fixture; the installed script's subprocess smoke test is in
tests/dags/test_cli_commands.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import airflow_migrate_provider
from airflow_migrate_provider.cli import app

EXAMPLE = Path(airflow_migrate_provider.__file__).parent / "examples" / "add_user_preferences.yaml"
PROBLEM_LINE = re.compile(r"^(?P<path>.+):(?P<line>\d+):(?P<col>\d+): (?P<message>.+)$")

GOOD = """\
id: good_plan
connections:
  target: app_db
steps:
  - id: create_table
    up: CREATE TABLE t (a int)
    down: DROP TABLE t
    verify: SELECT 1
"""
NO_DOWN = GOOD.replace("    down: DROP TABLE t\n", "")  # 1 problem, at 5:5
TWO_PROBLEMS = GOOD.replace("id: good_plan", "id: bad-plan") + "colour: blue\n"  # 1:1 and 9:1


def problem_lines(stderr: str) -> list[re.Match[str]]:
    lines = stderr.strip().splitlines()
    matches = [PROBLEM_LINE.match(line) for line in lines]
    assert all(matches), f"every stderr line must be path:line:col: message, got:\n{stderr}"
    return [m for m in matches if m]


@pytest.fixture
def plans(tmp_path: Path) -> dict[str, Path]:
    files = {"good": GOOD, "no_down": NO_DOWN, "two_problems": TWO_PROBLEMS}
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(text, encoding="utf-8")
    return paths


# -- in process ---------------------------------------------------------------------------------------


def test_runner_valid_example_exits_0() -> None:
    result = CliRunner().invoke(app, ["validate", str(EXAMPLE)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "1 plan(s) valid"
    assert result.stderr == ""


def test_runner_bad_plan_exits_1_with_located_problems(plans: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["validate", str(plans["no_down"])])
    assert result.exit_code == 1
    assert result.stdout == ""
    [problem] = problem_lines(result.stderr)
    assert problem["path"] == str(plans["no_down"])
    assert (problem["line"], problem["col"]) == ("5", "5")
    assert "step 'create_table' has no `down`" in problem["message"]
    assert "Traceback" not in result.output


def test_runner_reports_problems_of_every_file(plans: dict[str, Path]) -> None:
    result = CliRunner().invoke(app, ["validate", str(plans["no_down"]), str(plans["good"]),
                                      str(plans["two_problems"])])
    assert result.exit_code == 1
    found = [(m["path"], m["line"], m["col"]) for m in problem_lines(result.stderr)]
    assert found == [
        (str(plans["no_down"]), "5", "5"),
        (str(plans["two_problems"]), "1", "1"),
        (str(plans["two_problems"]), "9", "1"),
    ]
    assert "valid" not in result.stdout


def test_runner_missing_file_is_a_located_problem(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    result = CliRunner().invoke(app, ["validate", str(missing)])
    assert result.exit_code == 1
    [problem] = problem_lines(result.stderr)
    assert problem["path"] == str(missing)
    assert problem["message"].startswith("cannot read plan file")
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_runner_validate_needs_at_least_one_file() -> None:
    result = CliRunner().invoke(app, ["validate"])
    assert result.exit_code == 2


# -- through the console script's main() ---------------------------------------------------------


def test_main_valid_example_exits_0(cli) -> None:
    result = cli("validate", EXAMPLE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 plan(s) valid"
    assert result.stderr == ""


def test_main_several_valid_files(plans: dict[str, Path], cli) -> None:
    result = cli("validate", EXAMPLE, plans["good"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2 plan(s) valid"


def test_main_bad_plans_exit_1_with_every_problem(plans: dict[str, Path], tmp_path: Path, cli) -> None:
    missing = tmp_path / "missing.yaml"
    result = cli("validate", plans["good"], plans["no_down"], plans["two_problems"], missing)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    found = [(m["path"], m["line"], m["col"]) for m in problem_lines(result.stderr)]
    assert found == [
        (str(plans["no_down"]), "5", "5"),
        (str(plans["two_problems"]), "1", "1"),
        (str(plans["two_problems"]), "9", "1"),
        (str(missing), "1", "1"),
    ]


def test_main_malformed_yaml_is_one_located_problem(tmp_path: Path, cli) -> None:
    path = tmp_path / "malformed.yaml"
    path.write_text("id: p1\nconnections:\n  target: db\n bad: 1\n", encoding="utf-8")
    result = cli("validate", path)
    assert result.returncode == 1
    assert "Traceback" not in result.stdout + result.stderr
    [problem] = problem_lines(result.stderr)
    assert problem["line"] == "4"
    assert problem["message"].startswith("malformed YAML")


def test_main_never_prints_a_traceback_for_unconstructible_yaml(tmp_path: Path, cli) -> None:
    path = tmp_path / "date.yaml"
    path.write_text(GOOD.replace("id: good_plan", "id: 2024-13-45"), encoding="utf-8")
    result = cli("validate", path)
    assert "Traceback" not in result.stderr
    assert result.returncode == 1
    [problem] = problem_lines(result.stderr)
    assert problem["line"] == "1"
