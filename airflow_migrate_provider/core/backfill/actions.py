"""A backfill step as data, from the plan alone: its checksum and its typed actions (no database needed)."""

from __future__ import annotations

from airflow_migrate_provider.core.actions import Action, ActionPlan, CopyRange, DeleteRows, WriteLock
from airflow_migrate_provider.core.kinds.base import digest
from airflow_migrate_provider.plan.model import BackfillStep


def backfill_checksum(step: BackfillStep) -> str:
    """SHA-256 of what the backfill does to data: source, target, columns, key, watermark (not its tuning)."""
    return digest(step.model_dump(mode="json", include={"source", "target", "columns", "key", "watermark",
                                                        "append_only"}))


def backfill_actions(step: BackfillStep, resolved: list[tuple[str, str]] | None = None) -> ActionPlan:
    """Phase 1 by key range, phase 2 (recent rows), phase 3 under a write lock; undone by emptying the target
    (it must be empty when the backfill begins). ``resolved``: every target column and the source expression
    it is read from, once the tables were read (what the ledger records), else the plan's own ``columns``."""
    source = step.source.table or f"({' '.join((step.source.query or '').split())}) AS src"
    copy = {"source": source, "target": step.target, "key": tuple(step.key),
            "columns": tuple(resolved if resolved is not None else step.columns.items()),
            "filter": step.source.filter, "resolved": resolved is not None}
    do: list[Action] = [CopyRange(**copy, phase="history")]
    if step.phases.recent:
        do.append(CopyRange(**copy, phase="recent"))
    if step.phases.final_sync:
        do += [WriteLock(tuple(step.source.lock_tables or [step.source.table or "?"]), step.max_lock_seconds),
               CopyRange(**copy, phase="final")]
    undo = (DeleteRows(step.target, "the table was empty when the backfill began"),)
    return ActionPlan("backfill", tuple(do), undo, transactional=False, irreversible=False)
