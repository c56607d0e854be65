"""Rollback as a stack built from the ledger: revert what this run applied, newest first; then, when the run
made a backup, prove table by table that the data equals the pre-run state, restoring from the backup the
tables that do not (or everything the stack still held, when a revert failed)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

from airflow_migrate_provider.core.backup.catalog import Backup
from airflow_migrate_provider.core.backup.restore import TableState, compare_backup, restore_backup
from airflow_migrate_provider.core.kinds import kind_named
from airflow_migrate_provider.core.ledger import HistoryRow, Ledger, RunIdentity
from airflow_migrate_provider.core.step_result import StepResult
from airflow_migrate_provider.core.steps import StepRunner
from airflow_migrate_provider.core.summary import format_table
from airflow_migrate_provider.errors import MigrateError, RestoreFailed, RevertFailed

log = logging.getLogger(__name__)


@dataclass
class RollbackReport:
    """What the rollback did, for the task log and the run summary."""

    reverted: list[StepResult] = field(default_factory=list)
    stopped_at: str | None = None  # the irreversible step where automatic rollback stopped
    left_applied: list[str] = field(default_factory=list)
    revert_failed: str | None = None  # "<step>: <error>" when a down failed and the backup took over
    restored_from: str | None = None  # backup id, when tables were restored
    tables: list[TableState] = field(default_factory=list)

    def summary(self) -> str:
        if not self.reverted and self.stopped_at is None and not self.restored_from:
            return "rollback: this run had applied no step; nothing to revert"
        parts = [f"rollback: reverted {len(self.reverted)} step(s)"
                 + (f" ({', '.join(r.step_id for r in self.reverted)})" if self.reverted else "")]
        if self.revert_failed:
            parts.append(f"a revert failed ({self.revert_failed})")
        if self.restored_from:
            parts.append(f"restored {', '.join(t.table for t in self.tables if t.action not in ('', 'unchanged'))} "
                         f"from backup {self.restored_from}")
        if self.stopped_at:
            parts.append(f"stopped at the point of no return '{self.stopped_at}'; still applied: "
                         f"{', '.join(self.left_applied)}")
        return "; ".join(parts)

    def tables_table(self) -> str:
        return tables_after_rollback(self.tables)


def tables_after_rollback(tables: list[TableState]) -> str:
    """Each backed-up table before the run and after the rollback, and how it got back (for logs and the CLI)."""
    rows = [[t.table, t.expected, t.actual, t.action or "down SQL", "yes" if t.equal else "NO"] for t in tables]
    return format_table(["table", "before the run", "after rollback", "how", "equal"], rows)


def backup_before(ledger: Ledger, who: RunIdentity) -> Backup | None:
    """The backup of the state before ``who``'s run, or before the first dead run it took over (runs chain: see
    Ledger.run_chain): that of the oldest run in the chain that made one, unless an older run applied steps
    without one (then no backup holds the state before it, and the rollback reverts with down SQL only)."""
    from airflow_migrate_provider.core.backup.catalog import BackupCatalog

    verified: dict[str, Backup] = {}
    for backup in BackupCatalog(ledger.engine, ledger.plan_id).all():  # newest first: keep each run's newest
        if backup.status == "verified":
            verified.setdefault(backup.run_key, backup)
    applied_runs = {row.run_key for row in ledger.applied_by_run(who)}
    for run_key in ledger.run_chain(who.run_key):
        if run_key in verified:
            return verified[run_key]
        if run_key in applied_runs:
            log.warning("run %s applied steps but made no verified backup: no backup holds the state before it, "
                        "so the rollback reverts with down SQL only", run_key)
            return None
    return None


def rollback_run(ledger: Ledger, runner: StepRunner, who: RunIdentity, backup: Backup | None = None,
                 restore_on_difference: bool = True) -> RollbackReport:
    """Revert, newest first, every step ``who``'s run applied and that is still applied (with the steps of the
    dead runs it took over: the state to go back to is the one before the first run that did not complete).

    The stack comes from the ledger, so it is right after retries and manual clears, and reverts use the
    down SQL recorded at apply time. An irreversible step is a point of no return: rollback stops there.
    With the run's ``backup``: a failed revert hands over to a restore of the tables, and afterwards every
    backed-up table is compared with the manifest (restored where it differs, unless told not to).
    """
    report = RollbackReport()
    stack = ledger.applied_by_run(who)
    log.info("rollback stack for %s: %s", who.run_key, [r.step_id for r in stack] or "empty")
    unreverted: list[HistoryRow] = []
    for position, row in enumerate(stack):
        if row.actions.irreversible:
            report.stopped_at = row.step_id
            report.left_applied = [r.step_id for r in stack[position:]]
            log.warning("step '%s' is irreversible (a point of no return): automatic rollback stops here; "
                        "steps applied before it stay applied: %s", row.step_id, report.left_applied)
            break
        try:
            report.reverted.append(runner.revert(row))
        except MigrateError as exc:
            remaining = stack[position:]
            past_no_return = [r.step_id for r in remaining if r.actions.irreversible]
            live_writes = [r.step_id for r in remaining if not kind_named(r.actions.kind).restore_replaces_revert]
            if backup is None or past_no_return or live_writes:
                why = ("no backup to restore from" if backup is None else
                       f"a restore would undo the irreversible step(s) {past_no_return}" if past_no_return else
                       f"a restore would drop the application's writes made during the run: {live_writes} must be "
                       f"reverted by their own revert (switch back, replay back)")
                raise RevertFailed(
                    f"reverting step '{row.step_id}' failed: {exc}\n"
                    f"reverted so far: {[r.step_id for r in report.reverted] or 'none'}; still applied by this "
                    f"run: {[r.step_id for r in remaining]} ({why}). Fix the cause and clear the rollback task "
                    f"to retry" + ("." if live_writes else ", or restore the affected tables from a backup "
                                   "(`airflow-migrate restore`).")
                ) from exc
            report.revert_failed = f"{row.step_id}: {exc}"
            log.error("reverting step '%s' failed: %s. Restoring the tables from backup %s instead, for it and "
                      "the steps before it: %s", row.step_id, exc, backup.id, [r.step_id for r in remaining])
            unreverted = remaining
            break
    if backup is None:
        log.info("%s", report.summary())
        return report
    if report.stopped_at is not None:
        log.warning("tables not compared with backup %s: the run went past the point of no return '%s', so "
                    "they are meant to differ from before the run", backup.id, report.stopped_at)
        log.info("%s", report.summary())
        return report
    _back_to_backup(ledger, runner, who, backup, report, unreverted, restore_on_difference)
    log.info("%s", report.summary())
    log.info("data after rollback, table by table, against backup %s (taken before the run):\n%s", backup.id,
             report.tables_table())
    return report


def _back_to_backup(ledger: Ledger, runner: StepRunner, who: RunIdentity, backup: Backup, report: RollbackReport,
                    unreverted: list[HistoryRow], restore_on_difference: bool) -> None:
    states = compare_backup(runner.engine, backup)
    differing = [s.table for s in states if not s.equal]
    if not differing:
        report.tables = states
        return
    if not unreverted and not restore_on_difference:
        report.tables = states
        raise RestoreFailed(
            f"after reverting this run's steps, {', '.join(differing)} still differ from backup {backup.id} "
            f"(taken before the run), and the plan sets backup.restore_on_difference: false:\n"
            f"{report.tables_table()}\nCheck them; to put the backed-up data back, run "
            f"`airflow-migrate restore <plan> --backup {backup.id}`.")
    log.warning("%s differ from backup %s after the down SQL; restoring them from the backup", differing,
                backup.id)
    restored = restore_backup(runner.engine, backup)
    report.restored_from, report.tables = backup.id, restored.tables
    for row in unreverted:
        _record_restored(ledger, runner, who, row, backup)
        report.reverted.append(StepResult(row.step_id, "reverted", 0.0, 0, [f"restored from backup {backup.id}"]))


def _record_restored(ledger: Ledger, runner: StepRunner, who: RunIdentity, row: HistoryRow, backup: Backup) -> None:
    """The step's tables are back to the backup: record it reverted (its kind resets its own state)."""
    row_id, started = ledger.start(row.step_id, "revert", row.checksum, row.actions, who)
    with runner.engine.begin() as conn:
        kind_named(row.actions.kind).after_restore(conn, ledger, row.step_id)
        note = f"restored the tables from backup {backup.id}; every table equals its manifest"
        ledger.finish(row_id, "reverted", started_at=started, verified=json.dumps([note]), conn=conn)
