"""YAML plan → Plan, and every way a plan file can be wrong, located as path:line:col."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from airflow_migrate_provider.errors import PlanError, PlanProblem
from airflow_migrate_provider.plan.loader import load_plan, parse_plan
from airflow_migrate_provider.plan.model import SchemaStep

PATH = "plans/add_prefs.yaml"

# line numbers:  1 id / 2 connections / 3 target / 4 steps / 5 - id / 6 up / 7 down / 8 verify
VALID = """\
id: add_prefs
connections:
  target: app_db
steps:
  - id: create_table
    up: CREATE TABLE t (a int)
    down: DROP TABLE t
    verify: SELECT 1
"""

SECOND_STEP = """\
  - id: {step_id}
    up: CREATE INDEX i ON t (a)
    down: DROP INDEX i
    verify: SELECT 1
"""


def problems_of(text: str) -> list[PlanProblem]:
    with pytest.raises(PlanError) as exc:
        parse_plan(text, PATH)
    assert exc.value.problems, "a PlanError must carry at least one problem"
    assert all(p.path == PATH for p in exc.value.problems)
    return exc.value.problems


def only_problem(text: str) -> PlanProblem:
    problems = problems_of(text)
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def where(problem: PlanProblem) -> tuple[int, int]:
    return problem.line, problem.column


# -- the happy path -------------------------------------------------------------------------------


def test_valid_plan_parses() -> None:
    plan = parse_plan(VALID, PATH)
    assert plan.id == "add_prefs"
    assert plan.connections.target == "app_db"
    assert [s.id for s in plan.steps] == ["create_table"]


def test_up_as_single_string_becomes_one_element_list() -> None:
    step = parse_plan(VALID, PATH).steps[0]
    assert step.up == ["CREATE TABLE t (a int)"]
    assert step.verify == ["SELECT 1"]


def test_block_scalar_sql_is_kept_whole() -> None:
    text = VALID.replace("    up: CREATE TABLE t (a int)\n",
                         "    up: |\n      CREATE TABLE t (a int);\n      CREATE TABLE u (b int);\n")
    assert parse_plan(text, PATH).steps[0].up == ["CREATE TABLE t (a int);\nCREATE TABLE u (b int);\n"]


def test_kind_defaults_to_schema() -> None:
    step = parse_plan(VALID, PATH).steps[0]
    assert isinstance(step, SchemaStep)
    assert step.kind == "schema"
    explicit = parse_plan(VALID + "    kind: schema\n", PATH).steps[0]
    assert explicit.kind == "schema"


def test_irreversible_step_without_down_is_valid() -> None:
    text = VALID.replace("    down: DROP TABLE t\n", "    irreversible: true\n")
    step = parse_plan(text, PATH).steps[0]
    assert step.irreversible is True
    assert step.down == []


def test_lock_ttl_bounds_are_inclusive() -> None:
    assert parse_plan(VALID + "lock_ttl_seconds: 30\n", PATH).lock_ttl_seconds == 30
    assert parse_plan(VALID + "lock_ttl_seconds: 86400\n", PATH).lock_ttl_seconds == 86400


def test_bundled_example_is_valid() -> None:
    import airflow_migrate_provider

    example = Path(airflow_migrate_provider.__file__).parent / "examples" / "add_user_preferences.yaml"
    plan = load_plan(example)
    assert plan.id == "add_user_preferences"
    assert len(plan.steps) == 3


# -- PlanProblem / PlanError formatting -----------------------------------------------------------


def test_plan_problem_str_is_path_line_col_message() -> None:
    assert str(PlanProblem("plans/x.yaml", 3, 5, "unknown key 'foo'")) == "plans/x.yaml:3:5: unknown key 'foo'"


def test_plan_error_message_lists_every_problem_one_per_line() -> None:
    error = PlanError([PlanProblem("a.yaml", 1, 1, "one"), PlanProblem("a.yaml", 7, 3, "two")])
    assert str(error) == "a.yaml:1:1: one\na.yaml:7:3: two"


# -- malformed YAML -------------------------------------------------------------------------------


def test_bad_indentation() -> None:
    problem = only_problem("id: p1\nconnections:\n  target: db\n bad: 1\n")
    assert problem.message.startswith("malformed YAML")
    assert problem.line == 4


def test_tab_indentation() -> None:
    problem = only_problem("id: p1\nconnections:\n\ttarget: db\n")
    assert problem.message.startswith("malformed YAML")
    assert problem.line == 3


def test_unclosed_bracket() -> None:
    # the parser notices the unclosed [ where the next mapping key starts
    problem = only_problem("id: p1\ntags: [a, b\nconnections:\n  target: db\n")
    assert problem.message.startswith("malformed YAML")
    assert "']'" in problem.message
    assert where(problem) == (3, 12)


def test_undefined_alias() -> None:
    problem = only_problem("id: p1\ndescription: *nowhere\n")
    assert "undefined alias" in problem.message
    assert problem.line == 2


def test_malformed_yaml_from_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("id: p1\nconnections:\n  target: db\n bad: 1\n", encoding="utf-8")
    with pytest.raises(PlanError) as exc:
        load_plan(path)
    [problem] = exc.value.problems
    assert str(problem).startswith(f"{path}:4:")


# -- not a plan at all -----------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_file(text: str) -> None:
    problem = only_problem(text)
    assert problem.message == "the plan file is empty"
    assert where(problem) == (1, 1)


@pytest.mark.parametrize("text", ["- id: p1\n- id: p2\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    problem = only_problem(text)
    assert "a plan must be a mapping" in problem.message
    assert where(problem) == (1, 1)


# -- unknown keys ---------------------------------------------------------------------------------


def test_unknown_top_level_key() -> None:
    problem = only_problem(VALID + "colour: blue\n")
    assert problem.message == "unknown key 'colour'"
    assert where(problem) == (9, 1)


def test_unknown_key_inside_a_step() -> None:
    text = VALID.replace("    up: CREATE", "    timeout: 5\n    up: CREATE")
    problem = only_problem(text)
    assert problem.message == "unknown key 'timeout' in steps.0"
    assert where(problem) == (6, 5)


def test_unknown_key_inside_connections() -> None:
    problem = only_problem(VALID.replace("  target: app_db\n", "  target: app_db\n  backup: other_db\n"))
    assert problem.message == "unknown key 'backup' in connections"
    assert where(problem) == (4, 3)


def test_unknown_key_in_second_step_points_at_second_step() -> None:
    text = VALID + SECOND_STEP.format(step_id="add_index") + "    retries: 3\n"
    problem = only_problem(text)
    assert problem.message == "unknown key 'retries' in steps.1"
    assert where(problem) == (13, 5)


# -- wrong types ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, line, col, expected",
    [
        # str fields
        (VALID.replace("id: add_prefs", "id: 42"), 1, 1, "id: Input should be a valid string (got 42)"),
        (VALID + "description: [a, b]\n", 9, 1, "description: Input should be a valid string (got list)"),
        (VALID.replace("target: app_db", "target: 5"), 3, 3,
         "connections.target: Input should be a valid string (got 5)"),
        (VALID + "    description: 3\n", 9, 5, "steps.0.description: Input should be a valid string (got 3)"),
        # bool fields
        (VALID + "    transactional: 'yes'\n", 9, 5,
         "steps.0.transactional: Input should be a valid boolean (got 'yes')"),
        (VALID + "    irreversible: 1\n", 9, 5, "steps.0.irreversible: Input should be a valid boolean (got 1)"),
        # int fields
        (VALID + "lock_ttl_seconds: '600'\n", 9, 1, "lock_ttl_seconds: Input should be a valid integer (got '600')"),
        (VALID + "retries: '10'\n", 9, 1, "retries: Input should be a valid integer (got '10')"),
        (VALID + "retries: true\n", 9, 1, "retries: Input should be a valid integer (got True)"),
        (VALID + "retry_delay_seconds: 1.5\n", 9, 1, "retry_delay_seconds: Input should be a valid integer"),
        # list fields
        (VALID + "tags: {team: data}\n", 9, 1, "tags: Input should be a valid list (got dict)"),
        (VALID + "    tags: {team: data}\n", 9, 5, "steps.0.tags: Input should be a valid list (got dict)"),
        (VALID + "tags: [1]\n", 9, 8, "tags.0: Input should be a valid string (got 1)"),
        (VALID.replace("connections:\n  target: app_db", "connections: app_db"), 2, 1,
         "connections: Input should be a valid dictionary"),
        (VALID.replace("steps:\n", "steps: 5\nunused:\n"), 4, 1, "steps: Input should be a valid list (got 5)"),
        # SQL fields: text or a list of texts
        (VALID.replace("up: CREATE TABLE t (a int)", "up: {sql: x}"), 6, 5,
         "steps.0.up: must be SQL text or a list of SQL texts"),
        (VALID.replace("verify: SELECT 1", "verify: 1"), 8, 5,
         "steps.0.verify: must be SQL text or a list of SQL texts"),
        (VALID.replace("up: CREATE TABLE t (a int)", "up: [1]"), 6, 10,
         "steps.0.up.0: Input should be a valid string (got 1)"),
        (VALID.replace("up: CREATE TABLE t (a int)", "up: ''"), 6, 5,
         "steps.0.up.0: String should have at least 1 character"),
        # ranges
        (VALID + "lock_ttl_seconds: 29\n", 9, 1,
         "lock_ttl_seconds: Input should be greater than or equal to 30 (got 29)"),
        (VALID + "lock_ttl_seconds: 86401\n", 9, 1,
         "lock_ttl_seconds: Input should be less than or equal to 86400 (got 86401)"),
        (VALID + "retries: 11\n", 9, 1, "retries: Input should be less than or equal to 10 (got 11)"),
        (VALID + "retries: -1\n", 9, 1, "retries: Input should be greater than or equal to 0 (got -1)"),
    ],
)
def test_wrong_type_or_range(text: str, line: int, col: int, expected: str) -> None:
    if "unused:" in text:  # keep the plan otherwise well-formed: drop the step list we displaced
        text = text.split("unused:")[0]
    problem = only_problem(text)
    assert problem.message.startswith(expected), problem.message
    assert where(problem) == (line, col)


# -- missing required keys ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, line, col, key",
    [
        (VALID.replace("id: add_prefs\n", ""), 1, 1, "id"),
        (VALID.replace("connections:\n  target: app_db\n", ""), 1, 1, "connections"),
        (VALID.replace("  target: app_db\n", "  source: app_db\n"), 2, 1, "connections.target"),
        (VALID.split("steps:")[0], 1, 1, "steps"),
        (VALID.replace("    up: CREATE TABLE t (a int)\n", ""), 5, 5, "steps.0.up"),
        (VALID.replace("    verify: SELECT 1\n", ""), 5, 5, "steps.0.verify"),
        (VALID.replace("  - id: create_table\n    up:", "  - up:"), 5, 5, "steps.0.id"),
    ],
)
def test_missing_required_key(text: str, line: int, col: int, key: str) -> None:
    problem = only_problem(text)
    assert problem.message == f"missing required key '{key}'"
    assert where(problem) == (line, col)


def test_empty_steps_list() -> None:
    problem = only_problem(VALID.split("steps:")[0] + "steps: []\n")
    assert problem.message.startswith("steps: List should have at least 1 item")
    assert where(problem) == (4, 1)


def test_empty_up_list() -> None:
    problem = only_problem(VALID.replace("up: CREATE TABLE t (a int)", "up: []"))
    assert problem.message.startswith("steps.0.up: List should have at least 1 item")
    assert where(problem) == (6, 5)


# -- duplicate step ids ----------------------------------------------------------------------------


def test_duplicate_step_id_reported_once_at_the_duplicate() -> None:
    problem = only_problem(VALID + SECOND_STEP.format(step_id="create_table"))
    assert problem.message == "duplicate step id 'create_table' (first used at steps[0])"
    assert where(problem) == (9, 5)


def test_every_repetition_of_a_step_id_is_reported() -> None:
    text = (VALID + SECOND_STEP.format(step_id="add_index") + SECOND_STEP.format(step_id="create_table")
            + SECOND_STEP.format(step_id="add_index"))
    problems = problems_of(text)
    assert [(p.line, p.message) for p in problems] == [
        (13, "duplicate step id 'create_table' (first used at steps[0])"),
        (17, "duplicate step id 'add_index' (first used at steps[1])"),
    ]


def test_duplicate_step_id_beside_other_problems_still_reported_once() -> None:
    text = VALID + SECOND_STEP.format(step_id="create_table") + "retries: 99\n"
    problems = problems_of(text)
    assert [p.message for p in problems if "duplicate step id" in p.message] == [
        "duplicate step id 'create_table' (first used at steps[0])"
    ]
    assert len(problems) == 2


# -- reversibility ----------------------------------------------------------------------------------


def test_step_without_down_must_be_marked_irreversible() -> None:
    problem = only_problem(VALID.replace("    down: DROP TABLE t\n", ""))
    assert problem.message.startswith("steps.0: step 'create_table' has no `down`")
    assert "irreversible: true" in problem.message
    assert where(problem) == (5, 5)


def test_irreversible_step_with_down_is_rejected() -> None:
    problem = only_problem(VALID + "    irreversible: true\n")
    assert problem.message == (
        "steps.0: step 'create_table' is marked `irreversible` but has a `down`: remove one of the two"
    )
    assert where(problem) == (5, 5)


# -- kinds, ids, connection ids ---------------------------------------------------------------------


def test_unknown_step_kind() -> None:
    problem = only_problem(VALID + "    kind: teleport\n")
    assert "unknown step kind 'teleport'" in problem.message
    assert "'schema'" in problem.message and "'backfill'" in problem.message  # the kinds that do exist
    assert where(problem) == (5, 5)


@pytest.mark.parametrize("bad_id", ["1st_step", "has-dash", "has space", "_leading", "a" * 64])
def test_bad_step_id(bad_id: str) -> None:
    problem = only_problem(VALID.replace("- id: create_table", f"- id: '{bad_id}'"))
    assert problem.message.startswith(f"steps.0.id: step id '{bad_id}' must start with a letter")
    assert where(problem) == (5, 5)


@pytest.mark.parametrize("bad_id", ["my-plan", "2024_migration", "a.b", "a" * 64])
def test_bad_plan_id(bad_id: str) -> None:
    problem = only_problem(VALID.replace("id: add_prefs", f"id: '{bad_id}'"))
    assert problem.message.startswith(f"id: plan id '{bad_id}' must start with a letter")
    assert where(problem) == (1, 1)


@pytest.mark.parametrize("field", ["target", "source"])
@pytest.mark.parametrize("bad_conn", ["has space", "a/b", "", "x" * 251])
def test_bad_conn_id(field: str, bad_conn: str) -> None:
    text = VALID.replace("  target: app_db\n", f"  target: app_db\n  {field}: '{bad_conn}'\n")
    if field == "target":
        text = text.replace("  target: app_db\n", "", 1)
    problem = only_problem(text)
    assert problem.message.startswith(f"connections.{field}: '{bad_conn}' is not a valid Airflow connection id")
    assert where(problem) == ((3, 3) if field == "target" else (4, 3))


@pytest.mark.parametrize("good_conn", ["app_db", "app-db.eu_1", "X" * 250])
def test_good_conn_ids(good_conn: str) -> None:
    assert parse_plan(VALID.replace("target: app_db", f"target: '{good_conn}'"), PATH).connections.target == good_conn


# -- YAML features that must not be used ------------------------------------------------------------


def test_python_object_tag_rejected_and_never_constructed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = VALID.replace("id: add_prefs", f"id: !!python/object/apply:os.system ['touch {marker}']")
    problem = only_problem(text)
    assert "YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed" in problem.message
    assert problem.line == 1
    assert not marker.exists()


def test_python_object_tag_on_document_rejected() -> None:
    problem = only_problem("!!python/object:os.system\nid: p1\n")
    assert "python/object:os.system" in problem.message
    assert "not allowed" in problem.message


def test_custom_tag_rejected() -> None:
    problem = only_problem(VALID.replace("verify: SELECT 1", "verify: !foo SELECT 1"))
    assert problem.message == "YAML tag '!foo' is not allowed in a plan; write a plain value"
    assert problem.line == 8


def test_merge_keys_rejected() -> None:
    text = "defaults: &d\n  target: app_db\n" + VALID.replace("  target: app_db\n", "  <<: *d\n")
    problems = problems_of(text)
    assert [p.message for p in problems] == ["YAML merge keys (<<) are not allowed in a plan; write keys out"]


def test_duplicate_top_level_key_rejected_at_second_occurrence() -> None:
    problem = only_problem(VALID + "id: other_plan\n")
    assert problem.message == "duplicate key 'id'"
    assert where(problem) == (9, 1)


def test_duplicate_step_key_rejected_at_second_occurrence() -> None:
    problem = only_problem(VALID + "    up: DROP TABLE everything\n")
    assert problem.message == "duplicate key 'up'"
    assert where(problem) == (9, 5)


# -- every problem at once ------------------------------------------------------------------------------


def test_all_problems_reported_at_once_sorted_by_line() -> None:
    text = textwrap.dedent("""\
        retries: -1
        id: 5
        connections:
          target: app_db
          wat: 1
        steps:
          - id: first
            up: CREATE TABLE t (a int)
            verify: SELECT 1
          - id: second
            up: x
            down: y
            verify: z
          - id: first
            up: x
            down: y
            verify: z
        """)
    problems = problems_of(text)
    assert [(p.line, p.column) for p in problems] == [(1, 1), (2, 1), (5, 3), (7, 5), (14, 5)]
    messages = [p.message for p in problems]
    assert messages[0].startswith("retries: Input should be greater than or equal to 0")
    assert messages[1] == "id: Input should be a valid string (got 5)"
    assert messages[2] == "unknown key 'wat' in connections"
    assert messages[3].startswith("steps.0: step 'first' has no `down`")
    assert messages[4] == "duplicate step id 'first' (first used at steps[0])"


def test_four_problems_give_four_plan_problems() -> None:
    text = textwrap.dedent("""\
        id: add-prefs
        connections:
          target: app_db
        steps:
          - id: s1
            up: x
            down: y
            verify: z
            colour: red
        lock_ttl_seconds: 5
        tags: {a: b}
        """)
    problems = problems_of(text)
    assert len(problems) == 4
    assert [p.line for p in problems] == [1, 9, 10, 11]
    assert problems == sorted(problems, key=lambda p: (p.line, p.column))


# -- files --------------------------------------------------------------------------------------------


def test_missing_file_is_a_plan_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(PlanError) as exc:
        load_plan(path)
    [problem] = exc.value.problems
    assert problem.path == str(path)
    assert where(problem) == (1, 1)
    assert problem.message.startswith("cannot read plan file")


def test_directory_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="cannot read plan file"):
        load_plan(tmp_path)


def test_non_utf8_file_is_a_plan_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("id: caf\xe9\n".encode("latin-1"))
    with pytest.raises(PlanError, match="cannot read plan file"):
        load_plan(path)


def test_load_plan_accepts_str_and_path(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(VALID, encoding="utf-8")
    assert load_plan(path) == load_plan(str(path))


# -- known bugs (see the report of the tests' author) --------------------------------------------------


@pytest.mark.parametrize(
    "text, line",
    [
        (VALID.replace("id: add_prefs", "id: 2024-13-45"), 1),  # looks like a date, is not one
        (VALID + "tags: [2024-02-30]\n", 9),
        (VALID + "? [a, b]\n: 1\n", 9),  # complex (unhashable) key
        (VALID + "retries: !!int abc\n", 9),
        (VALID + "retries: !!bool maybe\n", 9),
        (VALID + "description: !!map text\n", 9),
    ],
    ids=["bad-date-id", "bad-date-tag", "unhashable-key", "int-tag", "bool-tag", "map-tag-on-scalar"],
)
def test_unconstructible_values_are_plan_problems(text: str, line: int) -> None:
    problems = problems_of(text)
    assert line in [p.line for p in problems]


@pytest.mark.parametrize(
    "text",
    [
        VALID.split("steps:")[0] + "steps:\n  - CREATE TABLE t (a int)\n",
        VALID + "    kind: 5\n",
    ],
    ids=["step-is-a-string", "kind-is-an-int"],
)
def test_malformed_step_message_is_user_facing(text: str) -> None:
    problem = only_problem(text)
    assert problem.line == 5
    assert "discriminator" not in problem.message
    assert "_step_kind" not in problem.message


def test_merge_key_reported_at_its_own_line() -> None:
    text = "defaults: &d\n  retries: 2\n" + VALID + "<<: *d\n"
    [problem] = problems_of(text)
    assert "merge keys" in problem.message
    assert where(problem) == (11, 1)


ALIAS_BOMB = r"""
import resource, sys
from airflow_migrate_provider.errors import PlanError
from airflow_migrate_provider.plan.loader import parse_plan

lines = ['a0: &a0 ["x","x","x","x","x","x","x","x","x","x"]']
for i in range(1, 9):
    lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
text = "\n".join(lines) + "\n"  # 9 lines that expand to 10**9 scalars

with open("/proc/self/statm") as f:
    used = int(f.read().split()[0]) * resource.getpagesize()
limit = used + 300 * 1024 * 1024
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    parse_plan(text, "bomb.yaml")
except PlanError:
    print("rejected")
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_alias_bomb_is_rejected_in_bounded_memory(tmp_path: Path) -> None:
    try:
        result = subprocess.run([sys.executable, "-c", ALIAS_BOMB], capture_output=True, text=True, timeout=20,
                                cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("parse_plan did not finish within 20 s")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "rejected"
