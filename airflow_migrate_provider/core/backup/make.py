"""Make a plan's backup: resolve the tables, check the backup can be made before copying anything, copy,
verify the copy against the live tables, and record the manifest in the ledger."""

from __future__ import annotations

import logging
import time

from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.backup.catalog import Backup, BackupCatalog, TableManifest, new_backup_id
from airflow_migrate_provider.core.backup.strategies import Strategy, human_size, strategy_named
from airflow_migrate_provider.core.backup.tables import TableDefinition, definition, table_exists
from airflow_migrate_provider.core.backup.touched import touched_tables
from airflow_migrate_provider.core.dialects import Dialect
from airflow_migrate_provider.core.ledger import RunIdentity, utcnow
from airflow_migrate_provider.errors import BackupFailed, MigrateError, db_error_line
from airflow_migrate_provider.masking import mask_text
from airflow_migrate_provider.plan.model import BackupSpec, Plan

log = logging.getLogger(__name__)


def backup_tables(plan: Plan, dialect: str) -> list[str]:
    """The tables the plan's backup covers: its explicit list, or every table its steps write."""
    spec = _spec(plan)
    if spec.tables == "auto":
        return list(touched_tables(plan, dialect).tables)
    return list(spec.tables)


def _spec(plan: Plan) -> BackupSpec:
    if plan.backup is None:
        raise BackupFailed(f"plan '{plan.id}' declares no `backup`")
    return plan.backup


def make_backup(engine: Engine, dialect: Dialect, plan: Plan, who: RunIdentity) -> Backup:
    """Back up the plan's tables for ``who``'s run, verified, or raise ``BackupFailed`` (nothing changed).

    A run that already has a verified backup keeps it: the backup is of the state before the run, and a
    retried task must not replace it with a state some step of the run already changed.
    """
    spec = _spec(plan)
    catalog = BackupCatalog(engine, plan.id)
    catalog.ensure()
    existing = catalog.verified_for_run(who)
    if existing is not None:
        log.info("backup %s of this run is already made and verified; keeping it", existing.id)
        return existing
    tables = backup_tables(plan, dialect.name)
    with engine.connect() as conn:
        present = [t for t in tables if table_exists(conn, t)]
        missing = [t for t in tables if t not in present]
        if missing and spec.tables != "auto":
            raise BackupFailed(f"backup.tables names table(s) that do not exist: {', '.join(missing)}. Fix the "
                               f"names in the plan (existing tables only); nothing was changed.")
        definitions: dict[str, TableDefinition] = {t: definition(conn, t) for t in present}
    strategy = strategy_named(spec.strategy, spec.location)
    strategy.check(engine, present)
    backup_id = new_backup_id(utcnow())
    location = strategy.describe_location(backup_id)
    log.info("backup %s (%s) of %s into %s; tables a step creates, recorded as absent: %s", backup_id,
             spec.strategy, ", ".join(present) or "no existing table", location, ", ".join(missing) or "none")
    catalog.begin(backup_id, spec.strategy, location, who)
    started = time.monotonic()
    try:
        manifests, size = _copy_and_verify(engine, dialect, strategy, backup_id, definitions, spec.lock_writes)
    except BaseException as exc:
        wrap = isinstance(exc, Exception) and not isinstance(exc, MigrateError)  # not a kill: keep it as it is
        failure = BackupFailed(f"backup {backup_id} failed: {mask_text(db_error_line(exc))}") if wrap else exc
        catalog.finish(backup_id, "failed", error=str(failure), duration_s=time.monotonic() - started)
        try:
            strategy.drop(engine, _partial(catalog.get(backup_id), backup_id, definitions))
        except Exception:
            log.exception("could not remove the partial backup %s", backup_id)
        if failure is exc:
            raise
        raise failure from exc
    manifests += [TableManifest(t, False) for t in missing]
    duration = time.monotonic() - started
    catalog.finish(backup_id, "verified", tables=manifests, size_bytes=size, duration_s=duration)
    rows = sum(m.rows for m in manifests)
    log.info("backup %s verified: %d table(s), %d rows, %s, in %.1f s, at %s", backup_id, len(present), rows,
             human_size(size), duration, location)
    return catalog.get(backup_id)


def _partial(backup: Backup, backup_id: str, definitions: dict[str, TableDefinition]) -> Backup:
    """A failed backup as far as it may have got (its file, its snapshot tables), to remove it."""
    from airflow_migrate_provider.core.backup.strategies import SnapshotStrategy

    backup.tables = [TableManifest(t, True, stored_as=SnapshotStrategy.snapshot_name(backup_id, i, t))
                     for i, t in enumerate(definitions)]
    return backup


def _copy_and_verify(engine: Engine, dialect: Dialect, strategy: Strategy, backup_id: str,
                     definitions: dict[str, TableDefinition], lock_writes: bool
                     ) -> tuple[list[TableManifest], int | None]:
    copy = strategy.create(engine, dialect, backup_id, definitions, lock_writes)
    changed = [t for t in definitions if copy.live[t] != copy.copied[t]]
    if changed:
        detail = "; ".join(f"{t}: live {copy.live[t]}, copy {copy.copied[t]}" for t in changed)
        raise BackupFailed(
            f"backup {backup_id} could not be verified: {detail}. The table changed while it was being backed "
            f"up (or the copy is damaged). Stop writes to it during the backup, or set `backup.lock_writes: "
            f"true` to block them for the copy; nothing was changed.")
    manifests = []
    for table, table_def in definitions.items():
        fp = copy.copied[table]
        manifests.append(TableManifest(table, True, fp.rows, fp.checksum, table_def.to_json(),
                                       copy.stored_as[table], fp.segments, fp.quick))
        log.info("backup: %s verified: %s", table, fp)
    return manifests, copy.size_bytes
