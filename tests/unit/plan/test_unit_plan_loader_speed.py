"""What the fast plan loader must keep: libyaml's positions, errors for what libyaml alone rejects, no
collector left off, and the operators' plan validated once per plan dict."""

from __future__ import annotations

import gc

import pytest
import yaml

from airflow_migrate_provider.errors import PlanError
from airflow_migrate_provider.plan import loader
from airflow_migrate_provider.plan.loader import parse_plan, validated_plan
from tests.unit.plan.test_unit_plan_loader import VALID


def test_libyaml_is_used_where_pyyaml_has_it() -> None:
    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML built without libyaml")
    assert loader.FAST_LOADER is yaml.CSafeLoader


@pytest.mark.parametrize("depth", [600, 5000])
def test_deep_nesting_is_a_plan_error_not_a_traceback(depth: int) -> None:
    text = VALID + "tags: " + "[" * depth + "]" * depth + "\n"
    with pytest.raises(PlanError) as exc:
        parse_plan(text, "deep.yaml")
    [problem] = exc.value.problems
    assert "nested too deeply" in problem.message or "nesting depth" in problem.message


def test_collector_is_back_on_after_a_parse_and_after_an_error() -> None:
    assert gc.isenabled()
    parse_plan(VALID, "ok.yaml")
    assert gc.isenabled()
    with pytest.raises(PlanError):
        parse_plan(VALID + "colour: blue\n", "bad.yaml")
    assert gc.isenabled()


def test_an_alias_stands_for_the_same_value() -> None:
    plan = parse_plan(VALID.replace("    verify: SELECT 1\n", "    verify: &q SELECT 1\n    verify_down: *q\n"))
    assert plan.steps[0].verify == plan.steps[0].verify_down == ["SELECT 1"]


def test_validated_plan_validates_each_dict_once() -> None:
    data = parse_plan(VALID).model_dump(mode="json")
    first = validated_plan(data)
    assert validated_plan(data) is first
    copy = {**data, "steps": [dict(data["steps"][0])]}
    assert validated_plan(copy) is not first
    assert validated_plan(copy) == first
