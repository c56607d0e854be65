"""Provider metadata for Airflow's ProvidersManager (entry point ``apache_airflow_provider``)."""

from __future__ import annotations

from typing import Any


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "airflow-migrate-provider",
        "name": "Database migrations",
        "description": "Turns a YAML migration plan into a DAG that migrates databases safely: preflight, "
        "schema steps with verification, resumable large-table backfills, a ledger and run lock in the "
        "target, and automatic rollback.",
        "hooks": [{"integration-name": "Database migrations",
                   "python-modules": ["airflow_migrate_provider.hooks.migration"]}],
        "operators": [{"integration-name": "Database migrations",
                       "python-modules": ["airflow_migrate_provider.operators"]}],
        "triggers": [{"integration-name": "Database migrations",
                      "python-modules": ["airflow_migrate_provider.triggers.throttle"]}],
    }
