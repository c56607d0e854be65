from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from airflow.sdk import Context
from airflow.sdk.exceptions import AirflowSkipException

from airflow_migrate_provider.operators.base import FAILED_STATES, MigrationOperator


class RollbackOperator(MigrationOperator):
    """Reverts, newest first, the steps this run applied, when any watched phase task failed.

    Used as a teardown: it always gets to run, it skips itself when nothing failed, and (being a
    teardown) its success does not turn a failed run into a successful one.
    """

    stops_with_a_local_run = False  # a stopped local run still rolls back

    def __init__(self, *, watched_task_ids: list[str], **kwargs: Any):
        super().__init__(**kwargs)
        self.watched_task_ids = list(watched_task_ids)

    def run_migration(self, context: Context) -> dict[str, Any]:
        from airflow_migrate_provider.core.context import report_dir
        from airflow_migrate_provider.core.rollback import rollback_run  # restore machinery: not at parse time

        states = self.watched_states(context, self.watched_task_ids)
        failed = sorted(t for t, s in states.items() if s in FAILED_STATES)
        if not failed:
            raise AirflowSkipException("every phase succeeded; nothing to roll back")
        self.log.warning("phases failed or blocked: %s; rolling back what this run applied", failed)
        spec = self.plan.backup
        with self.runner(context) as runner:
            backup = None
            if spec is not None:
                from airflow_migrate_provider.core.rollback import backup_before

                backup = backup_before(runner.ledger, runner.who)
                if backup is None:
                    self.log.warning("no verified backup of the state before this run (or before the dead runs "
                                     "it took over); reverting with down SQL only")
            report = rollback_run(runner.ledger, runner, runner.who, backup,
                                  restore_on_difference=spec.restore_on_difference if spec else True)
        summary = {"reverted": [r.step_id for r in report.reverted], "stopped_at": report.stopped_at,
                   "left_applied": report.left_applied, "revert_failed": report.revert_failed,
                   "backup": backup.id if backup else None, "restored_from": report.restored_from,
                   "tables_equal_to_before_run": {t.table: t.equal for t in report.tables}}
        path = report_dir(runner.who.dag_id, runner.who.run_id) / "rollback.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**summary, "tables": [asdict(t) for t in report.tables]}, indent=2))
        self.log.info("rollback report: %s", path)
        return summary
