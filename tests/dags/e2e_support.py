"""Support for end-to-end DAG tests: example plans with unique ids, seeded databases."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml
from sqlalchemy import create_engine, text

from airflow_migrate_provider.demo import example_plan_path, seed_demo_database

REPO = Path(__file__).resolve().parents[2]
PG_EXAMPLE = REPO / "dags" / "plans" / "add_user_preferences.yaml"
_ids = itertools.count(1)

MARIADB_EXAMPLE = REPO / "dags" / "plans" / "add_user_preferences_mariadb.yaml"
PG_SEED = (REPO / "docker" / "seed-app-db.sql").read_text()
MARIADB_SEED = (REPO / "docker" / "seed-app-db-mariadb.sql").read_text()
USERS = 1000  # both seeds


def seed(db: Any) -> None:
    """The application database before the migration (users with theme/notification columns)."""
    if db.dialect == "sqlite":
        seed_demo_database(Path(db.sqlalchemy_url.removeprefix("sqlite:///")), users=USERS)
        return
    seed_sql = MARIADB_SEED if db.dialect == "mariadb" else PG_SEED
    execute(db.sqlalchemy_url, *(s for s in seed_sql.split(";") if s.strip()))


def execute(url: str, *statements: str) -> None:
    """Run statements in one transaction on the database at ``url``."""
    eng = create_engine(url)
    with eng.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))
    eng.dispose()


def query(url: str, sql: str) -> list[tuple]:
    eng = create_engine(url)
    with eng.connect() as conn:
        rows = [tuple(r) for r in conn.execute(text(sql))]
    eng.dispose()
    return rows


def scalar(url: str, sql: str) -> Any:
    return query(url, sql)[0][0]


def example_plan(dialect: str, mutate: Callable[[dict], None] | None = None) -> dict:
    """The example plan for ``dialect`` as a dict, with a unique id so every test has its own DAG."""
    path = {"sqlite": example_plan_path(), "mariadb": MARIADB_EXAMPLE}.get(dialect, PG_EXAMPLE)
    data = yaml.safe_load(path.read_text())
    data["id"] = f"e2e_{dialect}_{next(_ids)}"
    if mutate:
        mutate(data)
    return data


def break_verify(step_index: int) -> Callable[[dict], None]:
    """Fault injection: step ``step_index``'s verify query returns false."""
    def mutate(data: dict) -> None:
        data["steps"][step_index]["verify"] = ["SELECT 1 = 0"]
    return mutate


def states(dag_run: Any) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


FIXED_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)
