"""Hostile or careless plans (issue 12, section 2): every file of the corpus (``hostile_corpus.py``) is refused by
`airflow-migrate validate` with exit 1 and ``file:line:col`` messages, no traceback, within 5 s, at most 300 MB, and
without touching any database; plus the limits one by one."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from airflow_migrate_provider.errors import PlanError, PlanImportError
from airflow_migrate_provider.plan import guard
from airflow_migrate_provider.plan.loader import load_plan, parse_plan
from tests.unit.plan.hostile_corpus import CASES, SPECIAL, VALID, write_corpus

REPO = Path(__file__).resolve().parents[3]
SECONDS = 5.0
PEAK_MB = 300
# what touching a database looks like from inside the process (sys.addaudithook events)
DB_EVENTS = ("socket.connect", "sqlite3.connect", "sqlite3.connect/handle")
_events: list[tuple[str, str]] = []
_recording: list[bool] = [False]


def _audit(event: str, args: tuple) -> None:
    if _recording[0] and event in DB_EVENTS:
        _events.append((event, repr(args)[:200]))


sys.addaudithook(_audit)  # cannot be removed: it records only while a test asks it to


@pytest.fixture
def db_access() -> Iterator[list[tuple[str, str]]]:
    """The database (and network) connections opened while the test runs."""
    _events.clear()
    _recording[0] = True
    try:
        yield _events
    finally:
        _recording[0] = False


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("hostile"))


def assert_located(stderr: str, path: Path, line: int | None) -> None:
    """Every line of the output is ``path:line:col: message`` with line, col ≥ 1; the first at ``line``."""
    lines = stderr.strip().splitlines()
    assert lines, "no problem reported"
    pattern = re.compile(re.escape(str(path)) + r":(\d+):(\d+): \S")
    for text in lines:
        found = pattern.match(text)
        assert found and int(found[1]) >= 1 and int(found[2]) >= 1, text[:300]
    if line is not None:
        assert int(pattern.match(lines[0])[1]) == line, lines[0][:300]


def test_hostile_corpus_is_broad() -> None:
    assert len(CASES) + len(SPECIAL) >= 60


@pytest.mark.parametrize("name", [*CASES, *SPECIAL])
def test_hostile_plan_is_refused_with_file_line(name: str, corpus: dict[str, Path], cli, db_access) -> None:
    started = time.perf_counter()
    result = cli("validate", corpus[name])
    elapsed = time.perf_counter() - started

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert_located(result.stderr, corpus[name], CASES[name].line if name in CASES else 1)
    assert elapsed < SECONDS, f"{name}: validate took {elapsed:.1f} s"
    assert db_access == [], "validate touched a database"


WRAPPER = textwrap.dedent("""
    import json, os, sys, time
    events = []
    sys.addaudithook(lambda event, args: events.append(event) if event in {db_events!r} else None)
    from airflow_migrate_provider import commands
    timings, problems = {{}}, {{}}
    for path in sys.argv[1:]:
        started = time.perf_counter()
        found = commands.validate([path])
        timings[path] = time.perf_counter() - started
        problems[path] = [str(p) for p in found]
    # VmHWM: this process's own peak. (ru_maxrss is not: Linux carries the parent's peak over fork and exec, so a
    # child of a large pytest worker would report the worker's size)
    with open("/proc/self/status") as status:
        peak_mb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    print(json.dumps({{"timings": timings, "problems": problems, "peak_mb": peak_mb, "events": events}}))
