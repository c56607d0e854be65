"""The ``run_plan`` fixture: run a plan's DAG with dag.test() against a test database."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml


@pytest.fixture
def run_plan(airflow_db, monkeypatch) -> Callable[..., Any]:
    """``run_plan(plan_dict, db, **dag_test_kwargs)`` → finished DagRun, with the plan's conn set to db."""
    from airflow_migrate_provider.dag_builder import build_dag
    from airflow_migrate_provider.local_run import connection_env_name, run_dag
    from airflow_migrate_provider.plan.loader import parse_plan

    def run(plan_data: dict, db: Any, conn_override: bool = True, **kwargs: Any) -> Any:
        plan = parse_plan(yaml.safe_dump(plan_data, sort_keys=False), f"{plan_data['id']}.yaml")
        if conn_override:
            monkeypatch.setenv(connection_env_name(plan.connections.target), db.airflow_uri)
        return run_dag(build_dag(plan), **kwargs)

    return run


@pytest.fixture
def legacy_pg(pg_database_factory, monkeypatch):
    """A separate source database (connection `legacy_db`) holding the seeded users table."""
    from e2e_support import seed

    from airflow_migrate_provider.local_run import connection_env_name

    with pg_database_factory() as source:
        seed(source)
        monkeypatch.setenv(connection_env_name("legacy_db"), source.airflow_uri)
        yield source


@pytest.fixture
def cli(cli, airflow_db, monkeypatch):
    """The in-process ``cli`` (tests/conftest.py) for commands that run a DAG. In this process Airflow is
    configured already (this worker's home, set up once by ``airflow_db``), so ``run``/``demo`` use that
    metadata DB; they skip their own reset of it (3 s each, and a reset would disarm pytest-timeout)."""
    from airflow_migrate_provider import local_run

    monkeypatch.setattr(local_run, "init_metadata_db", lambda: None)
    return cli
