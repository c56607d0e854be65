"""``airflow-migrate``: validate, render, run, demo, status, backups, restore, shims. A thin layer over
``commands``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from airflow_migrate_provider import commands
from airflow_migrate_provider.errors import MigrateError, PlanError, RunRefused

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Turn YAML migration plans into Airflow DAGs and run them safely.")

ConnOption = Annotated[list[str], typer.Option(
    "--conn", metavar="ID=env:VAR|ID=URI",
    help="A connection the plan names (repeatable): ID=env:VAR reads the URI from environment variable VAR "
         "(keeps the password off the command line, where `ps` shows it); ID=URI gives it inline. AIRFLOW_CONN_<ID> "
         "variables work too. The password is never printed.")]
ConnFileOption = Annotated[Path | None, typer.Option(
    "--conn-file", metavar="FILE",
    help="Connections from a private file (chmod 600): ID=URI lines, or a JSON/YAML map of id to URI. --conn "
         "wins over it.")]


def _parse_conns(values: list[str], conn_file: Path | None = None) -> dict[str, str]:
    """--conn-file, then --conn (ID=URI or ID=env:VAR), each URI checked (connections.ConnectionOptionError)."""
    from airflow_migrate_provider.connections import gather

    return gather(values, conn_file, lambda line: typer.echo(f"warning: {line}", err=True))


def _fail(message: str, code: int = 1) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


def _print_outcome(outcome: commands.RunOutcome) -> None:
    typer.echo("\nTask states by phase:")
    for phase, tasks in outcome.phases.items():
        typer.echo(f"  {phase}")
        for task_id, state in tasks.items():
            typer.echo(f"    {task_id:<40} {state}")
    typer.echo(f"\nLedger after the run:\n{outcome.summary}")
    final = outcome.phases.get("verify", {}).get("verify.verify_steps", "not run")
    typer.echo(f"\nVerification (queries that passed as each step was applied):\n{outcome.verification}")
    typer.echo(f"  final verification of all steps (verify.verify_steps): {final}")
    if outcome.backup:
        typer.echo(f"\nBackup (backup.create) of this run:\n{outcome.backup}")
    rollback = outcome.phases.get("rollback", {}).get("rollback.revert_applied", "not run")
    typer.echo(f"\nRollback (rollback.revert_applied): {rollback}")
    if outcome.rollback_report:
        typer.echo(outcome.rollback_report)
    typer.echo(f"\nDAG run: {outcome.state}")


@app.command()
def validate(plans: Annotated[list[Path], typer.Argument(help="Plan files to check.")],
             dialect: Annotated[str | None, typer.Option(
                 help="also check the SQL for this database: mariadb/mysql (statements a crash could leave "
                      "half-done), postgresql, sqlite")] = None) -> None:
    """Check plan files; print every problem as path:line:col: message. Exit 1 if any."""
    problems = commands.validate(plans, dialect)
    for problem in problems:
        typer.echo(str(problem), err=True)
    if problems:
        raise typer.Exit(1)
    typer.echo(f"{len(plans)} plan(s) valid")


@app.command()
def render(plan: Path,
           dialect: Annotated[str | None, typer.Option(help="postgresql, mariadb, mysql or sqlite (default: from "
                                                            "the target's "
                                                            "--conn URI, else postgresql)")] = None,
           conn: ConnOption = [], conn_file: ConnFileOption = None) -> None:  # noqa: B006 - typer reads the default
    """Print the task graph by TaskGroup and the SQL each task will run (a dry run; secrets masked)."""
    typer.echo(commands.render(plan, dialect, _parse_conns(conn, conn_file)))


def _notice(line: str) -> None:
    typer.echo(f"airflow-migrate: {line}", err=True)


def _print_notes(outcome: commands.RunOutcome) -> None:
    """After the report: an approval that timed out, a stop by a signal, what was kept of the Airflow home."""
    for note in outcome.notes:
        typer.echo(note)


@app.command()
def run(plan: Path, conn: ConnOption = [], conn_file: ConnFileOption = None,  # noqa: B006
        airflow_home: Annotated[Path | None, typer.Option(
            help="Airflow home for the run's metadata DB, which is reset: only a new or empty directory, or one an "
                 "earlier run created (marked with .airflow-migrate-home). Default: a temporary one, removed "
                 "after the run")] = None,
        keep_home: Annotated[bool, typer.Option(
            "--keep-home", help="Keep the temporary Airflow home (task logs, metadata DB) after the run")] = False,
        ) -> None:
    """Run the plan's DAG locally (dag.test).

    Exit codes: 0 the migration succeeded; 1 it failed (and rolled back), including an approval that got no
    answer within the plan's approval.timeout_hours; 2 usage error (bad option, an --airflow-home this command
    must not reset); 3 refused, nothing run: another run holds the plan's lock; 143 / 130 stopped by SIGTERM /
    SIGINT (the run stops, rolls back what it applied and releases its lock; a second signal stops at once).
    """
    try:
        outcome = commands.run(plan, _parse_conns(conn, conn_file), airflow_home, keep_home=keep_home, notify=_notice)
    except RunRefused as exc:
        _fail(str(exc), code=exc.exit_code)
    _print_outcome(outcome)
    _print_notes(outcome)
    raise typer.Exit(outcome.exit_code)


@app.command()
def demo(workdir: Annotated[Path | None, typer.Option(help="Where to put the demo database")] = None,
         users: int = 1000,
         fail_at: Annotated[str | None, typer.Option(help="Make this step fail, to watch the rollback (the "
                                                          "run then ends failed)")] = None,
         example: Annotated[str, typer.Option(help="Which bundled plan: add_user_preferences (schema steps), "
                                                   "backfill_users (a chunked backfill) or dual_write_users (dual "
                                                   "write and cutover while a writer runs)")]
         = "add_user_preferences",
         ) -> None:
    """Run a bundled example plan (default: "add user_preferences") against an embedded SQLite database."""
    from airflow_migrate_provider.demo import database_tables

    outcome, database, notes = commands.demo(workdir, users, fail_at, example, notify=_notice)
    typer.echo(f"\nDemo database: {database}")
    _print_outcome(outcome)
    for note in notes:
        typer.echo(note)
    _print_notes(outcome)
    typer.echo("\nTables now in the demo database:")
    for table, columns in database_tables(database).items():
        typer.echo(f"  {table}({', '.join(columns)})")
    raise typer.Exit(outcome.exit_code)


@app.command()
def status(plan: Path, conn: ConnOption = [], conn_file: ConnFileOption = None) -> None:  # noqa: B006
    """Show the ledger: steps applied, by which dag/run/try, when, and whether their checksum matches."""
    typer.echo(commands.status(plan, _parse_conns(conn, conn_file)))


@app.command()
def unlock(plan: Annotated[Path, typer.Argument(help="The plan file whose lock to drop.")],
           conn: ConnOption = [], conn_file: ConnFileOption = None,  # noqa: B006
           yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation (scripts).")] = False,
           force: Annotated[bool, typer.Option(
               "--force", help="Unlock even though the holder looks alive (you know its worker is gone).")] = False,
           ) -> None:
    """Drop the plan's run lock left by a run that died.

    Shows the holder and asks for confirmation (--yes for scripts; without a terminal, --yes is required).

    Refuses while the holder is alive: its process running on this host, its database session connected, or
    its lock not expired with nothing telling whether it is alive. --force unlocks anyway.

    Who unlocked, when, and the old holder go to the ledger history; the next run inherits what the dead run
    applied (its rollback reverts those steps too).
    """
    from airflow_migrate_provider.errors import UnlockRefused

    def confirm(question: str) -> bool:
        if yes:
            return True
        if not sys.stdin.isatty():
            raise UnlockRefused(f"{question} There is no terminal to confirm on: pass --yes to unlock without "
                                f"asking.")
        return typer.confirm(question, default=False)

    typer.echo(commands.unlock(plan, _parse_conns(conn, conn_file), force=force, confirm=confirm))


backups_app = typer.Typer(no_args_is_help=True, help="List and prune the backups a plan's runs made in its target.")
app.add_typer(backups_app, name="backups")


@backups_app.command("list")
def backups_list(plan: Annotated[Path, typer.Argument(help="The plan file whose backups to list.")],
                 conn: ConnOption = [], conn_file: ConnFileOption = None) -> None:  # noqa: B006
    """Show the plan's backups, newest first.

    Each with its status, strategy, when it was made (UTC), by which dag/run, tables, rows, size, expiry, location.

    Use an id with `airflow-migrate backups prune --backup ID` or `airflow-migrate restore --backup ID`.
    """
    typer.echo(commands.backups_list(plan, _parse_conns(conn, conn_file)))


@backups_app.command("prune")
def backups_prune(
    plan: Annotated[Path, typer.Argument(help="The plan file whose backups to prune.")],
    conn: ConnOption = [], conn_file: ConnFileOption = None,  # noqa: B006
    backup: Annotated[list[str], typer.Option(
        "--backup", metavar="ID", help="Also prune this backup (repeatable); ids are in `backups list`.")] = [],  # noqa: B006
    older_than: Annotated[float | None, typer.Option(
        "--older-than", metavar="DAYS", min=0,
        help="Also prune backups made more than DAYS days ago (fractions allowed, e.g. 0.5).")] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Only list what would be pruned; remove nothing.")] = False,
) -> None:
    """Remove expired, old or named backups.

    Prunes backups expired by the plan's backup.keep_days_after_success, plus --older-than and --backup ones.

    Their copies (snapshot tables or files) are removed; `backups list` still shows them, marked pruned.

    A backup made by the run that holds the plan's lock is never pruned: its rollback may still need it.

    Try --dry-run first.
    """
    typer.echo(commands.backups_prune(plan, _parse_conns(conn, conn_file), backup_ids=backup,
                                      older_than_days=older_than, dry_run=dry_run))


@app.command()
def restore(plan: Annotated[Path, typer.Argument(help="The plan file the backup belongs to.")],
            backup: Annotated[str, typer.Option(
                "--backup", metavar="ID", help="The backup to restore from (see `airflow-migrate backups list`).")],
            conn: ConnOption = [], conn_file: ConnFileOption = None) -> None:  # noqa: B006
    """Restore the plan's tables from a backup and verify them.

    Puts each backed-up table back as it was (a table a step created is dropped) and checks its checksum.

    Takes the plan's run lock, so it refuses to run while a migration run of the plan holds it.

    Exit 1 if a table still differs from the backup.
    """
    typer.echo(commands.restore(plan, _parse_conns(conn, conn_file), backup))


@app.command()
def shims(plans_dir: Path) -> None:
    """Write the two-line DAG file for every plan in PLANS_DIR that has none."""
    from airflow_migrate_provider.dag_loader import ensure_plan_shims

    for shim in ensure_plan_shims(plans_dir):
        typer.echo(f"wrote {shim}")


@app.command()
def reference() -> None:
    """Print the plan reference (Markdown) generated from the plan model."""
    from airflow_migrate_provider.plan.reference import plan_reference_markdown

    typer.echo(plan_reference_markdown(), nl=False)


def main() -> None:
    """Entry point: a MigrateError becomes one clear message and exit 1, never a traceback."""
    try:
        app()
    except PlanError as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        sys.exit(1)
    except MigrateError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(getattr(exc, "exit_code", 1))  # 1, or the error's own code (2: a refused --airflow-home)


if __name__ == "__main__":
    main()
