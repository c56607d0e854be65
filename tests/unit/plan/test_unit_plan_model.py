"""The plan model on its own: defaults, strictness, and the helpers the loader and DAG builder rely on."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from airflow_migrate_provider.plan.model import Plan, SchemaStep, duplicate_step_ids


def step(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": "create_table", "up": "CREATE TABLE t (a int)", "down": "DROP TABLE t",
                            "verify": "SELECT 1"}
    data.update(overrides)
    return data


def plan(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"id": "add_prefs", "connections": {"target": "app_db"}, "steps": [step()]}
    data.update(overrides)
    return data


def error_types(exc: ValidationError) -> set[str]:
    return {e["type"] for e in exc.errors()}


def test_defaults_of_a_minimal_plan() -> None:
    p = Plan.model_validate(plan())
    assert p.description == ""
    assert p.tags == []
    assert (p.lock_ttl_seconds, p.retries, p.retry_delay_seconds) == (600, 1, 30)
    s = p.steps[0]
    assert isinstance(s, SchemaStep)
    assert s.kind == "schema"
    assert s.transactional is None  # "follow the dialect", decided at run time
    assert s.irreversible is False
    assert s.verify_down == []


def test_single_sql_strings_become_one_element_lists() -> None:
    s = Plan.model_validate(plan()).steps[0]
    assert s.up == ["CREATE TABLE t (a int)"]
    assert s.down == ["DROP TABLE t"]
    assert s.verify == ["SELECT 1"]


def test_lists_of_sql_are_kept_in_order() -> None:
    s = SchemaStep.model_validate(step(up=["CREATE TABLE a (x int)", "CREATE TABLE b (x int)"]))
    assert s.up == ["CREATE TABLE a (x int)", "CREATE TABLE b (x int)"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"lock_ttl_seconds": "600"},  # a numeric string is not an int
        {"retries": True},  # nor is a bool
        {"retries": 1.0},  # nor a float
        {"description": 5},
    ],
)
def test_values_are_not_coerced_across_types(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Plan.model_validate(plan(**overrides))


def test_step_flags_are_not_coerced_from_strings() -> None:
    with pytest.raises(ValidationError):
        SchemaStep.model_validate(step(transactional="true"))


def test_plan_is_immutable() -> None:
    p = Plan.model_validate(plan())
    with pytest.raises(ValidationError):
        p.id = "other"  # type: ignore[misc]


@pytest.mark.parametrize("length, ok", [(63, True), (64, False)])
def test_identifier_length_limit(length: int, ok: bool) -> None:
    ident = "a" * length
    if ok:
        assert Plan.model_validate(plan(id=ident, steps=[step(id=ident)])).id == ident
    else:
        with pytest.raises(ValidationError) as exc:
            Plan.model_validate(plan(id=ident))
        assert "plan_id" in error_types(exc.value)
        with pytest.raises(ValidationError) as exc:
            Plan.model_validate(plan(steps=[step(id=ident)]))
        assert "step_id" in error_types(exc.value)


def test_source_defaults_to_target() -> None:
    assert Plan.model_validate(plan()).connections.source_or_target == "app_db"
    p = Plan.model_validate(plan(connections={"target": "app_db", "source": "legacy_db"}))
    assert p.connections.source_or_target == "legacy_db"


def test_step_lookup_by_id() -> None:
    p = Plan.model_validate(plan(steps=[step(id="one"), step(id="two")]))
    assert p.step("two").id == "two"
    with pytest.raises(KeyError, match="plan 'add_prefs' has no step 'three'"):
        p.step("three")


def test_duplicate_step_ids_rejected_by_the_model_itself() -> None:
    with pytest.raises(ValidationError) as exc:
        Plan.model_validate(plan(steps=[step(id="one"), step(id="two"), step(id="one")]))
    assert "duplicate_step_id" in error_types(exc.value)
    assert "steps[2] repeats steps[0]" in str(exc.value)


def test_duplicate_step_ids_helper() -> None:
    raw = [{"id": "a"}, {"id": "b"}, {"id": "a"}, "not a step", {"id": 5}, {"id": "b"}, {"id": "a"}]
    assert duplicate_step_ids(raw) == [(2, "a", 0), (5, "b", 1), (6, "a", 0)]
    assert duplicate_step_ids(None) == []
    assert duplicate_step_ids({"id": "a"}) == []


def test_reversibility_rules() -> None:
    with pytest.raises(ValidationError) as exc:
        SchemaStep.model_validate(step(down=[]))
    assert error_types(exc.value) == {"missing_down"}
    assert SchemaStep.model_validate(step(down=[], irreversible=True)).irreversible is True
    with pytest.raises(ValidationError) as exc:
        SchemaStep.model_validate(step(irreversible=True))
    assert error_types(exc.value) == {"irreversible_with_down"}
