"""A fuzzer over plan YAML: mutations of the valid example plans (dags/plans/*.yaml, the bundled examples) by bytes
(flips, truncation, inserted YAML syntax, lines deleted or repeated) and by data (keys deleted or duplicated,
values swapped for other types, ids renamed). The loader either returns a Plan or raises PlanError whose problems
all have a line and column ≥ 1, never any other exception; and every plan that validates builds its DAG.

The default run is small (``FUZZ_EXAMPLES``); ``-m slow`` runs a larger one."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from airflow_migrate_provider.errors import PlanError
from airflow_migrate_provider.plan.guard import decode_plan
from airflow_migrate_provider.plan.loader import parse_plan

REPO = Path(__file__).resolve().parents[3]
SEEDS = sorted(p for p in [*(REPO / "dags" / "plans").glob("*.yaml"),
                           *(REPO / "airflow_migrate_provider" / "examples").glob("*.yaml")]
               if not p.name.endswith(".failures.yaml"))
SEED_TEXTS = {p.name: p.read_text(encoding="utf-8") for p in SEEDS}
FUZZ_EXAMPLES = 200
SLOW_EXAMPLES = 3000
TOKENS = ["[", "]", "{", "}", "&a ", "*a", "!!python/object:os.system ", "<<: ", "\t", "\x00", "\ufeff", "\r\n",
          ": ", "- ", "'", '"', "? ", "---\n", "#", "%YAML 1.1\n", "\\", "\x85", "\u2028", "\xff", "|\n", ">-\n",
          "[" * 80, "{a: " * 70, "*", "&", "!", ".inf", ".nan", "~", "0x", "1e400", "9" * 40]
VALUES: list[Any] = [None, 0, -1, 1, 2**63, 10**30, "", "x", "before_x", "a\n", "a" * 300, "t" * 101, "é", "\u202e",
                     [], {}, True, False, 1.5, float("inf"), float("nan"), ["a"], {"a": 1}, "steps.x",
                     "preflight.check", "SELECT 1", "users", "users.id", "2024-01-01"]


def _text_mutation(data: st.DataObject, raw: bytes) -> bytes:
    kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "drop_line", "repeat_line", "swap_lines"]))
    if kind == "flip":
        at = data.draw(st.integers(0, len(raw) - 1))
        return raw[:at] + bytes([data.draw(st.integers(0, 255))]) + raw[at + 1:]
    if kind == "truncate":
        return raw[:data.draw(st.integers(0, len(raw)))]
    lines = raw.splitlines(keepends=True)
    at = data.draw(st.integers(0, len(lines) - 1))
    if kind == "insert":
        column = data.draw(st.integers(0, len(lines[at])))
        token = data.draw(st.sampled_from(TOKENS)).encode("utf-8", "surrogatepass")
        lines[at] = lines[at][:column] + token + lines[at][column:]
    elif kind == "drop_line":
        del lines[at]
    elif kind == "repeat_line":
        lines.insert(at, lines[at])
    else:
        other = data.draw(st.integers(0, len(lines) - 1))
        lines[at], lines[other] = lines[other], lines[at]
    return b"".join(lines)


def _containers(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every mapping and list in ``value``."""
    found = [path] if isinstance(value, dict | list) else []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    for key, child in items:
        found += _containers(child, (*path, key))
    return found


def _data_mutation(data: st.DataObject, text: str) -> str:
    plan = copy.deepcopy(yaml.safe_load(text))
    path = data.draw(st.sampled_from(_containers(plan)))
    node = plan
    for part in path:
        node = node[part]
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if not keys:
        return yaml.safe_dump(plan, sort_keys=False)
    key = data.draw(st.sampled_from(keys))
    kind = data.draw(st.sampled_from(["delete", "swap", "duplicate_step", "rename_step"]))
    if kind == "delete":
        del node[key]
    elif kind == "swap":
        node[key] = data.draw(st.sampled_from(VALUES))
    elif kind == "duplicate_step" and plan.get("steps"):
        plan["steps"].append(copy.deepcopy(data.draw(st.sampled_from(plan["steps"]))))
    elif kind == "rename_step" and plan.get("steps") and isinstance(plan["steps"][0], dict):
        plan["steps"][0]["id"] = data.draw(st.sampled_from(["before_" + str(s.get("id")) for s in plan["steps"]
                                                            if isinstance(s, dict)] + ["x" * 64, "steps", "a.b"]))
    return yaml.safe_dump(plan, sort_keys=False, allow_unicode=True)


