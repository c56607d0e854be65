"""Run a plan's DAG on this machine through ``dag.test()``: used by ``airflow-migrate run`` and ``demo``.

Airflow reads its configuration when first imported, so :func:`use_airflow_home` must run before
anything imports airflow.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_migrate_provider.core.summary import worst_state


def use_airflow_home(home: str | Path | None = None) -> Path:
    """Point Airflow at ``home`` (a fresh temporary one by default) with a SQLite metadata DB in it.

    The metadata DB is set explicitly: an ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` inherited from the caller's
    environment (a real deployment's) must never be the one a local run resets. Once Airflow is imported its
    configuration is fixed, and whoever imported it owns it (the test session does).
    """
    path = Path(home).expanduser().resolve() if home else Path(tempfile.mkdtemp(prefix="airflow-migrate-home-"))
    (path / "dags").mkdir(parents=True, exist_ok=True)
    os.environ["AIRFLOW_HOME"] = str(path)
    if "airflow" not in sys.modules:
        os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{path / 'airflow.db'}"
    os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
    os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(path / "dags")
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "INFO")
    return path


def connection_env_name(conn_id: str) -> str:
    return "AIRFLOW_CONN_" + conn_id.upper().replace("-", "_").replace(".", "_")


def define_connections(connections: Mapping[str, str]) -> None:
    """Make ``{conn_id: uri}`` visible to Airflow as environment connections (never logged)."""
    for conn_id, uri in connections.items():
        os.environ[connection_env_name(conn_id)] = uri


def init_metadata_db() -> None:
    """Create the Airflow metadata tables (about 3 s on SQLite)."""
    from airflow.utils import db

    db.resetdb()


def sync_dag(dag: Any, bundle_name: str = "dags-folder") -> None:
    """Serialize a DAG built in memory so ``dag.test()`` can create runs for it (AIRFLOW_NOTES §2)."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import DagBag, sync_bag_to_db

    DagBundlesManager().sync_bundles_to_db()
    bag = DagBag(dag_folder="/dev/null", collect_dags=False)
    bag.bag_dag(dag)
    sync_bag_to_db(bag, bundle_name, None)


def run_dag(dag: Any, **kwargs: Any) -> Any:
    """Serialize and run ``dag`` once in this process; returns the finished DagRun."""
    sync_dag(dag)
    return dag.test(**kwargs)


def task_states(dag_run: Any) -> dict[str, str]:
    """{task_id: state}; a mapped task (one instance per chunk) shows its worst instance's state and the
    count of instances per state, e.g. ``failed (3 success, 1 failed)``."""
    by_task: dict[str, list[str]] = {}
    for ti in dag_run.get_task_instances():
        by_task.setdefault(ti.task_id, []).append(str(ti.state))
    states = {}
    for task_id, found in by_task.items():
        worst = worst_state(found)
        counts = ", ".join(f"{found.count(s)} {s}" for s in sorted(set(found), key=found.index))
        states[task_id] = worst if len(found) == 1 else f"{worst} ({counts})"
    return states


def states_by_phase(dag_run: Any) -> dict[str, dict[str, str]]:
    """{phase (TaskGroup): {task_id: state}} in DAG order of phases."""
    phases: dict[str, dict[str, str]] = {}
    for task_id, state in sorted(task_states(dag_run).items()):
        phase = task_id.split(".", 1)[0] if "." in task_id else task_id
        phases.setdefault(phase, {})[task_id] = state
    order = ["preflight", "backup", "steps", "verify", "rollback", "outcome"]
    return dict(sorted(phases.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99))
