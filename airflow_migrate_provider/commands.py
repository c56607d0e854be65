"""The public command API behind the ``airflow-migrate`` CLI (the CLI only parses and prints).

Heavy imports (airflow) happen inside the commands that need them, after Airflow's environment is set.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_migrate_provider.errors import (
    BackupFailed,
    ConnectionUnavailable,
    MigrateError,
    PlanError,
    PlanProblem,
    RestoreFailed,
    db_error_line,
)
from airflow_migrate_provider.masking import mask_text, mask_uri
from airflow_migrate_provider.plan.loader import load_plan
from airflow_migrate_provider.plan.model import Plan

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from airflow_migrate_provider.core.dialects import Dialect



def validate(paths: list[str | Path], dialect: str | None = None) -> list[PlanProblem]:
    """Every problem in every plan file (empty when all are valid). Touches no database. With ``dialect``, also
    what the plan's SQL means on that database (statements that could not be resumed after a crash)."""
    from airflow_migrate_provider.core.dialects import dialect_named

    problems: list[PlanProblem] = []
    adapter = dialect_named(dialect, "--dialect") if dialect else None
    for path in paths:
        try:
            plan = load_plan(path)
        except PlanError as exc:
            problems += exc.problems
            continue
        if adapter is not None:
            problems += _dialect_problems(path, plan, adapter)
    return problems


def _dialect_problems(path: str | Path, plan: Plan, dialect: Dialect) -> list[PlanProblem]:
    from airflow_migrate_provider.core.kinds import kind_of
    from airflow_migrate_provider.plan.loader import locate

    found = []
    for index, step in enumerate(plan.steps):
        for field, message in kind_of(step).dialect_checklist(step, dialect)[0]:
            found.append(PlanProblem(str(path), *locate(path, ("steps", index, field)), message))
    return found


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
    """The task graph by TaskGroup and the SQL each task will run: a dry run that needs neither Airflow nor a
    database (``core.task_graph``, the same graph the DAG is built from).

    The dialect (how statements split, whether steps are transactional) comes from ``dialect``, else from
    the scheme of the target's URI in ``connections``, else PostgreSQL.
    """
    from airflow_migrate_provider.connections import check_uris
    from airflow_migrate_provider.core.dialects import dialect_name_of_uri
    from airflow_migrate_provider.core.task_graph import build_task_graph

    check_uris(connections or {})  # a malformed URI is named as such, never printed
    plan = load_plan(path)
    target_uri = (connections or {}).get(plan.connections.target, "")
    dialect = dialect or dialect_name_of_uri(target_uri, "connections.target", plan.connections.target)
    graph = build_task_graph(plan, dialect)  # an unknown dialect is an error before anything else
    lines = [f"DAG {plan.id}: {len(graph.tasks)} tasks, dialect {dialect}",
             f"connections: target={plan.connections.target}"
             + (f" source={plan.connections.source}" if plan.connections.source else "")]
    for conn_id, uri in sorted((connections or {}).items()):
        lines.append(f"  {conn_id} = {mask_uri(uri)}")
    return "\n".join(lines + graph.render())


@dataclass
class RunOutcome:
    """How a local run went: the DagRun state, task states per phase, and the ledger summary."""

    state: str
    phases: dict[str, dict[str, str]]
    summary: str
    verification: str = ""
    backup: str = ""  # the run's backup
    rollback_report: str = ""  # after a rollback: the data table by table against the backup
    notes: list[str] = dataclass_field(default_factory=list)  # approvals timed out, a stop, what was kept
    interrupted: int | None = None  # the signal (SIGTERM/SIGINT) that stopped the run

    @property
    def succeeded(self) -> bool:
        return self.state == "success" and self.interrupted is None

    @property
    def exit_code(self) -> int:
        """0 success, 1 the migration failed (rolled back), 128 + signal when a signal stopped it."""
        if self.interrupted is not None:
            return 128 + self.interrupted
        return 0 if self.succeeded else 1


