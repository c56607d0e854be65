"""A deferred task has no process to renew the run's lock: before deferring, the lock is extended past the time
the task resumes, so that the run keeps it while it waits (and only a dead run's lock ever expires)."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

from airflow.sdk import Context

if TYPE_CHECKING:
    from airflow_migrate_provider.operators.base import MigrationOperator


def hold_lock_while_deferred(operator: MigrationOperator, context: Context, seconds: float) -> None:
    """Keep the run's lock for ``seconds`` (the deferral) plus the plan's lock TTL (the time to resume in)."""
    from airflow_migrate_provider.core.ledger import Ledger, utcnow

    plan = operator.plan
    until = utcnow() + timedelta(seconds=max(0.0, seconds) + plan.lock_ttl_seconds)
    engine, _ = operator.open_target()
    try:
        if Ledger(engine, plan.id).hold_until(operator.who(context), until):
            operator.log.info("run lock of plan '%s' kept until %s while the task is deferred", plan.id,
                              until.isoformat(timespec="seconds"))
        else:
            operator.log.warning("this run no longer holds the lock of plan '%s'; the task resumes only to fail "
                                 "with the lock lost", plan.id)
    finally:
        engine.dispose()
