"""Restore where DDL commits on its own (MySQL/MariaDB): a failure never leaves a table half restored.

1. Stage: each table to rebuild is created from its backed-up definition under a staging name and filled (its
   AUTO_INCREMENT continued); the live tables are untouched, a failure drops the staging tables.
2. Check, in one transaction: the rows of the tables whose definition matches are synchronised, every foreign key
   the restored tables must hold is checked by query (the session has the database's checks off), the staged and
   synchronised tables are compared with the manifest. Any failure rolls the transaction back and drops the
   staging tables: nothing changed.
3. Swap: the transaction commits, then one atomic RENAME TABLE parks the old tables (and those the backup lacks)
   and puts the staged ones in their place.
4. Finish: other tables' foreign keys that followed the parked table are pointed back at the restored one, the
   parked tables dropped, the restored tables' own foreign keys and triggers added (no rows are checked again).
   A failure here leaves each table either restored or as it was; running the restore again completes it.
"""

from __future__ import annotations

import logging

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.backup.catalog import Backup, TableManifest
from airflow_migrate_provider.core.backup.strategy import Strategy
from airflow_migrate_provider.core.backup.sync import TableState, compare, set_action, synchronise
from airflow_migrate_provider.core.backup.tables import fingerprint, quote_table, split_name, table_exists
from airflow_migrate_provider.core.dialects import Dialect
from airflow_migrate_provider.core.dialects.types import RawForeignKey
from airflow_migrate_provider.errors import RestoreFailed, db_error_line

log = logging.getLogger(__name__)
STAGE_PREFIX = "airflow_migrate_rst_"
PARK_PREFIX = "airflow_migrate_old_"
_NO_PARAMS = {"no_parameters": True}


def restore_staged(conn: Connection, dialect: Dialect, strategy: Strategy, backup: Backup,
                   todo: list[TableState]) -> list[TableState]:
    """Restore ``todo`` (states from ``compare``) in the four steps above; returns their states afterwards."""
    manifests = {m.table: m for m in backup.tables}
    drop = [manifests[s.table] for s in todo if not manifests[s.table].present]
    rebuild = [manifests[s.table] for s in todo if manifests[s.table].present and not s.structure_equal]
    sync = [manifests[s.table] for s in todo if manifests[s.table].present and s.structure_equal]
    conn.commit()  # the comparison's reads
    with strategy.relations(conn, backup, rebuild + sync) as sources:
        staged = _stage(conn, dialect, rebuild, sources)
        try:
            synchronise(conn, dialect, sync, sources, {quote_table(conn, m.table) for m in [*drop, *rebuild, *sync]},
                        todo)
            _check_foreign_keys(conn, dialect, drop, rebuild, sync, staged)
            _check_staged(conn, backup, rebuild, staged)
            _check_synchronised(conn, backup, sync)
            conn.commit()
        except BaseException:
            conn.rollback()
            _drop_quietly(conn, list(staged.values()))
            raise
    parked = _swap(conn, dialect, rebuild, drop, staged)
    for manifest in rebuild:
        set_action(todo, manifest.table, "rebuilt")
    for manifest in drop:
        set_action(todo, manifest.table, "dropped")
    _finish(conn, dialect, backup, rebuild, parked)
    return compare(conn, backup, only={s.table for s in todo})


def _beside(table: str, name: str) -> str:
    """``name`` in the schema of ``table``."""
    schema, _ = split_name(table)
    return f"{schema}.{name}" if schema else name


def _sibling(conn: Connection, table: str, name: str) -> str:
    """``name`` in the schema of ``table``, quoted."""
    return quote_table(conn, _beside(table, name))