def run(path: str | Path, connections: dict[str, str], airflow_home: str | Path | None = None,
        during: Any = None, *, keep_home: bool = False, notify: Callable[[str], None] | None = None) -> RunOutcome:
    """Run a plan's DAG locally through dag.test() with a SQLite Airflow metadata DB in a home this command
    creates (``local_home``: a temporary one, removed afterwards unless ``keep_home``; a given one only when new,
    empty or created by an earlier run). ``during``: a context manager to hold while the DAG runs (the demo's
    writer); ``notify``: told, one line each, what happens while it runs (an approval waits, a signal arrived).

    An approval that gets no answer within the plan's ``approval.timeout_hours`` fails the run, which rolls
    back; SIGTERM/SIGINT stop it the same way (``run_watch``). Raises RunRefused when another run holds the
    plan's lock (nothing was run), AirflowHomeRefused for a home it must not reset."""
    from airflow_migrate_provider.local_home import prepare_home

    plan = load_plan(path)
    check_connections_given(plan, connections)
    home = prepare_home(airflow_home)
    try:
        outcome = _run_in_home(plan, Path(path), connections, home.path, during, notify or _log_notice)
    finally:
        kept = _tidy_home(home, keep_home)
    if kept:
        outcome.notes.append(kept)
    return outcome


def _log_notice(line: str) -> None:
    import logging

    logging.getLogger(__name__).warning("%s", line)


def _tidy_home(home: Any, keep_home: bool) -> str:
    """Remove the temporary home of a finished run (unless kept); what was kept, as a note."""
    from airflow_migrate_provider.local_home import remove_home

    if not home.temporary:
        return ""
    if keep_home:
        return f"Airflow home of this run (kept): {home.path}"
    backups = remove_home(home)
    return (f"kept this run's backup files in {backups} (the ledger refers to them; "
            f"`airflow-migrate backups prune` removes them)" if backups else "")


def _run_in_home(plan: Plan, path: Path, connections: dict[str, str], home: Path, during: Any,
                 notify: Callable[[str], None]) -> RunOutcome:
    from airflow_migrate_provider.local_run import define_connections, use_airflow_home

    use_airflow_home(home)
    define_connections(connections)
    from airflow_migrate_provider.dag_builder import build_dag
    from airflow_migrate_provider.local_run import init_metadata_db, run_dag, states_by_phase
    from airflow_migrate_provider.run_watch import watching_run

    check_targets_reachable(plan)
    init_metadata_db()
    dag = build_dag(plan, source_text=path.read_text(encoding="utf-8"), plan_dir=str(path.resolve().parent))
    with during if during is not None else nullcontext(), watching_run(dag, notify) as watch:
        dag_run = run_dag(dag)
    _raise_if_refused(plan, path, dag_run)
    summary, verification = ledger_reports(plan)
    outcome = RunOutcome(str(dag_run.state), states_by_phase(dag_run), summary, verification,
                         *backup_reports(plan, dag_run.dag_id, dag_run.run_id), interrupted=watch.interrupted)
    outcome.notes += [f"approval {task_id}: no answer within {hours:g} h, the approval timed out; the run failed "
                      f"and rolled back what it applied" for task_id, hours in watch.timed_out.items()]
    if watch.interrupted is not None:
        outcome.notes.append(_interrupted_note(plan, dag_run, watch.interrupted, outcome.phases))
    return outcome


def _raise_if_refused(plan: Plan, path: Path, dag_run: Any) -> None:
    """RunRefused when preflight was refused the plan's lock: not a failed migration, nothing ran."""
    from airflow_migrate_provider.errors import RunRefused
    from airflow_migrate_provider.run_watch import lock_refusal

    refusal = lock_refusal(dag_run.dag_id, dag_run.run_id)
    if refusal is not None:
        raise RunRefused(plan.id, refusal["holder"], refusal["expires_at"], str(path))


def _interrupted_note(plan: Plan, dag_run: Any, signum: int, phases: dict[str, dict[str, str]]) -> str:
    """After a stopped run: make sure its lock is released, and say in one line what became of the run."""
    import signal

    rollback = phases.get("rollback", {}).get("rollback.revert_applied", "not run")
    if str(dag_run.state) == "success":
        what = "the run had completed before it could be stopped (the migration is applied)"
    elif rollback == "success":
        what = "the run was stopped and rolled back what it applied (see the rollback above)"
    elif rollback in ("skipped", "not run"):
        what = "the run was stopped before it applied anything"
    else:
        what = (f"the run was stopped but its rollback ended {rollback}: see the rollback task's log and "
                f"`airflow-migrate status`")
    return f"interrupted by {signal.Signals(signum).name}: {what}; {_release_stopped_run(plan, dag_run)}"


def _release_stopped_run(plan: Plan, dag_run: Any) -> str:
    """Release the stopped run's lock if its outcome task could not; who holds the lock now, in words."""
    from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
    from airflow_migrate_provider.hooks.migration import MigrationHook

    engine = MigrationHook(plan.connections.target).get_engine()
    try:
        ledger = Ledger(engine, plan.id)
        if not ledger.exists():
            return "the plan's run lock is released"
        ledger.release_lock(RunIdentity(dag_run.dag_id, dag_run.run_id))
        holder = ledger.lock_holder()
    finally:
        engine.dispose()
    return f"the plan's lock is now held by {holder['holder']}" if holder else "the plan's run lock is released"


