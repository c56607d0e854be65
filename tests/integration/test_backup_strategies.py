"""make_backup with every strategy on every dialect it supports (snapshot on PostgreSQL, SQLite and MariaDB, pg_dump
on PostgreSQL, mariadb_dump on MariaDB, sqlite_backup on SQLite), against real databases: the manifest it records
(tables, row counts, checksums, tables a step creates recorded as absent, size, location, duration, the run that
made it), the copy it leaves (snapshot tables, dump or database file), one backup per run, and ``lock_writes``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from backup_it_support import (
    PLAN_ID,
    STRATEGY_CASES,
    open_target,
    seed_other,
    seed_users,
    sqlite_file_rows,
    target_of,
    who,
)

from airflow_migrate_provider.core.backup import mariadb_dump, pg_dump, snapshot, sqlite_file, tables
from airflow_migrate_provider.core.backup.make import make_backup
from airflow_migrate_provider.core.backup.restore import compare_backup, restore_backup
from airflow_migrate_provider.core.backup.tables import fingerprint as table_fingerprint
from airflow_migrate_provider.core.backup.tables import quote_table

UPDATE_USERS = "UPDATE users SET theme = 'light'"
USERS_COLUMNS = ["id", "email", "theme", "balance", "seen", "prefs", "avatar"]


@pytest.fixture(params=STRATEGY_CASES)
def target(request, tmp_path):
    with target_of(request, tmp_path) as t:
        yield t


@pytest.fixture
def pg_target(pg_database, tmp_path):
    t = open_target(pg_database, "pg_dump", tmp_path / "backups")
    yield t
    t.engine.dispose()


def archive_entries(path: str) -> list[str]:
    """The table-data entries of a pg_dump archive, as ``schema.table``."""
    listing = subprocess.run(["pg_restore", "--list", path], capture_output=True, text=True, check=True).stdout
    entries = []
    for line in listing.splitlines():
        if not line.startswith(";") and " TABLE DATA " in line:
            words = line.split(" TABLE DATA ")[1].split()
            entries.append(f"{words[0]}.{words[1]}")
    return sorted(entries)


def test_backup_records_a_verified_manifest_and_keeps_a_copy(target, fingerprint):
    t = target
    seed_users(t)
    seed_other(t)
    before = fingerprint(t.db)

    b = t.backup(f"{UPDATE_USERS}; CREATE TABLE audit (id INTEGER PRIMARY KEY)")

    assert (b.status, b.strategy, b.plan_id, b.error) == ("verified", t.strategy, PLAN_ID, None)
    # the tables the step writes, in order; `untouched` is not written, so not backed up
    assert [(m.table, m.present) for m in b.tables] == [("users", True), ("audit", False)]
    users, audit = b.table("users"), b.table("audit")
    assert users.rows == 3
    with t.engine.connect() as conn:  # the checksum is that of the live rows (nothing changed them)
        live = table_fingerprint(conn, quote_table(conn, "users"), USERS_COLUMNS)
    assert users.checksum == live.checksum
    assert [c.name for c in users.table_definition.columns] == USERS_COLUMNS
    assert users.table_definition.primary_key == ["id"]
    assert any("users_seen" in ddl for ddl in users.table_definition.indexes)
    # a table the step creates: recorded as absent (a restore drops it), with nothing stored
    assert (audit.rows, audit.checksum, audit.definition, audit.stored_as) == (0, "", None, "")

    assert b.size_bytes is not None and b.size_bytes > 0
    assert b.duration_s is not None and b.duration_s >= 0
    assert b.finished_at is not None and b.finished_at >= b.created_at
    assert (b.dag_id, b.run_id, b.try_number) == ("dag", "run", 1)
    catalog = t.catalog()
    assert [(c.id, c.status, c.run_key, c.size_bytes) for c in catalog] == [(b.id, "verified", "dag/run",
                                                                             b.size_bytes)]
    assert catalog[0].tables == b.tables

    live_rows = t.rows("SELECT * FROM users ORDER BY id")
    if t.strategy == "snapshot":
        assert b.location == "snapshot tables in the target database"
        assert t.snapshot_tables() == [users.stored_as]
        assert t.rows(f"SELECT * FROM {users.stored_as} ORDER BY id") == live_rows
        assert t.files() == []
    elif t.strategy == "pg_dump":
        assert b.location == str(t.location / f"{b.id}.dump")
        assert t.files() == [f"{b.id}.dump"]
        assert Path(b.location).stat().st_size == b.size_bytes
        # only the backed-up table: not `untouched`, not the ledger
        assert archive_entries(b.location) == ["public.users"]
        assert t.snapshot_tables() == []
    elif t.strategy == "mariadb_dump":
        assert b.location == str(t.location / f"{b.id}.sql")
        assert t.files() == [f"{b.id}.sql"]
        assert Path(b.location).stat().st_size == b.size_bytes
        inserts = [line for line in Path(b.location).read_text().splitlines() if line.startswith("INSERT INTO")]
        assert inserts and all(line.startswith("INSERT INTO `users` ") for line in inserts)  # not `untouched`
        assert t.snapshot_tables() == []
    else:
        assert b.location == str(t.location / f"{b.id}.sqlite")
        assert t.files() == [f"{b.id}.sqlite"]
        assert Path(b.location).stat().st_size == b.size_bytes
        assert sqlite_file_rows(b.location, "SELECT * FROM users ORDER BY id") == live_rows
        assert t.snapshot_tables() == []
    assert fingerprint(t.db) == before  # backing up changes no table of the application


def test_explicit_tables_are_backed_up_in_the_order_listed(target):
    t = target
    seed_users(t)
    seed_other(t)

    b = t.backup(UPDATE_USERS, tables=["untouched", "users"])

    assert [(m.table, m.present, m.rows) for m in b.tables] == [("untouched", True, 1), ("users", True, 3)]
    assert all(c.equal for c in compare_backup(t.engine, b))


def test_a_run_keeps_its_first_backup(target):
    t = target
    seed_users(t)
    first = t.backup(UPDATE_USERS)
    t.sql("UPDATE users SET theme = 'changed by the run'")  # a step of the run ran; its task is retried

    plan = t.plan(UPDATE_USERS)
    again = make_backup(t.engine, t.dialect, plan, who("run", try_number=2))

    assert again.id == first.id
    assert again.table("users").checksum == first.table("users").checksum  # still the state before the run
    assert len(t.catalog()) == 1
    not_equal = [s.table for s in compare_backup(t.engine, again) if not s.equal]
    assert not_equal == ["users"]

    other = make_backup(t.engine, t.dialect, plan, who("run2"))  # another run backs up the state it starts from
    assert other.id != first.id
    assert other.table("users").checksum != first.table("users").checksum
    assert {c.id for c in t.catalog()} == {first.id, other.id}
    copies = t.snapshot_tables() if t.strategy == "snapshot" else t.files()
    assert len(copies) == 2


def test_lock_writes_blocks_writers_while_the_tables_are_copied(target, monkeypatch):
    t = target
    seed_users(t)
    attempts: list[str] = []
    real = tables.fingerprint

    def write_during_backup(conn, relation, columns, keys=None):
        if not attempts:  # the first fingerprint is taken while the tables are locked
            attempts.append(t.try_write("UPDATE users SET theme = 'concurrent' WHERE id = 1"))
        return real(conn, relation, columns, keys)

    for module in (snapshot, sqlite_file, pg_dump, mariadb_dump):
        monkeypatch.setattr(module, "fingerprint", write_during_backup)
    b = t.backup(UPDATE_USERS, lock_writes=True)

    assert attempts == ["blocked"]
    assert b.status == "verified"
    assert b.table("users").rows == 3
    assert t.try_write("UPDATE users SET theme = 'after' WHERE id = 1") == "written"  # the lock is released
    assert t.scalar("SELECT theme FROM users WHERE id = 1") == "after"


def test_pg_dump_copies_one_consistent_snapshot_even_while_written(pg_target, monkeypatch, fingerprint):
    """Without lock_writes, a write that lands during the dump is in neither the dump nor the manifest: the
    backup is the state of one moment, and restoring it undoes the write."""
    t = pg_target
    seed_users(t)
    before = fingerprint(t.db)
    attempts: list[str] = []
    real = tables.fingerprint

    def write_during_backup(conn, relation, columns, keys=None):
        if not attempts:
            attempts.append(t.try_write("DELETE FROM users WHERE id = 3"))
        return real(conn, relation, columns, keys)

    for module in (snapshot, sqlite_file, pg_dump):
        monkeypatch.setattr(module, "fingerprint", write_during_backup)
    b = t.backup(UPDATE_USERS)

    assert attempts == ["written"]
    assert (b.status, b.table("users").rows) == ("verified", 3)
    assert t.scalar("SELECT count(*) FROM users") == 2
    report = restore_backup(t.engine, b)
    assert [s.action for s in report.tables] == ["synchronised"]
    assert fingerprint(t.db) == before


def test_pg_dump_of_a_plan_that_only_creates_tables_dumps_nothing(pg_target, fingerprint):
    """pg_dump without any table argument dumps the whole database: no table exists yet, so nothing is
    dumped, and a restore still drops the tables the run created."""
    t = pg_target
    seed_users(t)
    before = fingerprint(t.db)

    b = t.backup("CREATE TABLE audit (id INTEGER PRIMARY KEY); CREATE INDEX audit_id ON audit (id)")

    assert [(m.table, m.present) for m in b.tables] == [("audit", False)]
    assert b.status == "verified"
    assert b.size_bytes == 0
    assert t.files() == []
    t.sql("CREATE TABLE audit (id INTEGER PRIMARY KEY)")
    report = restore_backup(t.engine, b)
    assert [(s.table, s.action) for s in report.tables] == [("audit", "dropped")]
    assert fingerprint(t.db) == before


def test_auto_finds_tables_named_in_any_letter_case(target, fingerprint):
    """``UPDATE Users`` writes the table users (unquoted names are case-insensitive)."""
    t = target
    seed_users(t)
    before = fingerprint(t.db)

    b = t.backup("UPDATE Users SET theme = 'light'")

    if t.mariadb and t.scalar("SELECT @@lower_case_table_names") == 0:  # table names are case-sensitive there
        assert [(m.table, m.present) for m in b.tables] == [("Users", False)]  # the step would fail: no `Users`
        return
    assert [m.present for m in b.tables] == [True]
    assert b.tables[0].rows == 3
    t.sql("UPDATE users SET theme = 'light'")
    restore_backup(t.engine, b)
    assert fingerprint(t.db) == before
