"""The step-kind registry: each kind module registers its class once; everything else looks kinds up here.

The built-in kinds are imported on first lookup (not at import time), so importing the registry costs
nothing at DAG-parse time and no kind module imports another.
"""

from __future__ import annotations

import importlib
from typing import Any, TypeVar

from airflow_migrate_provider.core.kinds.base import StepKind
from airflow_migrate_provider.errors import UnknownStepKind

BUILTIN_KINDS = ("schema", "backfill", "verify", "health_gate", "dual_write", "cutover")
_PACKAGE = "airflow_migrate_provider.core.kinds"
_KINDS: dict[str, StepKind[Any]] = {}

K = TypeVar("K", bound=type[StepKind[Any]])


def register(kind_class: K) -> K:
    """Class decorator: make ``kind_class`` the kind for steps with ``kind: <kind_class.name>``."""
    if not kind_class.read_only and kind_class.verify is StepKind.verify:
        raise TypeError(f"step kind '{kind_class.name}' changes data: it must implement verify()")
    existing = _KINDS.get(kind_class.name)
    if existing is not None and type(existing) is not kind_class:
        raise ValueError(f"step kind '{kind_class.name}' is registered twice ({type(existing).__name__}, "
                         f"{kind_class.__name__})")
    _KINDS[kind_class.name] = kind_class()
    return kind_class


def _load_builtins(*names: str) -> None:
    """Import the built-in kind modules (those named, else all); each registers itself on import."""
    for name in names or BUILTIN_KINDS:
        if name in BUILTIN_KINDS and name not in _KINDS:
            importlib.import_module(f"{_PACKAGE}.{name}")


def kind_named(name: str) -> StepKind[Any]:
    """The registered kind called ``name`` (only its own module is imported: DAG parsing stays cheap)."""
    if name not in _KINDS:
        _load_builtins(name)
    try:
        return _KINDS[name]
    except KeyError:
        _load_builtins()
        raise UnknownStepKind(f"no step kind '{name}' is registered (known: {', '.join(sorted(_KINDS))}); "
                              f"a ledger row of a newer provider version? Upgrade the provider") from None


def kind_of(step: Any) -> StepKind[Any]:
    """The kind of a plan step."""
    return kind_named(step.kind)


def registered_kinds() -> dict[str, StepKind[Any]]:
    """Every registered kind by name (the built-ins loaded)."""
    _load_builtins()
    return dict(_KINDS)