def backup_reports(plan: Plan, dag_id: str, run_id: str) -> tuple[str, str]:
    """(the run's backup from the ledger, the rollback's table-by-table comparison with it) as text."""
    if plan.backup is None:
        return "", ""
    import json

    from airflow_migrate_provider.core.backup.restore import TableState
    from airflow_migrate_provider.core.backup.retention import backups_table, plan_backups
    from airflow_migrate_provider.core.context import report_dir
    from airflow_migrate_provider.core.rollback import tables_after_rollback
    from airflow_migrate_provider.hooks.migration import MigrationHook

    engine = MigrationHook(plan.connections.target).get_engine()
    try:
        mine = [b for b in plan_backups(engine, plan.id) if b.dag_id == dag_id and b.run_id == run_id]
    finally:
        engine.dispose()
    lines: list[str] = []
    rollback = report_dir(dag_id, run_id) / "rollback.json"
    if rollback.is_file():
        report = json.loads(rollback.read_text())
        if report.get("stopped_at"):
            lines.append(f"rollback stopped at the point of no return '{report['stopped_at']}'")
        if report.get("tables"):
            lines.append("data after rollback, table by table, against the backup taken before the run:")
            lines.append(tables_after_rollback([TableState(**t) for t in report["tables"]]))
    return backups_table(mine) if mine else "no backup was made", "\n".join(lines)


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


def unlock(path: str | Path, connections: dict[str, str], *, force: bool = False,
           confirm: Callable[[str], bool]) -> str:
    """Drop the plan's lock held by a dead run (``core.unlock``): refuses a live holder unless ``force``, asks
    ``confirm(question)``, records who unlocked in the ledger history."""
    from airflow_migrate_provider.core.ledger import Ledger
    from airflow_migrate_provider.core.unlock import unlock_plan

    with _plan_target(path, connections, ConnectionUnavailable) as (plan, engine):
        return unlock_plan(Ledger(engine, plan.id), force=force, confirm=confirm)