def _stage(conn: Connection, dialect: Dialect, rebuild: list[TableManifest], sources: dict[str, str]
           ) -> dict[str, str]:
    """Each table to rebuild, created from its definition under a staging name and filled: table → staged."""
    staged: dict[str, str] = {}
    try:
        for index, manifest in enumerate(rebuild):
            definition = manifest.table_definition
            qt, stage = quote_table(conn, manifest.table), _sibling(conn, manifest.table, f"{STAGE_PREFIX}{index}")
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {stage}")  # left by a restore that died
            staged[manifest.table] = stage
            state = dialect.before_rebuild(conn, manifest.table, definition, table_exists(conn, manifest.table), [])
            for ddl in definition.create:
                conn.exec_driver_sql(_retarget(ddl, qt, stage) or ddl, execution_options=_NO_PARAMS)
            prep = conn.dialect.identifier_preparer
            cols = ", ".join(prep.quote_identifier(c) for c in definition.insertable)
            conn.exec_driver_sql(f"INSERT INTO {stage} ({cols}) SELECT {cols} FROM {sources[manifest.table]}",
                                 execution_options=_NO_PARAMS)
            dialect.after_fill(conn, _beside(manifest.table, f"{STAGE_PREFIX}{index}"), state)
            for ddl in definition.indexes:  # indexes now, over the rows; triggers once the table has its name
                if _retarget(ddl, qt, stage):
                    conn.exec_driver_sql(_retarget(ddl, qt, stage), execution_options=_NO_PARAMS)
            conn.commit()
            log.info("restore: %s staged as %s from its backed-up definition and rows", manifest.table, stage)
    except BaseException as exc:
        conn.rollback()
        _drop_quietly(conn, list(staged.values()))
        if isinstance(exc, sa_exc.SQLAlchemyError):
            raise RestoreFailed(f"rebuilding {', '.join(m.table for m in rebuild)} from the backup failed before "
                                f"any live table was touched (nothing changed): {db_error_line(exc)}") from exc
        raise
    return staged


def _retarget(ddl: str, qt: str, other: str) -> str:
    """``CREATE TABLE``/``ALTER TABLE`` of ``qt`` made one of ``other``; "" for other statements (triggers)."""
    for head in ("CREATE TABLE", "ALTER TABLE"):
        if ddl.startswith(f"{head} {qt} "):
            return f"{head} {other} {ddl[len(head) + len(qt) + 2:]}"
    return ""


def _check_foreign_keys(conn: Connection, dialect: Dialect, drop: list[TableManifest], rebuild: list[TableManifest],
                        sync: list[TableManifest], staged: dict[str, str]) -> None:
    """Every foreign key from or to a restored table holds for the rows it will have (staged tables for rebuilt
    ones): MATCH SIMPLE, a key with a NULL column references nothing."""
    links = dialect.foreign_key_links(conn, {m.table for m in [*rebuild, *sync]}, {m.table for m in drop},
                                      {m.table: m.table_definition for m in rebuild})
    relation = {split_name(table)[1]: stage for table, stage in staged.items()}
    problems = []
    for child, key in links:
        found = _orphans(conn, relation.get(child) or quote_table(conn, child),
                         relation.get(split_name(key.referred_table)[1]) or quote_table(conn, key.referred_table), key)
        if found:
            problems.append(f"{found} row(s) of {child} → {key.referred_table}")
    if problems:
        raise RestoreFailed(f"the restored tables would break foreign keys ({'; '.join(problems)}); the restore was "
                            f"rolled back, nothing changed. Restore the referencing tables too (add them to "
                            f"backup.tables).")


def _orphans(conn: Connection, child: str, parent: str, key: RawForeignKey) -> int:
    prep = conn.dialect.identifier_preparer
    present = " AND ".join(f"c.{prep.quote_identifier(c)} IS NOT NULL" for c in key.columns)
    match = " AND ".join(f"p.{prep.quote_identifier(r)} = c.{prep.quote_identifier(c)}"
                         for c, r in zip(key.columns, key.referred_columns, strict=True))
    return int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {child} AS c WHERE {present} AND NOT EXISTS "
                                    f"(SELECT 1 FROM {parent} AS p WHERE {match})", execution_options=_NO_PARAMS
                                    ).scalar() or 0)


