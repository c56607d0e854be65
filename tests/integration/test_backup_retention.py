"""Backup retention against real SQLite, PostgreSQL and MariaDB: which backups a prune selects (expired, older than,
named), that it really removes their copies (snapshot tables, backup files) and marks them pruned, and that
it never prunes the backup of the run holding the plan's lock."""

from __future__ import annotations

import logging
import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text, update

from airflow_migrate_provider.core.backup.catalog import Backup, BackupCatalog
from airflow_migrate_provider.core.backup.make import make_backup
from airflow_migrate_provider.core.backup.retention import (
    backups_table,
    plan_backups,
    prune_backups,
    select_for_pruning,
)
from airflow_migrate_provider.core.backup.strategies import human_size
from airflow_migrate_provider.core.backup.tables import table_exists
from airflow_migrate_provider.core.dialects import dialect_named
from airflow_migrate_provider.core.ledger import BACKUPS_TABLE, Ledger, RunIdentity, backups, utcnow
from airflow_migrate_provider.errors import BackupFailed
from airflow_migrate_provider.plan.loader import parse_plan
from airflow_migrate_provider.plan.model import Plan

PLAN_ID = "retention_plan"
RETENTION_LOG = "airflow_migrate_provider.core.backup.retention"


def backup_plan(strategy: str = "snapshot", location: Path | None = None, keep_days: int | None = 1) -> Plan:
    spec = f"strategy: {strategy}, tables: [accounts, notes]"
    spec += f", location: '{location}'" if location else ""
    spec += f", keep_days_after_success: {keep_days}" if keep_days is not None else ""
    return parse_plan(f"""
id: {PLAN_ID}
connections: {{target: app_db}}
backup: {{{spec}}}
steps:
  - id: bump
    up: UPDATE accounts SET balance = balance + 1;
    down: UPDATE accounts SET balance = balance - 1;
    verify: SELECT count(*) = 3 FROM accounts
""")


def who(run: str) -> RunIdentity:
    return RunIdentity(PLAN_ID, run, host="it-host", pid=4242)


@pytest.fixture
def seeded(engine):
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner VARCHAR(20), balance INTEGER)"))
        conn.execute(text("INSERT INTO accounts VALUES (1, 'ann', 10), (2, 'bob', 20), (3, 'cy', 30)"))
        conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body VARCHAR(50))"))
        conn.execute(text("INSERT INTO notes VALUES (1, 'hello')"))
    return engine


def make(engine, run: str, plan: Plan | None = None) -> Backup:
    return make_backup(engine, dialect_named(engine.dialect.name), plan or backup_plan(), who(run))


def copies_exist(engine, backup: Backup) -> list[bool]:
    with engine.connect() as conn:
        return [table_exists(conn, t.stored_as) for t in backup.tables]


def statuses(engine) -> dict[str, str]:
    return {b.id: b.status for b in BackupCatalog(engine, PLAN_ID).all()}


def age(engine, backup: Backup | str, days: float) -> None:
    """Make the backup look ``days`` days old."""
    backup_id = backup if isinstance(backup, str) else backup.id
    with engine.begin() as conn:
        conn.execute(update(backups).where(backups.c.id == backup_id)
                     .values(created_at=utcnow() - timedelta(days=days)))


def test_expired_backups_are_pruned_and_their_snapshot_tables_dropped(seeded):
    engine = seeded
    b1, b2, b3 = make(engine, "r1"), make(engine, "r2"), make(engine, "r3")
    catalog = BackupCatalog(engine, PLAN_ID)
    catalog.mark_run_succeeded(who("r1"), keep_days=1)
    catalog.mark_run_succeeded(who("r2"), keep_days=None)  # succeeded, but the plan keeps it until pruned
    assert copies_exist(engine, b1) == [True, True]

    assert prune_backups(engine, PLAN_ID) == []  # r1's expires tomorrow
    pruned = prune_backups(engine, PLAN_ID, now=utcnow() + timedelta(days=2))

    assert [b.id for b in pruned] == [b1.id]
    assert pruned[0].status == "pruned"
    assert copies_exist(engine, b1) == [False, False]
    assert copies_exist(engine, b2) == copies_exist(engine, b3) == [True, True]
    assert statuses(engine) == {b1.id: "pruned", b2.id: "verified", b3.id: "verified"}
    # the manifest row stays: what was backed up is still on record
    assert catalog.get(b1.id).table("accounts").rows == 3


