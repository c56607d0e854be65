"""Thin Airflow operators: each translates Airflow context into one core call."""

from airflow_migrate_provider.operators.apply_step import ApplyStepOperator
from airflow_migrate_provider.operators.backfill import BackfillOperator
from airflow_migrate_provider.operators.backup import BackupOperator
from airflow_migrate_provider.operators.cutover import CutoverOperator
from airflow_migrate_provider.operators.dual_write import DualWriteOperator
from airflow_migrate_provider.operators.health_gate import HealthGateOperator
from airflow_migrate_provider.operators.outcome import MigrationOutcomeOperator
from airflow_migrate_provider.operators.preflight import PreflightOperator
from airflow_migrate_provider.operators.rollback import RollbackOperator
from airflow_migrate_provider.operators.verify import VerifyOperator
from airflow_migrate_provider.operators.verify_steps import VerifyStepsOperator

OPERATORS: dict[str, type] = {operator.__name__: operator for operator in (
    ApplyStepOperator, BackfillOperator, BackupOperator, CutoverOperator, DualWriteOperator, HealthGateOperator,
    MigrationOutcomeOperator,
    PreflightOperator, RollbackOperator, VerifyOperator, VerifyStepsOperator)}
"""The operators a task graph names, by class name (``core.task_graph.GraphTask.operator``)."""

__all__ = [
    "OPERATORS",
    "ApplyStepOperator",
    "BackfillOperator",
    "BackupOperator",
    "CutoverOperator",
    "DualWriteOperator",
    "HealthGateOperator",
    "MigrationOutcomeOperator",
    "PreflightOperator",
    "RollbackOperator",
    "VerifyOperator",
    "VerifyStepsOperator",
]