def _check_staged(conn: Connection, backup: Backup, rebuild: list[TableManifest], staged: dict[str, str]) -> None:
    for manifest in rebuild:
        now = fingerprint(conn, staged[manifest.table], manifest.table_definition.insertable)
        if now != manifest.fingerprint:
            raise RestoreFailed(f"restoring from backup {backup.id} did not reproduce {manifest.table} (expected "
                                f"{manifest.fingerprint}, got {now}); the restore was rolled back, nothing changed")


def _check_synchronised(conn: Connection, backup: Backup, sync: list[TableManifest]) -> None:
    wrong = [s for s in compare(conn, backup, only={m.table for m in sync}) if not s.equal]
    if wrong:
        detail = "; ".join(f"{s.table}: expected {s.expected}, got {s.actual}" for s in wrong)
        raise RestoreFailed(f"restoring from backup {backup.id} did not reproduce the manifest ({detail}); the "
                            f"restore was rolled back, nothing changed")


def _swap(conn: Connection, dialect: Dialect, rebuild: list[TableManifest], drop: list[TableManifest],
          staged: dict[str, str]) -> dict[str, str]:
    """One atomic rename: live tables parked, staged tables in their place. Returns table → parked name."""
    parked: dict[str, str] = {}
    renames: list[tuple[str, str]] = []
    for index, manifest in enumerate([*rebuild, *drop]):
        if table_exists(conn, manifest.table):
            parked[manifest.table] = _sibling(conn, manifest.table, f"{PARK_PREFIX}{index}")
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {parked[manifest.table]}")  # left by a restore that died
            renames.append((quote_table(conn, manifest.table), parked[manifest.table]))
        if manifest.table in staged:
            renames.append((staged[manifest.table], quote_table(conn, manifest.table)))
    try:
        dialect.rename_tables(conn, renames)
        conn.commit()
    except sa_exc.SQLAlchemyError as exc:
        conn.rollback()
        _drop_quietly(conn, list(staged.values()))
        raise RestoreFailed(f"swapping the restored tables in failed (the rename is atomic: nothing changed, the "
                            f"rows of tables whose definition matched were restored): {db_error_line(exc)}") from exc
    log.info("restore: %s in place (old tables parked)", ", ".join(m.table for m in [*rebuild, *drop]) or "nothing")
    return parked


def _finish(conn: Connection, dialect: Dialect, backup: Backup, rebuild: list[TableManifest],
            parked: dict[str, str]) -> None:
    """Move other tables' keys back from the parked tables, drop them, add the restored tables' own keys and
    triggers."""
    parked_names = {split_name(p.strip('`"'))[1] for p in parked.values()}
    try:
        for manifest in rebuild:
            if manifest.table in parked:
                dialect.move_foreign_keys(conn, parked[manifest.table], quote_table(conn, manifest.table),
                                          parked_names)
        for name in parked.values():
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
        for manifest in rebuild:
            qt = quote_table(conn, manifest.table)
            later = [d for d in manifest.table_definition.indexes if not _retarget(d, qt, qt)]
            for ddl in [*manifest.table_definition.foreign_keys, *later]:
                conn.exec_driver_sql(ddl, execution_options=_NO_PARAMS)
            dialect.after_constraints(conn, manifest.table, manifest.table_definition)
        conn.commit()
    except sa_exc.SQLAlchemyError as exc:
        conn.rollback()
        raise RestoreFailed(f"the tables of backup {backup.id} were restored, but re-attaching foreign keys and "
                            f"triggers failed: {db_error_line(exc)}. Fix the cause and run the restore again (it "
                            f"completes what is missing); tables named {PARK_PREFIX}* hold the replaced "
                            f"versions.") from exc


def _drop_quietly(conn: Connection, tables: list[str]) -> None:
    for name in tables:
        try:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
            conn.commit()
        except sa_exc.SQLAlchemyError:
            log.exception("restore: could not drop the staging table %s; drop it by hand", name)