""").format(db_events=DB_EVENTS)


def test_hostile_corpus_in_a_fresh_process_stays_within_time_and_memory(corpus: dict[str, Path]) -> None:
    """One interpreter validates every file: its peak RSS bounds each file's; each file's time is measured."""
    paths = [str(corpus[name]) for name in [*CASES, *SPECIAL]]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run([sys.executable, "-c", WRAPPER, *paths], capture_output=True, text=True, cwd=REPO,
                            env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)

    assert report["peak_mb"] <= PEAK_MB, f"peak RSS {report['peak_mb']:.0f} MB"
    assert report["events"] == [], "validate touched a database"
    slow = {Path(p).name: round(t, 2) for p, t in report["timings"].items() if t >= SECONDS}
    assert not slow
    for path in paths:
        assert report["problems"][path], f"{path} was accepted"
        assert_located("\n".join(report["problems"][path]), Path(path), None)


@pytest.mark.parametrize("name", ["alias_bomb_kwargs", "brackets_600_in_kwargs", "nul_byte_line_5", "dev_zero",
                                  "fifo", "before_step_clashes_with_gate"])
def test_hostile_sample_through_the_installed_script(name: str, corpus: dict[str, Path]) -> None:
    script = Path(sys.executable).with_name("airflow-migrate")
    started = time.perf_counter()
    result = subprocess.run([str(script), "validate", str(corpus[name])], capture_output=True, text=True,
                            timeout=60)
    elapsed = time.perf_counter() - started

    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert_located(result.stderr, corpus[name], CASES[name].line if name in CASES else 1)
    assert elapsed < SECONDS + 10, f"{elapsed:.1f} s (a new interpreter importing the CLI included)"


# -- the limits one by one --------------------------------------------------------------------------------------


def test_hostile_alias_bomb_is_refused_in_well_under_a_second(corpus: dict[str, Path]) -> None:
    started = time.perf_counter()
    with pytest.raises(PlanError) as exc:
        load_plan(corpus["alias_bomb_kwargs"])
    assert time.perf_counter() - started < 1.0
    [problem] = exc.value.problems
    assert (problem.line, "aliases expand this value") == (22, problem.message[:25])
    assert f"{guard.MAX_PLAN_VALUES:,} values" in problem.message


def test_hostile_alias_bomb_of_text_is_refused() -> None:
    text = VALID + "description: &d '" + "x" * 100_000 + "'\nx: [" + ",".join(["*d"] * 250) + "]\n"
    with pytest.raises(PlanError, match="characters of text once its YAML aliases are resolved"):
        parse_plan(text, "bomb.yaml")


def test_hostile_aliases_within_budget_still_work() -> None:
    text = VALID.replace("    verify: SELECT 1\n", "    verify: &q SELECT 1\n    verify_down: *q\n")
    plan = parse_plan(text + "tags: &t [a, b]\n", "ok.yaml")
    assert plan.steps[0].verify_down == ["SELECT 1"]


def test_hostile_nesting_limit_is_inclusive_and_that_deep_a_plan_builds_and_serializes() -> None:
    """64 levels pass (and their DAG builds and serializes: no recursion limit behind the check); 65 do not."""
    def plan_text(levels: int) -> str:  # the kwargs mapping is level 7; levels counts from the plan's mapping
        inner = levels - 7
        return VALID + ("  - id: check\n    kind: verify\n    target: {table: t}\n    checks: []\n    expectations:\n"
                        "      suite:\n        - type: expect_column_values_to_not_be_null\n          kwargs: {x: "
                        + "[" * inner + "1" + "]" * inner + "}\n")

    plan = parse_plan(plan_text(guard.MAX_NESTING), "deep.yaml")
    with pytest.raises(PlanError, match="nested too deeply"):
        parse_plan(plan_text(guard.MAX_NESTING + 1), "deep.yaml")

    from airflow.serialization.serialized_objects import DagSerialization

    from airflow_migrate_provider.dag_builder import build_dag

    serialized = DagSerialization.to_dict(build_dag(plan))
    assert DagSerialization.from_dict(json.loads(json.dumps(serialized))).dag_id == "hostile"


@pytest.mark.parametrize("text", [
    VALID + "tags: " + "[" * 600 + "]" * 600 + "\n",
    VALID + "description: " + "{a: " * 600 + "1" + "}" * 600 + "\n",
])
def test_hostile_deep_nesting_in_render_and_dag_import(text: str, tmp_path: Path, cli) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(text)

    result = cli("render", path)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert_located(result.stderr, path, 9)

    from airflow_migrate_provider.dag_loader import dag_from_plan_file

    with pytest.raises(PlanImportError, match=re.escape(f"{path}:9:")):
        dag_from_plan_file(path)


def test_hostile_alias_bomb_in_dag_import_is_the_plans_own_error_quickly(corpus: dict[str, Path]) -> None:
    from airflow_migrate_provider.dag_loader import dag_from_plan_file

    started = time.perf_counter()
    with pytest.raises(PlanImportError, match=re.escape(f"{corpus['alias_bomb_kwargs']}:22:17: aliases expand")):
        dag_from_plan_file(corpus["alias_bomb_kwargs"])
    assert time.perf_counter() - started < 1.0


def test_hostile_size_cap_reads_no_more_than_the_cap_plus_one_byte(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "huge.yaml"
    with path.open("wb") as file:
        file.truncate(3 * guard.MAX_PLAN_BYTES)
    read: list[int] = []
    real_read = os.read

    def counting_read(fd: int, size: int) -> bytes:
        data = real_read(fd, size)
        read.append(len(data))
        return data

    monkeypatch.setattr(guard.os, "read", counting_read)
    with pytest.raises(PlanError, match=r"larger than 10 MiB \(10,485,760 bytes\)"):
        load_plan(path)
    assert sum(read) == guard.MAX_PLAN_BYTES + 1


def test_hostile_plan_of_exactly_the_cap_is_read(tmp_path: Path) -> None:
    path = tmp_path / "at_cap.yaml"
    path.write_bytes((VALID + "description: ").encode().ljust(guard.MAX_PLAN_BYTES - 1, b"x") + b"\n")
    assert path.stat().st_size == guard.MAX_PLAN_BYTES
    assert len(load_plan(path).description) > guard.MAX_PLAN_BYTES - 200


def test_hostile_text_given_directly_is_capped_too() -> None:
    with pytest.raises(PlanError, match="larger than 10 MiB"):
        parse_plan(VALID + "description: " + "\u00e9" * (guard.MAX_PLAN_BYTES // 2) + "\n", "text.yaml")


@pytest.mark.parametrize(("content", "line", "column"), [
    (VALID.encode().replace(b"DROP TABLE", b"DROP\x00TABLE"), 7, 15),
    (VALID.encode().replace(b"SELECT 1", b"SELECT \xc3\x28"), 8, 20),
    (("description: \u00e9\u00e9\n" + VALID).encode() + b"x: \xe9\n", 10, 4),
])
def test_hostile_nul_and_bad_utf8_are_located(content: bytes, line: int, column: int, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(content)
    with pytest.raises(PlanError) as exc:
        load_plan(path)
    [problem] = exc.value.problems
    assert (problem.line, problem.column) == (line, column), str(problem)


@pytest.mark.parametrize(("old", "new", "line"), [
    ("id: hostile", 'id: "hostile\\n"', 1),
    ("- id: create_table", '- id: "create_table\\n"', 5),
    ("target: app_db", 'target: "app_db\\n"', 3),
])
def test_hostile_ids_ending_in_a_newline_are_refused(old: str, new: str, line: int) -> None:
    with pytest.raises(PlanError) as exc:
        parse_plan(VALID.replace(old, new), "nl.yaml")
    [problem] = exc.value.problems
    assert problem.line == line
    assert "\\n" in problem.message and "\n" not in problem.message  # shown escaped, on one line


@pytest.mark.parametrize("field", ["target", "source", "key", "lock_tables"])
def test_hostile_backfill_names_ending_in_a_newline_are_refused(field: str) -> None:
    step = {"target": "target: users_v2", "source": "source: {table: users}", "key": "key: id",
            "lock_tables": "source: {table: users, lock_tables: [users]}"}[field]
    bad = step.replace("users_v2", '"users_v2\\n"').replace("users}", '"users\\n"}').replace(
        "key: id", 'key: "id\\n"').replace("[users]", '["users\\n"]')
    text = (VALID + "  - id: copy_users\n    kind: backfill\n    source: {table: users}\n    target: users_v2\n"
            "    key: id\n    append_only: true\n")
    text = text.replace(step, bad) if field != "lock_tables" else text.replace("source: {table: users}", bad)
    with pytest.raises(PlanError, match=r"not a (table|column) name"):
        parse_plan(text, "nl.yaml")


def test_hostile_id_patterns_are_used_with_fullmatch_only() -> None:
    """No anchored pattern in the plan package: `$` matches before a trailing newline, and .match/.search with it
    let "users\\n" through."""
    package = REPO / "airflow_migrate_provider" / "plan"
    offenders = [f"{path.name}:{number}" for path in package.rglob("*.py")
                 for number, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"""re\.compile\(r?["']\^|\$["']\)|[A-Z_]+\.match\(|pattern=""", line)]
    assert offenders == []


def test_hostile_task_id_clash_names_both_sides() -> None:
    text = (VALID.replace("create_table", "before_drop") + "  - id: drop\n    up: DROP TABLE t\n"
            "    irreversible: true\n    verify: SELECT 1\n")
    with pytest.raises(PlanError) as exc:
        parse_plan(text, "clash.yaml")
    [problem] = exc.value.problems
    assert problem.line == 5
    assert "steps.before_drop.approve" in problem.message and "rename step 'before_drop'" in problem.message


def test_hostile_fault_injection_task_lists_the_tasks_when_nothing_is_close() -> None:
    with pytest.raises(PlanError) as exc:
        parse_plan(VALID + "fault_injection: {task: zzz}\n", "fault.yaml")
    [problem] = exc.value.problems
    assert problem.line == 9
    assert "the tasks are: preflight.check, steps.create_table, verify.verify_steps, rollback.revert_applied, " \
           "outcome" in problem.message


def test_hostile_fault_injection_on_a_mapped_task_with_map_index_is_valid() -> None:
    text = (VALID + "  - id: copy_users\n    kind: backfill\n    source: {table: users}\n    target: users_v2\n"
            "    key: id\n    append_only: true\n    chunks: 4\n"
            "fault_injection: {task: steps.copy_users.copy_chunk, map_index: 2}\n")
    assert parse_plan(text, "fault.yaml").fault_injection.map_index == 2
