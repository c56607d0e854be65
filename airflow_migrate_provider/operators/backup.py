from __future__ import annotations

from typing import Any

from airflow.sdk import Context

from airflow_migrate_provider.errors import MigrateError
from airflow_migrate_provider.operators.base import MigrationOperator


class BackupOperator(MigrationOperator):
    """Backs up the tables the plan touches, verifies the copy against the live tables and records the
    manifest in the ledger, before any step changes data. Prunes this plan's expired backups first."""

    ui_color = "#fff4e0"

    def run_migration(self, context: Context) -> dict[str, Any]:
        # imported here, not at DAG-parse time (sqlglot and the strategies cost ~0.15 s per parse)
        from airflow_migrate_provider.core.backup.make import make_backup
        from airflow_migrate_provider.core.backup.retention import prune_backups
        from airflow_migrate_provider.core.backup.strategies import human_size

        with self.runner(context) as runner:
            try:
                pruned = prune_backups(runner.engine, self.plan.id, expired=True)
                if pruned:
                    self.log.info("pruned %d expired backup(s): %s", len(pruned), ", ".join(b.id for b in pruned))
            except MigrateError as exc:  # retention must never stop a migration's own backup
                self.log.warning("could not prune expired backups: %s", exc)
            backup = make_backup(runner.engine, runner.dialect, self.plan, runner.who)
        rows = sum(t.rows for t in backup.tables)
        return {"backup_id": backup.id, "strategy": backup.strategy, "tables": [t.table for t in backup.tables],
                "rows": rows, "size": human_size(backup.size_bytes), "location": backup.location}