def test_expired_false_leaves_expired_backups(seeded):
    engine = seeded
    b1 = make(engine, "r1")
    BackupCatalog(engine, PLAN_ID).mark_run_succeeded(who("r1"), keep_days=0)

    assert prune_backups(engine, PLAN_ID, expired=False) == []
    assert [b.id for b in prune_backups(engine, PLAN_ID)] == [b1.id]


def test_older_than_prunes_backups_made_before_the_cutoff(seeded):
    engine = seeded
    old, recent = make(engine, "r1"), make(engine, "r2")
    age(engine, old, 10)
    age(engine, recent, 3)

    pruned = prune_backups(engine, PLAN_ID, older_than_days=5)

    assert [b.id for b in pruned] == [old.id]
    assert copies_exist(engine, old) == [False, False]
    assert copies_exist(engine, recent) == [True, True]
    assert [b.id for b in prune_backups(engine, PLAN_ID, older_than_days=2.5)] == [recent.id]
    assert set(statuses(engine).values()) == {"pruned"}


def test_named_backups_are_pruned_whatever_their_age(seeded):
    engine = seeded
    b1, b2 = make(engine, "r1"), make(engine, "r2")

    pruned = prune_backups(engine, PLAN_ID, backup_ids=[b2.id])

    assert [b.id for b in pruned] == [b2.id]
    assert statuses(engine) == {b1.id: "verified", b2.id: "pruned"}
    assert copies_exist(engine, b2) == [False, False]
    assert copies_exist(engine, b1) == [True, True]


def test_unknown_id_names_the_plans_backups_and_prunes_nothing(seeded):
    engine = seeded
    b1 = make(engine, "r1")
    BackupCatalog(engine, PLAN_ID).mark_run_succeeded(who("r1"), keep_days=0)  # would be pruned

    with pytest.raises(BackupFailed) as raised:
        prune_backups(engine, PLAN_ID, backup_ids=["20000101T000000-abcdef"])

    message = str(raised.value)
    assert f"plan '{PLAN_ID}' has no backup '20000101T000000-abcdef'" in message
    assert f"its backups: {b1.id}" in message
    assert "airflow-migrate backups list" in message
    assert statuses(engine) == {b1.id: "verified"}
    assert copies_exist(engine, b1) == [True, True]


def test_dry_run_returns_the_selection_and_removes_nothing(seeded, caplog):
    engine = seeded
    b1, b2 = make(engine, "r1"), make(engine, "r2")
    BackupCatalog(engine, PLAN_ID).mark_run_succeeded(who("r1"), keep_days=0)

    with caplog.at_level(logging.INFO, logger=RETENTION_LOG):
        would = prune_backups(engine, PLAN_ID, backup_ids=[b2.id], dry_run=True)

    assert sorted(b.id for b in would) == sorted([b1.id, b2.id])
    assert {b.status for b in would} == {"verified"}
    assert statuses(engine) == {b1.id: "verified", b2.id: "verified"}
    assert copies_exist(engine, b1) == copies_exist(engine, b2) == [True, True]
    lines = [r.getMessage() for r in caplog.records if r.name == RETENTION_LOG]
    assert len(lines) == 2 and all(line.startswith("would prune backup ") for line in lines)


