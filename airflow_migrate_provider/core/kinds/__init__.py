"""Step kinds as plug-ins: the interface (:class:`StepKind`), the registry, and one module per kind."""

from airflow_migrate_provider.core.kinds.base import StepKind, TaskShape, TaskSpec
from airflow_migrate_provider.core.kinds.registry import kind_named, kind_of, register, registered_kinds

__all__ = ["StepKind", "TaskShape", "TaskSpec", "kind_named", "kind_of", "register", "registered_kinds"]
