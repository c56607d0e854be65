from __future__ import annotations

from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowSkipException

from airflow_migrate_provider.core.rollback import rollback_run
from airflow_migrate_provider.operators.base import FAILED_STATES, MigrationOperator


class RollbackOperator(MigrationOperator):
    """Reverts, newest first, the steps this run applied, when any watched phase task failed.

    Used as a teardown: it always gets to run, it skips itself when nothing failed, and (being a
    teardown) its success does not turn a failed run into a successful one.
    """

    def __init__(self, *, watched_task_ids: list[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.watched_task_ids = list(watched_task_ids)

    def run_migration(self, context: Context) -> dict[str, Any]:
        states = self.watched_states(context, self.watched_task_ids)
        failed = sorted(t for t, s in states.items() if s in FAILED_STATES)
        if not failed:
            raise AirflowSkipException("every phase succeeded; nothing to roll back")
        self.log.warning("phases failed or blocked: %s; rolling back what this run applied", failed)
        with self.runner(context) as runner:
            report = rollback_run(runner.ledger, runner, runner.who)
        return {"reverted": [r.step_id for r in report.reverted], "stopped_at": report.stopped_at,
                "left_applied": report.left_applied}

    def describe(self, dialect: str = "postgresql") -> list[str]:
        return ["teardown: runs only when a phase failed; reverts, newest first, exactly the steps this run "
                "applied (from the ledger), each with the down SQL recorded when it was applied, then its "
                "verify_down; stops at an irreversible step"]
