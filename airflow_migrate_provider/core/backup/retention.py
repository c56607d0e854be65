"""Backup retention: list a plan's backups, and prune the ones that expired (``keep_days_after_success``),
that are older than some days, or that are named, removing their copies and marking them pruned in the
catalog (the manifest row stays, as the record of what was backed up).

A backup whose run holds the plan's lock is never pruned: that run's rollback may still restore from it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.backup.catalog import Backup, BackupCatalog
from airflow_migrate_provider.core.backup.strategies import human_size, strategy_named
from airflow_migrate_provider.core.ledger import BACKUPS_TABLE, Ledger, as_utc, utcnow
from airflow_migrate_provider.core.summary import format_table
from airflow_migrate_provider.errors import BackupFailed, db_error_line
from airflow_migrate_provider.masking import mask_text

log = logging.getLogger(__name__)
PRUNABLE = ("verified", "failed")


def backups_table(backups: list[Backup]) -> str:
    """One line per backup: id, status, strategy, when (UTC), which run, what it holds, where."""
    rows = []
    for b in backups:
        rows.append([
            b.id, b.status, b.strategy, f"{b.created_at:%Y-%m-%d %H:%M:%S}", b.run_key, str(len(b.tables)),
            f"{sum(t.rows for t in b.tables):,}", "-" if b.size_bytes is None else human_size(b.size_bytes),
            f"{b.expires_at:%Y-%m-%d %H:%M:%S}" if b.expires_at else "-", b.location,
        ])
    return format_table(["id", "status", "strategy", "created (UTC)", "run", "tables", "rows", "size",
                         "expires (UTC)", "location"], rows)


def plan_backups(engine: Engine, plan_id: str) -> list[Backup]:
    """Every backup of the plan, newest first; none when the target has no backups catalog yet."""
    if not inspect(engine).has_table(BACKUPS_TABLE):
        return []
    return BackupCatalog(engine, plan_id).all()


@dataclass
class PruneSelection:
    """What a prune would remove, and what it keeps because the backup's run holds the plan's lock."""

    prune: list[Backup] = field(default_factory=list)
    held: list[Backup] = field(default_factory=list)
    lock_holder: str | None = None


def lock_holding_run(engine: Engine, plan_id: str) -> tuple[str, str] | None:
    """(dag/run, description) of the run holding the plan's lock now (an expired lock holds nothing). Backups of
    the dead runs it took over are its own too (``Ledger.run_chain``)."""
    ledger = Ledger(engine, plan_id)
    if not ledger.exists():
        return None
    holder = ledger.lock_holder()
    if holder is None or as_utc(holder["expires_at"]) <= utcnow():
        return None
    until = as_utc(holder["expires_at"])
    return holder["holder_run"], f"{holder['holder']} (lock valid until {until:%Y-%m-%d %H:%M:%S} UTC)"


def select_for_pruning(engine: Engine, plan_id: str, *, backup_ids: list[str] | None = None,
                       older_than_days: float | None = None, expired: bool = True,
                       now: datetime | None = None) -> PruneSelection:
    """The backups :func:`prune_backups` would remove. A backup named in ``backup_ids`` that cannot be
    pruned raises ``BackupFailed``; one selected by age or expiry whose run holds the lock is kept."""
    if older_than_days is not None and older_than_days < 0:
        raise BackupFailed(f"--older-than must be 0 or more days, not {older_than_days:g}")
    now = as_utc(now) if now is not None else utcnow()
    backups = plan_backups(engine, plan_id)
    by_id = {b.id: b for b in backups}
    named: set[str] = set()
    for backup_id in dict.fromkeys(backup_ids or []):
        if backup_id not in by_id:
            known = ", ".join(b.id for b in backups[:10]) or "none"
            raise BackupFailed(f"plan '{plan_id}' has no backup '{backup_id}' (its backups: {known}); see "
                               f"`airflow-migrate backups list`")
        backup = by_id[backup_id]
        if backup.status == "pruned":
            log.info("backup %s is already pruned; skipping it", backup.id)
        elif backup.status not in PRUNABLE:
            raise BackupFailed(f"backup {backup.id} is still {backup.status} (by run {backup.run_key}); only "
                               f"verified or failed backups can be pruned. Nothing was pruned.")
        else:
            named.add(backup.id)
    cutoff = now - timedelta(days=older_than_days) if older_than_days is not None else None
    chosen = set(named)
    for b in backups:
        if b.status not in PRUNABLE:
            continue
        if (expired and b.expires_at is not None and b.expires_at <= now) or (
                cutoff is not None and b.created_at < cutoff):
            chosen.add(b.id)
    selection = PruneSelection()
    holding = lock_holding_run(engine, plan_id)
    for b in backups:  # catalog order: newest first
        if b.id not in chosen:
            continue
        if holding is not None and b.run_key in Ledger(engine, plan_id).run_chain(holding[0]):
            selection.lock_holder = holding[1]
            if b.id in named:
                raise BackupFailed(
                    f"backup {b.id} was made by run {b.run_key}, which holds the lock of plan '{plan_id}' now: "
                    f"{holding[1]}. Its rollback may still restore from this backup, so it is not pruned "
                    f"(nothing was). Prune it after that run has finished.")
            selection.held.append(b)
            log.warning("keeping backup %s: its run %s holds the plan's lock now, and its rollback may still "
                        "need it", b.id, b.run_key)
            continue
        selection.prune.append(b)
    return selection


def removed_what(backup: Backup) -> str:
    """What pruning ``backup`` removes, in words."""
    if backup.strategy == "snapshot":
        names = [t.stored_as for t in backup.tables if t.present and t.stored_as]
        return f"snapshot table(s) {', '.join(names)}" if names else "no snapshot table (none was kept)"
    return f"file {backup.location}"


def prune_backups(engine: Engine, plan_id: str, *, backup_ids: list[str] | None = None,
                  older_than_days: float | None = None, expired: bool = True, dry_run: bool = False,
                  now: datetime | None = None) -> list[Backup]:
    """Remove the copies of the plan's verified or failed backups that expired (``expires_at`` passed,
    with ``expired``), were made more than ``older_than_days`` ago, or are named in ``backup_ids``, and
    mark them pruned. Returns them (with ``dry_run``: what would be pruned; nothing is removed).

    Raises ``BackupFailed`` for an unknown id or a named backup whose run holds the plan's lock (nothing is
    pruned then); a backup selected by age or expiry whose run holds the lock is kept, with a warning.
    """
    selection = select_for_pruning(engine, plan_id, backup_ids=backup_ids, older_than_days=older_than_days,
                                   expired=expired, now=now)
    return prune_selected(engine, plan_id, selection, dry_run=dry_run)


def prune_selected(engine: Engine, plan_id: str, selection: PruneSelection, *, dry_run: bool = False
                   ) -> list[Backup]:
    """Prune what :func:`select_for_pruning` chose: drop each copy, then mark the backup pruned. Returns
    the backups pruned, with status ``pruned`` (with ``dry_run``: as they are, nothing removed)."""
    catalog = BackupCatalog(engine, plan_id)
    pruned: list[Backup] = []
    for backup in selection.prune:
        size = "an unknown amount" if backup.size_bytes is None else human_size(backup.size_bytes)
        if dry_run:
            log.info("would prune backup %s (%s, %s): would remove %s, freeing %s", backup.id, backup.status,
                     backup.run_key, removed_what(backup), size)
            pruned.append(backup)
            continue
        holding = lock_holding_run(engine, plan_id)  # again: a run may have taken the lock since
        if holding is not None and backup.run_key in Ledger(engine, plan_id).run_chain(holding[0]):
            log.warning("keeping backup %s: its run %s took the plan's lock meanwhile", backup.id, backup.run_key)
            selection.held.append(backup)
            selection.lock_holder = holding[1]
            continue
        strategy = strategy_named(backup.strategy, None)
        try:
            present = strategy.exists(engine, backup)
            strategy.drop(engine, backup)
        except Exception as exc:
            done = ", ".join(b.id for b in pruned) or "none"
            raise BackupFailed(f"pruning backup {backup.id} failed while removing {removed_what(backup)}: "
                               f"{mask_text(db_error_line(exc))}. Backups pruned before it: {done}.") from exc
        catalog.mark_pruned(backup.id)
        if present:
            log.info("pruned backup %s (%s, %s): removed %s, freed %s", backup.id, backup.status,
                     backup.run_key, removed_what(backup), size)
        else:
            log.info("pruned backup %s (%s, %s): %s was already gone, nothing freed", backup.id,
                     backup.status, backup.run_key, removed_what(backup))
        pruned.append(replace(backup, status="pruned"))
    return pruned


__all__ = ["PruneSelection", "backups_table", "lock_holding_run", "plan_backups", "prune_backups",
           "prune_selected", "removed_what", "select_for_pruning"]
