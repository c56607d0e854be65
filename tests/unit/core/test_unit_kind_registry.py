"""The step-kind registry: every built-in kind is found by name, an unknown one is a clear error, and a kind
that changes data cannot be registered without saying how it is verified."""

from __future__ import annotations

import pytest

from airflow_migrate_provider.core.actions import ActionPlan
from airflow_migrate_provider.core.kinds import StepKind, kind_named, register, registered_kinds
from airflow_migrate_provider.core.kinds.registry import BUILTIN_KINDS
from airflow_migrate_provider.errors import UnknownStepKind
from airflow_migrate_provider.plan.model import STEP_MODELS


def test_every_plan_step_model_has_a_registered_kind_and_back() -> None:
    kinds = registered_kinds()
    assert set(kinds) == set(STEP_MODELS) == set(BUILTIN_KINDS)
    for name, kind in kinds.items():
        assert kind.model is STEP_MODELS[name]
        assert kind.operator.endswith("Operator")


def test_an_unknown_kind_names_the_known_ones() -> None:
    with pytest.raises(UnknownStepKind, match=r"no step kind 'teleport' is registered \(known: backfill, "):
        kind_named("teleport")


def test_a_data_changing_kind_must_implement_verify() -> None:
    class Sloppy(StepKind):
        name = "sloppy"
        operator = "ApplyStepOperator"
        model = STEP_MODELS["schema"]

        def plan_actions(self, step, dialect):  # type: ignore[no-untyped-def]
            return ActionPlan(self.name, ())

        def apply(self, ctx, step):  # type: ignore[no-untyped-def]
            raise AssertionError

    with pytest.raises(TypeError, match="'sloppy' changes data: it must implement verify"):
        register(Sloppy)
    with pytest.raises(UnknownStepKind):
        kind_named("sloppy")


def test_the_read_only_kinds_are_the_verifications() -> None:
    read_only = {name for name, kind in registered_kinds().items() if kind.read_only}
    assert read_only == {"verify", "health_gate"}
