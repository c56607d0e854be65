"""What every migration operator shares: the plan, the run identity, the target, error translation."""

from __future__ import annotations

import os
import socket
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from airflow_migrate_provider.core.summary import worst_state
from airflow_migrate_provider.errors import BackupFailed, MigrateError, db_error_line, should_retry
from airflow_migrate_provider.masking import mask_text
from airflow_migrate_provider.plan.model import Plan

if TYPE_CHECKING:
    from airflow_migrate_provider.core.context import RunContext
    from airflow_migrate_provider.core.dialects import Dialect
    from airflow_migrate_provider.core.ledger import RunIdentity
    from airflow_migrate_provider.core.steps import StepRunner

FAILED_STATES = frozenset({"failed", "upstream_failed"})


def airflow_error(exc: MigrateError | SQLAlchemyError) -> AirflowException:
    """Our failure as Airflow's, as ``errors.should_retry`` decides (DESIGN rule 11): ``AirflowException``
    (Airflow retries the task) for lost connections and lock timeouts; ``AirflowFailException`` (no retry,
    straight to rollback) for everything else: verification, checksum, plan, SQL the database rejects."""
    retry = should_retry(exc)
    if isinstance(exc, MigrateError):
        message = str(exc)
    elif retry:  # a bare database error outside a step, e.g. reading or writing the ledger
        message = (f"lost the database connection outside a step: {mask_text(db_error_line(exc))}. Airflow "
                   f"retries the task; it resumes from the ledger.")
    else:
        message = (f"database error outside a step ({type(exc).__name__}), not retried because a retry would "
                   f"repeat it: {mask_text(db_error_line(exc))}. Check the ledger tables and the connection "
                   f"user's privileges on the target database.")
    return AirflowException(message) if retry else AirflowFailException(message)


class AirflowVariables:
    """Airflow Variables, for a cutover's ``variable`` switch (``core.capture.switch.VariableStore``)."""

    def get(self, key: str) -> str | None:
        from airflow.sdk import Variable

        return Variable.get(key, default=None)

    def set(self, key: str, value: str) -> None:
        from airflow.sdk import Variable

        Variable.set(key, value)

    def delete(self, key: str) -> None:
        from airflow.sdk import Variable

        Variable.delete(key)


