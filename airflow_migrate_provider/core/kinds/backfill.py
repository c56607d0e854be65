"""The ``backfill`` step kind: copy a large table in three phases (history by key-range chunks, recent rows,
final sync under a brief lock), resumable per batch; reverted by emptying the target it filled."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.actions import ActionPlan, CopyRange, DeleteRows
from airflow_migrate_provider.core.backfill.actions import backfill_actions, backfill_checksum
from airflow_migrate_provider.core.backfill.state import Checkpoints
from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.kinds.base import StepKind, TaskShape, TaskSpec
from airflow_migrate_provider.core.kinds.registry import register
from airflow_migrate_provider.core.ledger import BACKFILL_TABLE, HistoryRow, Ledger, checkpoints
from airflow_migrate_provider.core.step_result import StepResult
from airflow_migrate_provider.core.summary import format_table
from airflow_migrate_provider.errors import BackfillFailed, db_error_line
from airflow_migrate_provider.plan.model import BackfillStep

if TYPE_CHECKING:
    from airflow_migrate_provider.core.backfill.runner import BackfillRunner
    from airflow_migrate_provider.core.dialects import Dialect

log = logging.getLogger(__name__)


def runner_for(ctx: RunContext, step: BackfillStep) -> BackfillRunner:
    """The runner of a backfill step in this context, reading from the plan's source (else the target)."""
    from airflow_migrate_provider.core.backfill.runner import BackfillRunner  # the copy engine: not at parse time

    return BackfillRunner(ctx.plan_id, step, ctx.source_or_target, ctx.engine, ctx.ledger, ctx.who, ctx.lock,
                          sleep=ctx.sleep, can_defer=ctx.can_defer)


@register
class BackfillKind(StepKind[BackfillStep]):
    name = "backfill"
    operator = "BackfillOperator"
    model = BackfillStep

    def checksum(self, step: BackfillStep) -> str:
        return backfill_checksum(step)

    def plan_actions(self, step: BackfillStep, dialect: Dialect) -> ActionPlan:
        return backfill_actions(step)

    def touched_tables(self, step: BackfillStep, dialect: str) -> list[str]:
        return [step.target]

    def needs_apply_before(self, row: HistoryRow | None) -> bool:
        return row is None or row.status != "applied"  # a started backfill finishes its phases

    def task_shape(self, step: BackfillStep) -> TaskShape:
        """start → copy_chunk (mapped: one task per key-range chunk) → copy_recent → final_sync."""
        source = step.source.table or "(query)"
        history = next(a for a in backfill_actions(step).do if isinstance(a, CopyRange))
        tasks = [
            TaskSpec("start", "BackfillOperator", {"phase": "start"}, describe=(
                f"checks {source} → {step.target} (columns, types, unique key, empty target); takes the high-water "
                f"mark of key {', '.join(step.key)}; splits phase 1 into {step.chunks} chunk(s)",)),
            TaskSpec("copy_chunk", "BackfillOperator", {"phase": "chunk"}, mapped_over="start", map_arg="chunk",
                     map_label="label", describe=(
                f"copies one key range of {source} into {step.target}, a checkpoint per batch (mapped: one task "
                f"per chunk); each batch reads:", f"  {history.batch_query()}")),
        ]
        if step.phases.recent:
            tasks.append(TaskSpec("copy_recent", "BackfillOperator", {"phase": "recent"}, describe=(
                "copies rows inserted above the high-water mark"
                + (f" or with {step.watermark} at/after the cutoff" if step.watermark else ""),)))
        final = (f"locks {', '.join(step.source.lock_tables or [source])} against writes (max "
                 f"{step.max_lock_seconds:g} s), copies the last delta, compares row counts"
                 if step.phases.final_sync else "compares row counts up to the last high-water mark")
        tasks.append(TaskSpec("final_sync" if step.phases.final_sync else "finish", "BackfillOperator",
                              {"phase": "final"}, describe=(final,)))
        return TaskShape(tuple(tasks), group_tooltip=f"backfill {step.target}: chunks, recent rows, final sync")

    def describe(self, step: BackfillStep, dialect: Dialect | None) -> list[str]:
        return [line for task in self.task_shape(step).tasks for line in task.describe]

    def apply(self, ctx: RunContext, step: BackfillStep) -> StepResult:
        return runner_for(ctx, step).run()

    def verify(self, ctx: RunContext, step: BackfillStep) -> StepResult:
        return runner_for(ctx, step).verify()

    def revert(self, ctx: RunContext, applied: HistoryRow) -> StepResult:
        """Empty the table the backfill filled (recorded at apply time; it was empty when the backfill began)
        and reset its checkpoints, in one transaction with the ledger's revert record."""
        t0 = time.monotonic()
        table = next(a.table for a in applied.actions.undo if isinstance(a, DeleteRows))
        where = f"backfill step '{applied.step_id}'"
        row_id, started = ctx.ledger.start(applied.step_id, "revert", applied.checksum, applied.actions, ctx.who)
        schema, _, name = table.rpartition(".")
        exists = inspect(ctx.engine).has_table(name, schema=schema or None)
        try:
            with ctx.engine.begin() as conn:
                deleted = 0
                if exists:
                    quoted = ".".join(conn.dialect.identifier_preparer.quote_identifier(p) for p in table.split("."))
                    deleted = conn.exec_driver_sql(f"DELETE FROM {quoted}").rowcount
                conn.execute(checkpoints.delete().where(checkpoints.c.plan_id == ctx.plan_id,
                                                        checkpoints.c.step_id == applied.step_id))
                note = (f"deleted the {deleted:,} rows the backfill copied into '{table}'" if exists else
                        f"table '{table}' no longer exists; nothing to delete")
                ctx.ledger.finish(row_id, "reverted", started_at=started, verified=json.dumps([note]), conn=conn)
        except sa_exc.SQLAlchemyError as exc:
            ctx.ledger.finish(row_id, "failed", started_at=started, error=db_error_line(exc))
            raise BackfillFailed(f"{where}: revert failed: {db_error_line(exc)}") from exc
        log.info("%s reverted: %s", where, note)
        return StepResult(applied.step_id, "reverted", time.monotonic() - t0, 1, [note])

    def after_restore(self, conn: Connection, ledger: Ledger, step_id: str) -> None:
        Checkpoints(ledger.plan_id, step_id).clear(conn)

    def progress(self, ledger: Ledger, step: BackfillStep) -> str:
        return backfill_progress(ledger, step.id)


def backfill_progress(ledger: Ledger, step_id: str) -> str:
    """Phase-1 chunks of a backfill step with rows copied / total, from its checkpoints ('' if none)."""
    if not inspect(ledger.engine).has_table(BACKFILL_TABLE):
        return ""
    with ledger.engine.connect() as conn:
        chunks = Checkpoints(ledger.plan_id, step_id).chunks(conn)
    if not chunks:
        return ""
    rows = [[c.label(len(chunks)), c.status, f"{c.rows_copied:,}/{c.rows_total:,}",
             "-" if c.position is None else str(c.position[0] if len(c.position) == 1 else c.position)]
            for c in chunks]
    return f"\nbackfill '{step_id}' phase 1:\n" + format_table(["chunk", "status", "rows", "last key"], rows)
