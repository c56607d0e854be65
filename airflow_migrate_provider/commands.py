"""The public command API behind the ``airflow-migrate`` CLI (the CLI only parses and prints).

Heavy imports (airflow) happen inside the commands that need them, after Airflow's environment is set.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from airflow_migrate_provider.core.dialects import dialect_named
from airflow_migrate_provider.errors import ConnectionUnavailable, MigrateError, PlanError, PlanProblem, db_error_line
from airflow_migrate_provider.masking import mask_uri
from airflow_migrate_provider.plan.loader import load_plan
from airflow_migrate_provider.plan.model import Plan

URI_SCHEME_DIALECTS = {"postgresql": "postgresql", "postgres": "postgresql", "sqlite": "sqlite"}


def validate(paths: list[str | Path]) -> list[PlanProblem]:
    """Every problem in every plan file (empty when all are valid). Touches no database."""
    problems: list[PlanProblem] = []
    for path in paths:
        try:
            load_plan(path)
        except PlanError as exc:
            problems += exc.problems
    return problems


def _plan_conn_ids(plan: Plan) -> list[str]:
    return sorted({plan.connections.target, plan.connections.source_or_target})


def check_connections_given(plan: Plan, connections: dict[str, str]) -> None:
    """Every connection id the plan names must be given (--conn) or defined in the environment."""
    from airflow_migrate_provider.local_run import connection_env_name

    missing = [c for c in _plan_conn_ids(plan) if c not in connections and connection_env_name(c) not in os.environ]
    if missing:
        raise ConnectionUnavailable(
            "connection id(s) not defined: " + ", ".join(f"'{c}'" for c in missing)
            + ". Pass --conn " + " --conn ".join(f"{c}=URI" for c in missing)
            + " (e.g. postgresql://user:pass@host:5432/db or sqlite:////abs/path.db)"
        )


def render(path: str | Path, dialect: str | None = None, connections: dict[str, str] | None = None) -> str:
    """The task graph by TaskGroup and the SQL each task will run, from the DAG the plan builds.

    The dialect (how statements split, whether steps are transactional) comes from ``dialect``, else from
    the scheme of the target's URI in ``connections``, else PostgreSQL.
    """
    from airflow_migrate_provider.dag_builder import build_dag
    from airflow_migrate_provider.operators.base import MigrationOperator

    plan = load_plan(path)
    target_uri = (connections or {}).get(plan.connections.target, "")
    dialect = dialect or URI_SCHEME_DIALECTS.get(target_uri.split(":", 1)[0].split("+", 1)[0], "postgresql")
    dialect_named(dialect)  # an unknown dialect is an error before anything else
    dag = build_dag(plan)
    lines = [f"DAG {dag.dag_id}: {len(dag.tasks)} tasks, dialect {dialect}",
             f"connections: target={plan.connections.target}"
             + (f" source={plan.connections.source}" if plan.connections.source else "")]
    for conn_id, uri in sorted((connections or {}).items()):
        lines.append(f"  {conn_id} = {mask_uri(uri)}")
    current_group = None
    for task in dag.topological_sort():
        group = task.task_id.split(".", 1)[0] if "." in task.task_id else None
        if group != current_group:
            lines.append("")
            lines.append(f"[{group}]" if group else "[outcome]")
            current_group = group
        kind = " (teardown)" if task.is_teardown else ""
        rule = getattr(task.trigger_rule, "value", task.trigger_rule)
        mapped = task.operator_class if hasattr(task, "partial_kwargs") else None  # mapped: one per chunk
        name = f"{mapped.__name__}, mapped" if mapped is not None else type(task).__name__
        lines.append(f"  {task.task_id}  <{name}>{kind} trigger_rule={rule}")
        if mapped is not None and issubclass(mapped, MigrationOperator):
            task = mapped(task_id=task.task_id.rsplit(".", 1)[-1], **task.partial_kwargs)
        if isinstance(task, MigrationOperator):
            lines += [f"      {line}" for line in task.describe(dialect)]
    return "\n".join(lines)


@dataclass
class RunOutcome:
    """How a local run went: the DagRun state, task states per phase, and the ledger summary."""

    state: str
    phases: dict[str, dict[str, str]]
    summary: str
    verification: str = ""

    @property
    def succeeded(self) -> bool:
        return self.state == "success"


def run(path: str | Path, connections: dict[str, str], airflow_home: str | Path | None = None) -> RunOutcome:
    """Run a plan's DAG locally through dag.test() with a throwaway SQLite Airflow metadata DB."""
    plan = load_plan(path)
    check_connections_given(plan, connections)
    from airflow_migrate_provider.local_run import define_connections, use_airflow_home

    use_airflow_home(airflow_home)
    define_connections(connections)
    from airflow_migrate_provider.dag_builder import build_dag
    from airflow_migrate_provider.local_run import init_metadata_db, run_dag, states_by_phase

    check_targets_reachable(plan)
    init_metadata_db()
    dag_run = run_dag(build_dag(plan, source_text=Path(path).read_text(encoding="utf-8"),
                                plan_dir=str(Path(path).resolve().parent)))
    summary, verification = ledger_reports(plan)
    return RunOutcome(str(dag_run.state), states_by_phase(dag_run), summary, verification)