class MigrationOperator(BaseOperator):
    """Base for the plan's operators. ``plan`` is the validated plan as a JSON-able dict."""

    ui_color = "#e8f0fe"
    changes_data = False  # True: refuses to run without the run's verified backup when the plan requires one
    stops_with_a_local_run = True  # False: the rollback and outcome, which must still run when a local run stops

    def __init__(self, *, plan: dict[str, Any], target_conn_id: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.plan_data = plan
        self.target_conn_id = target_conn_id or plan["connections"]["target"]

    @property
    def plan(self) -> Plan:
        """The validated plan; validated once per plan dict, not on every access (see validated_plan)."""
        from airflow_migrate_provider.plan.loader import validated_plan

        return validated_plan(self.plan_data)

    def who(self, context: Context) -> RunIdentity:
        from airflow_migrate_provider.core.ledger import RunIdentity

        ti = context["ti"]
        return RunIdentity(ti.dag_id, ti.run_id, int(ti.try_number or 1), socket.gethostname(), os.getpid())

    def open_target(self) -> tuple[Engine, Dialect]:
        """The engine and dialect of the target this task acts on (its ``target_conn_id``)."""
        from airflow_migrate_provider.hooks.migration import MigrationHook

        return MigrationHook(self.target_conn_id).get_engine_and_dialect()

    def open_source(self) -> Engine | None:
        """The source database's engine, or None when the plan's source is its target."""
        from airflow_migrate_provider.hooks.migration import MigrationHook

        conn_id = self.plan.connections.separate_source
        return MigrationHook(conn_id).get_engine() if conn_id else None

    @contextmanager
    def run_context(self, context: Context, **options: Any) -> Iterator[RunContext]:
        """This task's run context on its target, holding the run's lock, renewed in the background while
        the task works."""
        from airflow_migrate_provider.core.context import RunContext, report_dir
        from airflow_migrate_provider.core.ledger import Ledger
        from airflow_migrate_provider.core.lock_keeper import LockKeeper

        plan, who = self.plan, self.who(context)
        engine, dialect = self.open_target()
        source = None
        try:
            source = self.open_source()
            ledger = Ledger(engine, plan.id)
            lease = ledger.acquire_lock(who, plan.lock_ttl_seconds)
            if lease.took_over_from:
                self.log.warning("took over the expired run lock from %s", lease.took_over_from)
            with LockKeeper(ledger, lease, plan.lock_ttl_seconds) as keeper:
                if self.changes_data:
                    self.require_backup(engine, who)
                options.setdefault("variables", AirflowVariables())
                yield RunContext(engine, dialect, ledger, who, keeper, plan, source, self.target_conn_id,
                                 report_dir=report_dir(who.dag_id, who.run_id), **options)
        finally:
            engine.dispose()
            if source is not None:
                source.dispose()

    @contextmanager
    def runner(self, context: Context, **options: Any) -> Iterator[StepRunner]:
        """A step runner in this task's run context (see :meth:`run_context`)."""
        from airflow_migrate_provider.core.steps import StepRunner

        with self.run_context(context, **options) as ctx:
            yield StepRunner.of(ctx)

    def require_backup(self, engine: Engine, who: RunIdentity) -> None:
        """Never change data without this run's verified backup when the plan requires one."""
        spec = self.plan.backup
        if spec is None or not spec.required:
            return
        from airflow_migrate_provider.core.backup.catalog import BackupCatalog

        if BackupCatalog(engine, self.plan.id).verified_for_run(who) is None:
            raise BackupFailed(
                f"plan '{self.plan.id}' requires a verified backup before any step changes data, and this run "
                f"({who.run_key}) has none: task backup.create must succeed first (see its log). Nothing was "
                f"changed by this task.")

    def execute(self, context: Context) -> Any:
        if self.stops_with_a_local_run:
            from airflow_migrate_provider.run_watch import refuse_when_stopping

            refuse_when_stopping(self.task_id)
        result = self.translating_errors(lambda: self.run_migration(context))
        self.inject_fault(context)
        return result

    def inject_fault(self, context: Context) -> None:
        """Test only (``fault_injection`` in the plan): fail this task after its work is done."""
        fault = self.plan.fault_injection
        if fault is None or fault.task != self.task_id:
            return
        map_index = getattr(context["ti"], "map_index", -1)
        if fault.map_index is not None and fault.map_index != map_index:
            return
        raise AirflowFailException(f"injected fault (plan fault_injection): task {self.task_id} failed after "
                                   f"doing its work")

    def translating_errors(self, work: Any) -> Any:
        """Run ``work`` turning our errors into Airflow's (retry only what can succeed on retry); for
        ``execute`` and for the methods a deferred task resumes in."""
        try:
            return work()
        except (MigrateError, SQLAlchemyError) as exc:  # ControlFlow (a deferral) is neither: it passes through
            raise airflow_error(exc) from exc

    @abstractmethod
    def run_migration(self, context: Context) -> Any:
        """The task's work, in core calls; errors are translated by :meth:`execute`."""

    def watched_states(self, context: Context, task_ids: list[str]) -> dict[str, str]:
        """State per task id in this run; a mapped task (reported per map index as ``<task_id>_<n>``) gets
        its worst instance's state, so one failed chunk counts as the task failing."""
        ti = context["ti"]
        states = ti.get_task_states(dag_id=ti.dag_id, run_ids=[ti.run_id], task_ids=task_ids)
        by_task: dict[str, list[str]] = {}
        for key, value in states.get(ti.run_id, {}).items():
            by_task.setdefault(key if key in task_ids else key.rpartition("_")[0], []).append(str(value))
        return {task_id: worst_state(found) for task_id, found in by_task.items()}