def demo(workdir: str | Path | None = None, users: int = 1000, fail_at: str | None = None,
         example: str = "add_user_preferences", notify: Callable[[str], None] | None = None,
         ) -> tuple[RunOutcome, Path, list[str]]:
    """Seed an embedded SQLite app database and run a bundled example plan against it: (outcome, database, notes).

    ``fail_at`` names a step made to fail, to watch the rollback at work. The dual-write example runs with a
    writer standing in for the application; the notes say whether every write it made is in the live table.
    """
    from airflow_migrate_provider.demo import (
        DEMO_CONN_ID,
        EXAMPLES,
        DemoWriter,
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
    writer = DemoWriter(database) if example == "dual_write_users" else None
    outcome = run(plan_path, {DEMO_CONN_ID: f"sqlite:///{database.resolve()}"}, base / "airflow", during=writer,
                  notify=notify)
    return outcome, database, writer.report() if writer is not None else []


# -- backups --------------------------------------------------------------------------------------------
@contextmanager
def _plan_target(path: str | Path, connections: dict[str, str], failure: type[MigrateError]
                 ) -> Iterator[tuple[Plan, Engine]]:
    """The plan and its target's engine (prepared by our dialect adapter), as ``status`` opens them; a
    database error becomes ``failure`` with the connection id and the driver's message (secrets masked)."""
    from sqlalchemy.exc import SQLAlchemyError

    plan = load_plan(path)
    check_connections_given(plan, connections)
    from airflow_migrate_provider.local_run import define_connections

    define_connections(connections)
    check_targets_reachable(plan)
    from airflow_migrate_provider.hooks.migration import MigrationHook

    engine, _ = MigrationHook(plan.connections.target).get_engine_and_dialect()
    try:
        yield plan, engine
    except SQLAlchemyError as exc:
        raise failure(f"plan '{plan.id}': database error in the target (Airflow connection "
                      f"'{plan.connections.target}'): {mask_text(db_error_line(exc))}") from exc
    finally:
        engine.dispose()


def backups_list(path: str | Path, connections: dict[str, str]) -> str:
    """The plan's backups in its target, newest first, with what each holds and when it expires."""
    from airflow_migrate_provider.core.backup.retention import backups_table, plan_backups
    from airflow_migrate_provider.core.backup.strategies import human_size

    with _plan_target(path, connections, BackupFailed) as (plan, engine):
        backups = plan_backups(engine, plan.id)
    if not backups:
        return f"plan '{plan.id}' has no backups in its target (Airflow connection '{plan.connections.target}')"
    kept = [b for b in backups if b.status != "pruned"]
    sizes = [b.size_bytes for b in kept if b.size_bytes is not None]
    keep_days = plan.backup.keep_days_after_success if plan.backup else None
    retention = (f"backups expire {keep_days} day(s) after their run succeeded" if keep_days is not None
                 else "backups are kept until pruned (the plan sets no backup.keep_days_after_success)")
    return (f"plan '{plan.id}': {len(backups)} backup(s), {len(kept)} not pruned, taking "
            f"{human_size(sum(sizes))}{' or more' if len(sizes) < len(kept) else ''}\n"
            f"{backups_table(backups)}\n{retention}; remove them with `airflow-migrate backups prune`")


def backups_prune(path: str | Path, connections: dict[str, str], *, backup_ids: list[str] | None = None,
                  older_than_days: float | None = None, dry_run: bool = False) -> str:
    """Prune the plan's expired backups, those older than ``older_than_days`` and those named; say what was
    removed (with ``dry_run``: what would be)."""
    from airflow_migrate_provider.core.backup.retention import (
        backups_table,
        prune_selected,
        select_for_pruning,
    )
    from airflow_migrate_provider.core.backup.strategies import human_size

    with _plan_target(path, connections, BackupFailed) as (plan, engine):
        selection = select_for_pruning(engine, plan.id, backup_ids=backup_ids, older_than_days=older_than_days)
        pruned = prune_selected(engine, plan.id, selection, dry_run=dry_run)
    criteria = ["expired"] + ([f"older than {older_than_days:g} day(s)"] if older_than_days is not None else [])
    criteria += [f"named ({', '.join(backup_ids)})"] if backup_ids else []
    lines = []
    if not pruned:
        lines.append(f"plan '{plan.id}': no backup to prune (looked for backups {' or '.join(criteria)})")
    else:
        freed = sum(b.size_bytes or 0 for b in pruned)
        verb = "would prune (dry run: nothing was removed)" if dry_run else "pruned"
        lines.append(f"plan '{plan.id}': {verb} {len(pruned)} backup(s), {human_size(freed)}")
        lines.append(backups_table(pruned))
    if selection.held:
        lines.append(f"kept {', '.join(b.id for b in selection.held)}: made by the run holding the plan's lock "
                     f"now, {selection.lock_holder}, whose rollback may still need it")
    return "\n".join(lines)


def restore(path: str | Path, connections: dict[str, str], backup_id: str) -> str:
    """Restore the plan's tables from one of its backups, holding the plan's run lock (so never during a
    migration run), and prove every table equals the backup."""
    import socket

    from airflow_migrate_provider.core.backup.restore import restore_backup
    from airflow_migrate_provider.core.backup.retention import plan_backups
    from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
    from airflow_migrate_provider.core.lock_keeper import LockKeeper

    with _plan_target(path, connections, RestoreFailed) as (plan, engine):
        backups = {b.id: b for b in plan_backups(engine, plan.id)}
        backup = backups.get(backup_id)
        if backup is None:
            known = ", ".join(list(backups)[:10]) or "none"
            raise BackupFailed(f"plan '{plan.id}' has no backup '{backup_id}' (its backups: {known}); see "
                               f"`airflow-migrate backups list`")
        who = RunIdentity("airflow-migrate-cli", f"restore-{backup_id}", host=socket.gethostname(),
                          pid=os.getpid())
        ledger = Ledger(engine, plan.id)
        ledger.ensure()
        # a restore is no migration run: it does not inherit a dead run (the next migration run does)
        lease = ledger.acquire_lock(who, plan.lock_ttl_seconds, inherit=False)
        try:
            with LockKeeper(ledger, lease, plan.lock_ttl_seconds):
                report = restore_backup(engine, backup)
        finally:
            ledger.release_lock(who)
    took_over = f"(took over the expired lock of {lease.took_over_from})\n" if lease.took_over_from else ""
    restored = ", ".join(report.restored)
    done = (f"restored {len(report.restored)} table(s) ({restored})" if report.restored
            else "no table differed from the backup, nothing was restored")
    return (f"{took_over}plan '{plan.id}': restore from backup {backup.id} (made by run {backup.run_key} at "
            f"{backup.created_at:%Y-%m-%d %H:%M:%S} UTC)\n{report.table()}\n"
            f"{done}; every table equals backup {backup.id} ({report.duration_s:.1f} s)")
