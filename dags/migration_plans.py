"""airflow-migrate loader: gives every plan in plans/ its own DAG file (see dag_loader).

This module defines no DAG itself. It only writes the two-line DAG file `plans/<name>.py` for each
new plan `plans/<name>.yaml`, so a broken plan breaks only its own file in Airflow.
"""

from pathlib import Path

from airflow_migrate_provider.dag_loader import ensure_plan_shims

ensure_plan_shims(Path(__file__).parent / "plans")