def test_the_backup_of_the_run_holding_the_lock_is_never_pruned(seeded, caplog):
    engine = seeded
    b1, b2 = make(engine, "r1"), make(engine, "r2")
    catalog = BackupCatalog(engine, PLAN_ID)
    catalog.mark_run_succeeded(who("r1"), keep_days=0)
    catalog.mark_run_succeeded(who("r2"), keep_days=0)
    ledger = Ledger(engine, PLAN_ID)
    ledger.acquire_lock(who("r1"), 600)  # r1 runs again (cleared) and may roll back

    with pytest.raises(BackupFailed) as raised:
        prune_backups(engine, PLAN_ID, backup_ids=[b1.id, b2.id])
    message = str(raised.value)
    assert f"backup {b1.id} was made by run {PLAN_ID}/r1, which holds the lock of plan '{PLAN_ID}'" in message
    assert "dag 'retention_plan' run 'r1' try 1 on it-host pid 4242" in message
    assert "rollback may still restore from this backup" in message
    assert statuses(engine) == {b1.id: "verified", b2.id: "verified"}  # nothing pruned, not even b2

    with caplog.at_level(logging.WARNING, logger=RETENTION_LOG):
        selection = select_for_pruning(engine, PLAN_ID)
        pruned = prune_backups(engine, PLAN_ID)  # both expired: r2's goes, r1's stays
    assert [b.id for b in selection.held] == [b1.id]
    assert "dag 'retention_plan' run 'r1'" in (selection.lock_holder or "")
    assert [b.id for b in pruned] == [b2.id]
    assert copies_exist(engine, b1) == [True, True]
    assert any(f"keeping backup {b1.id}" in r.getMessage() for r in caplog.records)

    ledger.release_lock(who("r1"))
    assert [b.id for b in prune_backups(engine, PLAN_ID)] == [b1.id]
    assert copies_exist(engine, b1) == [False, False]


def test_an_expired_lock_protects_nothing(seeded):
    engine = seeded
    b1 = make(engine, "r1")
    Ledger(engine, PLAN_ID).acquire_lock(who("r1"), -1)  # the run died; its lock lapsed

    assert [b.id for b in prune_backups(engine, PLAN_ID, backup_ids=[b1.id])] == [b1.id]


def test_already_pruned_backups_are_skipped(seeded, caplog):
    engine = seeded
    b1 = make(engine, "r1")
    BackupCatalog(engine, PLAN_ID).mark_run_succeeded(who("r1"), keep_days=0)
    assert [b.id for b in prune_backups(engine, PLAN_ID, backup_ids=[b1.id])] == [b1.id]

    with caplog.at_level(logging.INFO, logger=RETENTION_LOG):
        again = prune_backups(engine, PLAN_ID, backup_ids=[b1.id], older_than_days=0,
                              now=utcnow() + timedelta(days=30))

    assert again == []
    assert f"backup {b1.id} is already pruned; skipping it" in caplog.text
    assert statuses(engine) == {b1.id: "pruned"}


def test_failed_backups_are_pruned_and_backups_being_made_are_not(seeded):
    engine = seeded
    catalog = BackupCatalog(engine, PLAN_ID)
    catalog.ensure()
    catalog.begin("20200101T000000-fa11ed", "snapshot", "snapshot tables in the target database", who("r1"))
    catalog.finish("20200101T000000-fa11ed", "failed", error="backup failed: table changed")
    catalog.begin("20200101T000001-c0ffee", "snapshot", "snapshot tables in the target database", who("r2"))
    age(engine, "20200101T000000-fa11ed", 3)
    age(engine, "20200101T000001-c0ffee", 3)  # a worker died while making it

    assert [b.id for b in prune_backups(engine, PLAN_ID, older_than_days=1)] == ["20200101T000000-fa11ed"]
    assert statuses(engine) == {"20200101T000000-fa11ed": "pruned", "20200101T000001-c0ffee": "creating"}
    with pytest.raises(BackupFailed, match=r"backup 20200101T000001-c0ffee is still creating .* only verified "
                                           r"or failed backups can be pruned"):
        prune_backups(engine, PLAN_ID, backup_ids=["20200101T000001-c0ffee"])


def test_a_target_without_a_catalog_has_nothing_to_prune(engine):
    assert plan_backups(engine, PLAN_ID) == []
    assert prune_backups(engine, PLAN_ID, older_than_days=0) == []
    assert not Ledger(engine, PLAN_ID).exists()  # listing and pruning created no ledger tables
    with pytest.raises(BackupFailed, match="has no backup 'x' \\(its backups: none\\)"):
        prune_backups(engine, PLAN_ID, backup_ids=["x"])


def test_negative_older_than_is_refused(seeded):
    with pytest.raises(BackupFailed, match="--older-than must be 0 or more days"):
        prune_backups(seeded, PLAN_ID, older_than_days=-1)