def _mutant(data: st.DataObject) -> bytes:
    raw = SEED_TEXTS[data.draw(st.sampled_from(sorted(SEED_TEXTS)), label="seed")].encode("utf-8")
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        text = _as_plan_text(raw) if data.draw(st.booleans(), label="by data") else None
        if text is not None:
            raw = _data_mutation(data, text).encode("utf-8", "surrogatepass")
        elif raw:
            raw = _text_mutation(data, raw)
    return raw


def _as_plan_text(raw: bytes) -> str | None:
    """The text, when it is YAML of a mapping (data mutations need one)."""
    try:
        text = raw.decode("utf-8")
        return text if isinstance(yaml.safe_load(text), dict) else None
    except (yaml.YAMLError, ValueError, RecursionError):
        return None


def check_mutant(raw: bytes) -> bool:
    """The property: a Plan whose DAG builds, or a PlanError located at line/column ≥ 1; nothing else. The bytes go
    the way a plan file's do (``load_plan``: decoded, then parsed)."""
    try:
        text = decode_plan(raw, "fuzz.yaml")
        plan = parse_plan(text, "fuzz.yaml")
    except PlanError as exc:
        assert exc.problems
        for problem in exc.problems:
            assert problem.path == "fuzz.yaml" and problem.line >= 1 and problem.column >= 1, str(problem)
            assert "\n" not in problem.message, problem.message
        return False
    from airflow_migrate_provider.dag_builder import build_dag

    dag = build_dag(plan, source_text=text)
    assert dag.dag_id == plan.id
    return True


FUZZ_SETTINGS = {"deadline": None, "derandomize": False, "print_blob": True,
                 "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large]}


@settings(max_examples=FUZZ_EXAMPLES, **FUZZ_SETTINGS)
@given(st.data())
def test_fuzz_mutated_plans_load_or_fail_located(data: st.DataObject) -> None:
    event("validated and built" if check_mutant(_mutant(data)) else "refused")


@pytest.mark.slow
@settings(max_examples=SLOW_EXAMPLES, **FUZZ_SETTINGS)
@given(st.data())
def test_fuzz_mutated_plans_load_or_fail_located_long_run(data: st.DataObject) -> None:
    event("validated and built" if check_mutant(_mutant(data)) else "refused")


def test_fuzz_seeds_are_valid_plans_that_build() -> None:
    """The fuzzer starts from plans that validate and build (else its mutants prove little)."""
    assert len(SEEDS) >= 6
    for text in SEED_TEXTS.values():
        assert check_mutant(text.encode("utf-8"))


@pytest.mark.parametrize("text", [
    SEED_TEXTS["add_user_preferences.yaml"].replace("id: ", "id: !!python/object:os.system ", 1),
    SEED_TEXTS["backfill_users.yaml"][:200],
    SEED_TEXTS["backfill_users.yaml"].replace("  - id: copy_users", "  - id: before_x\n    irreversible: true\n"
                                              "    up: SELECT 1\n    verify: SELECT 1\n  - id: x\n    up: SELECT 1"
                                              "\n    irreversible: true\n    verify: SELECT 1\n  - id: copy_users"),
])
def test_fuzz_property_rejects_what_it_should(text: str) -> None:
    """The property itself: these mutants are refused, located (so the fuzzer's check can fail)."""
    with pytest.raises(PlanError):
        parse_plan(text, "fuzz.yaml")
    assert not check_mutant(text.encode("utf-8"))
