from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowFailException
from sqlalchemy.exc import SQLAlchemyError

from airflow_migrate_provider.core.summary import run_summary_table
from airflow_migrate_provider.errors import ConnectionUnavailable, MigrateError
from airflow_migrate_provider.operators.base import FAILED_STATES, MigrationOperator
from airflow_migrate_provider.plan.model import Plan

if TYPE_CHECKING:
    from airflow_migrate_provider.core.ledger import RunIdentity


def states_failed(task_ids: list[str], states: dict[str, str]) -> list[str]:
    return [t for t in task_ids if states.get(t) in FAILED_STATES]


class MigrationOutcomeOperator(MigrationOperator):
    """The run's last word: logs the summary table, releases the run lock, and fails the run when any
    phase failed, even if the rollback succeeded (so a rolled-back migration never shows as success)."""

    stops_with_a_local_run = False  # a stopped local run still reports and releases its lock

    def __init__(self, *, watched_task_ids: list[str], rollback_task_id: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.watched_task_ids = list(watched_task_ids)
        self.rollback_task_id = rollback_task_id

    def run_migration(self, context: Context) -> dict[str, Any]:
        plan, who = self.plan, self.who(context)
        states = self.watched_states(context, [*self.watched_task_ids, self.rollback_task_id])
        failed = states_failed(self.watched_task_ids, states)
        if not failed:
            self._after_success(context)
        try:
            self._summarize_and_release(plan, who, states)
        except MigrateError as exc:  # e.g. the target is unreachable: still report the run's outcome
            self.log.warning("could not read the ledger or release the run lock: %s", exc)
        if failed:
            rollback_state = states.get(self.rollback_task_id, "unknown")
            raise AirflowFailException(
                f"migration '{plan.id}' failed in {failed}; rollback task state: {rollback_state}. "
                f"See the failed task's log for the cause and the rollback task's log for what was reverted."
            )
        return {"result": "success", "steps": len(plan.steps)}

    def _after_success(self, context: Context) -> None:
        """The run can no longer roll back: steps drop what only a rollback needed. A failure here leaves the
        migration applied; it is logged with what to drop by hand, and the run still succeeds."""
        try:
            with self.runner(context) as runner:
                for line in runner.after_success():
                    self.log.info("after success: %s", line)
        except (MigrateError, SQLAlchemyError) as exc:
            self.log.error("the migration succeeded, but cleaning up after it failed: %s. What a rollback would have "
                           "needed may remain on the new table: triggers named am_cap_* and a table am_chg_* (see "
                           "the cutover step's ledger row); drop them by hand, or re-run this task", exc)

    def _summarize_and_release(self, plan: Plan, who: RunIdentity, states: dict[str, str]) -> None:
        engine, _ = self.open_target()
        try:
            from airflow_migrate_provider.core.ledger import Ledger

            ledger = Ledger(engine, plan.id)
            if ledger.exists():
                self.log.info("migration summary\n%s", run_summary_table(plan, ledger, who, states))
                if not states_failed(self.watched_task_ids, states) and plan.backup is not None:
                    from airflow_migrate_provider.core.backup.catalog import BackupCatalog

                    keep = plan.backup.keep_days_after_success
                    for backup_id in BackupCatalog(engine, plan.id).mark_run_succeeded(
                            who, keep, ledger.run_chain(who.run_key)):
                        self.log.info("backup %s: the run succeeded; %s", backup_id,
                                      f"it expires in {keep} day(s)" if keep is not None else "kept until pruned")
                if ledger.release_lock(who):
                    self.log.info("released the run lock of plan '%s'", plan.id)
        except SQLAlchemyError as exc:
            raise ConnectionUnavailable(f"target database error: {exc.__class__.__name__}") from exc
        finally:
            engine.dispose()