def table_cells(listing: str) -> list[dict[str, str]]:
    """The rows of a format_table, as header → cell (columns found from the dashes under the header)."""
    header, rule, *rows = listing.splitlines()
    spans = [(m.start(), m.end()) for m in re.finditer(r"-+", rule)]
    names = [header[a:b].strip() for a, b in spans]
    return [{n: row[a:b].strip() for n, (a, b) in zip(names, spans, strict=True)} for row in rows]


def test_backups_table_lists_each_backup(seeded):
    engine = seeded
    b1, b2 = make(engine, "r1"), make(engine, "r2")
    BackupCatalog(engine, PLAN_ID).mark_run_succeeded(who("r1"), keep_days=3)
    prune_backups(engine, PLAN_ID, backup_ids=[b2.id])

    listing = backups_table(plan_backups(engine, PLAN_ID))

    assert listing.splitlines()[0].split("  ")[0] == "id"
    rows = {r["id"]: r for r in table_cells(listing)}
    assert list(rows) == [b2.id, b1.id]  # newest first
    expires = BackupCatalog(engine, PLAN_ID).get(b1.id).expires_at
    assert expires is not None
    assert rows[b1.id] == {
        "id": b1.id, "status": "verified", "strategy": "snapshot",
        "created (UTC)": f"{b1.created_at:%Y-%m-%d %H:%M:%S}", "run": f"{PLAN_ID}/r1", "tables": "2", "rows": "4",
        "size": "-" if b1.size_bytes is None else human_size(b1.size_bytes),
        "expires (UTC)": f"{expires:%Y-%m-%d %H:%M:%S}", "location": "snapshot tables in the target database"}
    assert rows[b2.id]["status"] == "pruned"
    assert rows[b2.id]["expires (UTC)"] == "-"


@pytest.mark.parametrize(("database", "strategy"), [("sqlite", "sqlite_backup"), ("postgresql", "pg_dump"),
                                                    ("mariadb", "mariadb_dump")], indirect=["database"])
def test_pruning_a_file_backup_deletes_its_file(engine, tmp_path, strategy):
    if strategy == "pg_dump" and not (shutil.which("pg_dump") and shutil.which("pg_restore")):
        pytest.skip("pg_dump/pg_restore are not installed")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner VARCHAR(20), balance INTEGER)"))
        conn.execute(text("INSERT INTO accounts VALUES (1, 'ann', 10), (2, 'bob', 20), (3, 'cy', 30)"))
        conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body VARCHAR(50))"))
    plan = backup_plan(strategy, location=tmp_path / "backups")
    b1, b2 = make(engine, "r1", plan), make(engine, "r2", plan)
    assert Path(b1.location).is_file() and Path(b1.location).parent == tmp_path / "backups"

    pruned = prune_backups(engine, PLAN_ID, backup_ids=[b1.id])

    assert [b.id for b in pruned] == [b1.id]
    assert not Path(b1.location).exists()
    assert Path(b2.location).is_file()
    assert statuses(engine) == {b1.id: "pruned", b2.id: "verified"}
    with engine.connect() as conn:  # the catalog lives in the target and survives
        assert conn.execute(text(f"SELECT count(*) FROM {BACKUPS_TABLE}")).scalar() == 2


@pytest.mark.parametrize(("database", "strategy"), [("sqlite", "sqlite_backup"), ("mariadb", "mariadb_dump")],
                         indirect=["database"])
def test_a_copy_already_gone_is_still_marked_pruned(engine, tmp_path, caplog, strategy):
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner VARCHAR(20), balance INTEGER)"))
        conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, body VARCHAR(50))"))
    b1 = make(engine, "r1", backup_plan(strategy, location=tmp_path))
    Path(b1.location).unlink()

    with caplog.at_level(logging.INFO, logger=RETENTION_LOG):
        assert [b.id for b in prune_backups(engine, PLAN_ID, backup_ids=[b1.id])] == [b1.id]

    assert f"file {b1.location} was already gone, nothing freed" in caplog.text
    assert statuses(engine) == {b1.id: "pruned"}
