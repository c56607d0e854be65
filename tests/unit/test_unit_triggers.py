"""Every trigger in ``airflow_migrate_provider.triggers`` survives the trip through the triggerer.

Airflow stores ``trigger.serialize()`` (classpath, kwargs) in its ``trigger`` table, and the triggerer, in
another process, imports the classpath and calls it with the kwargs. So for each trigger: the classpath
must be importable and name the class, the kwargs must go through Airflow's own storage (serde + Fernet)
unchanged, and the trigger rebuilt from them must serialize to the same thing again.

Triggers are discovered, not listed: a new module in ``triggers/`` is covered without touching this file,
with sample arguments made from its ``__init__`` annotations (or given in ``SAMPLES``).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import types
import typing
from typing import Any

import pytest

import airflow_migrate_provider.triggers as triggers_package

# Arguments for a trigger whose __init__ annotations are not enough to make a sample; keyed by classpath.
SAMPLES: dict[str, dict[str, Any]] = {
    "airflow_migrate_provider.triggers.throttle.ThrottleTrigger": {
        "conn_id": "app_db", "rule_name": "replication_lag",
        "query": "SELECT extract(epoch FROM now() - pg_last_xact_replay_timestamp()) -- 100% of lag",
        "max_value": 2.5, "poll_seconds": 15.0,
    },
}

_BY_TYPE: dict[Any, Any] = {str: "sample", int: 7, float: 1.5, bool: True, dict: {"a": 1}, list: ["a", 1]}


def trigger_classes() -> list[type]:
    from airflow.triggers.base import BaseTrigger

    found = []
    for info in pkgutil.walk_packages(triggers_package.__path__, f"{triggers_package.__name__}."):
        module = importlib.import_module(info.name)
        found += [cls for _, cls in inspect.getmembers(module, inspect.isclass)
                  if issubclass(cls, BaseTrigger) and cls.__module__ == module.__name__
                  and not inspect.isabstract(cls)]
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def _sample_for(cls: type, name: str, annotation: Any) -> Any:
    base = typing.get_origin(annotation) or annotation
    if base in (typing.Union, types.UnionType):  # X | None: a sample of X
        base = next(a for a in typing.get_args(annotation) if a is not type(None))
        base = typing.get_origin(base) or base
    if base not in _BY_TYPE:
        pytest.fail(f"{cls.__qualname__}({name}: {annotation!r}): add sample arguments for it to SAMPLES in "
                    f"{__name__}")
    value = _BY_TYPE[base]
    return f"{name}-{value}" if isinstance(value, str) else value


def sample_kwargs(cls: type) -> dict[str, Any]:
    classpath = f"{cls.__module__}.{cls.__qualname__}"
    if classpath in SAMPLES:
        return SAMPLES[classpath]
    hints = typing.get_type_hints(cls.__init__)
    kwargs = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name == "self" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is not param.empty:
            continue  # the default is part of what must round-trip too
        kwargs[name] = _sample_for(cls, name, hints.get(name, str))
    return kwargs


def import_string(classpath: str) -> Any:
    """What the triggerer does with a stored classpath (``module.Class``)."""
    module, _, name = classpath.rpartition(".")
    return getattr(importlib.import_module(module), name)


TRIGGERS = trigger_classes()


def test_the_triggers_package_has_triggers():
    assert TRIGGERS, "no BaseTrigger subclass found in airflow_migrate_provider.triggers"


@pytest.mark.parametrize("cls", TRIGGERS, ids=[cls.__qualname__ for cls in TRIGGERS])
def test_serialize_round_trips_through_airflows_trigger_table(cls):
    from airflow.models.trigger import Trigger

    trigger = cls(**sample_kwargs(cls))
    classpath, kwargs = trigger.serialize()

    assert import_string(classpath) is cls, f"classpath {classpath!r} does not import {cls.__qualname__}"
    stored = Trigger.from_object(trigger)  # what the triggerer reads back: serde + Fernet, no database needed
    assert stored.classpath == classpath
    assert stored.kwargs == kwargs
    rebuilt = import_string(stored.classpath)(**stored.kwargs)
    assert rebuilt.serialize() == (classpath, kwargs)


@pytest.mark.parametrize("cls", TRIGGERS, ids=[cls.__qualname__ for cls in TRIGGERS])
def test_serialize_keeps_every_constructor_argument(cls):
    """What __init__ was given comes back from serialize(): nothing is dropped on the way to the triggerer."""
    given = sample_kwargs(cls)

    _, kwargs = cls(**given).serialize()

    assert {k: kwargs.get(k) for k in given} == given