def check_targets_reachable(plan: Plan) -> None:
    """Fail fast, with the connection id and without the URI, when a database of the plan is unreachable."""
    from airflow_migrate_provider.core.preflight import check_reachable
    from airflow_migrate_provider.hooks.migration import MigrationHook

    for role, conn_id in (("target", plan.connections.target), ("source", plan.connections.separate_source)):
        if conn_id is None:
            continue
        engine = MigrationHook(conn_id).get_engine()
        try:
            check_reachable(engine, role, conn_id)
        finally:
            engine.dispose()


def ledger_reports(plan: Plan) -> tuple[str, str]:
    """(status table, verification report) from the plan target's ledger (needs its connection defined)."""
    from sqlalchemy.exc import SQLAlchemyError

    from airflow_migrate_provider.core.ledger import Ledger
    from airflow_migrate_provider.core.status import status_table, verification_report
    from airflow_migrate_provider.hooks.migration import MigrationHook

    engine = MigrationHook(plan.connections.target).get_engine()
    try:
        ledger = Ledger(engine, plan.id)
        return status_table(plan, ledger), verification_report(plan, ledger)
    except SQLAlchemyError as exc:
        raise ConnectionUnavailable(
            f"cannot read the ledger in the target (Airflow connection '{plan.connections.target}'): "
            f"{db_error_line(exc)}"
        ) from exc
    finally:
        engine.dispose()


def status(path: str | Path, connections: dict[str, str]) -> str:
    plan = load_plan(path)
    check_connections_given(plan, connections)
    from airflow_migrate_provider.local_run import define_connections

    define_connections(connections)
    check_targets_reachable(plan)
    return ledger_reports(plan)[0]


def demo(workdir: str | Path | None = None, users: int = 1000,
         fail_at: str | None = None, example: str = "add_user_preferences") -> tuple[RunOutcome, Path]:
    """Seed an embedded SQLite app database and run a bundled example plan against it.

    ``fail_at`` names a step made to fail, to watch the rollback at work.
    """
    from airflow_migrate_provider.demo import (
        DEMO_CONN_ID,
        EXAMPLES,
        example_plan_path,
        plan_failing_at,
        seed_demo_database,
    )

    if example not in EXAMPLES:
        raise MigrateError(f"--example: no bundled example '{example}' (examples: {', '.join(EXAMPLES)})")

    base = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="airflow-migrate-demo-"))
    base.mkdir(parents=True, exist_ok=True)
    database = base / "app.db"
    if database.exists():
        database.unlink()
    seed_demo_database(database, users)
    plan_path = example_plan_path(f"{example}.yaml")
    plan_path = plan_failing_at(plan_path, fail_at, base) if fail_at else plan_path
    outcome = run(plan_path, {DEMO_CONN_ID: f"sqlite:///{database.resolve()}"}, base / "airflow")
    return outcome, database
