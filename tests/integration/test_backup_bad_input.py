"""Backups that cannot be made fail with BackupFailed, say what to do, and leave everything as it was: the
application's tables (the `fingerprint` fixture), no snapshot table, no file or partial file.

Covered: a location that is not writable, a disk without room, pg_dump / pg_restore / mariadb-dump missing, an explicit
table that does not exist, a strategy for the other database, a statement whose table cannot be told with
``tables: auto``, and a table written while it is being backed up (without ``lock_writes``).
"""

from __future__ import annotations

import re
import shutil
from collections import namedtuple
from contextlib import contextmanager

import pytest
from backup_it_support import STRATEGY_CASES, database_of, open_target, seed_other, seed_users

from airflow_migrate_provider.core.backup import mariadb_dump, snapshot, strategy
from airflow_migrate_provider.core.backup.strategies import SqliteBackupStrategy
from airflow_migrate_provider.errors import BackupFailed

UPDATE_USERS = "UPDATE users SET theme = 'light'"
FILE_CASES = [p for p in STRATEGY_CASES if p.values[0][1] != "snapshot"]


def make_target(request, tmp_path):
    dialect, strategy = request.param
    t = open_target(database_of(request, dialect), strategy, tmp_path / "backups")
    seed_users(t)
    seed_other(t)
    return t


@pytest.fixture(params=STRATEGY_CASES)
def target(request, tmp_path):
    t = make_target(request, tmp_path)
    yield t
    t.engine.dispose()


@pytest.fixture(params=FILE_CASES)
def file_target(request, tmp_path):
    """The strategies that write a file: pg_dump (PostgreSQL), mariadb_dump (MariaDB), sqlite_backup (SQLite)."""
    t = make_target(request, tmp_path)
    yield t
    t.engine.dispose()


@pytest.fixture(params=[pytest.param(("postgresql", "snapshot"), id="pg"),
                        pytest.param(("sqlite", "snapshot"), id="sqlite"),
                        pytest.param(("mariadb", "snapshot"), id="mariadb")])
def snapshot_target(request, tmp_path):
    t = make_target(request, tmp_path)
    yield t
    t.engine.dispose()


def seeded_pg(pg_database, tmp_path, strategy: str):
    t = open_target(pg_database, strategy, tmp_path / "backups")
    seed_users(t)
    yield t
    t.engine.dispose()


@pytest.fixture
def pg_snapshot(pg_database, tmp_path):
    yield from seeded_pg(pg_database, tmp_path, "snapshot")


@pytest.fixture
def pg_file_target(pg_database, tmp_path):
    yield from seeded_pg(pg_database, tmp_path, "pg_dump")


def fails(t, fingerprint, match: str, *ups: str, **backup) -> BackupFailed:
    """Run the backup, expect BackupFailed matching ``match``; check that nothing was left behind."""
    before = fingerprint(t.db)
    with pytest.raises(BackupFailed, match=match) as failed:
        t.backup(*(ups or (UPDATE_USERS,)), **backup)
    assert fingerprint(t.db) == before
    assert t.snapshot_tables() == []
    assert t.files() == []
    return failed.value


def test_backup_location_that_is_not_writable(file_target, fingerprint):
    t = file_target
    blocker = t.location.parent / "a_file"
    blocker.write_text("not a folder")
    t.location = blocker / "backups"  # a folder under a regular file: cannot be made, even by root

    error = fails(t, fingerprint, "is not writable")

    message = str(error)
    assert str(t.location) in message
    assert "backup.location" in message and "$AIRFLOW_MIGRATE_BACKUPS" in message
    assert "nothing was changed" in message
    assert blocker.read_text() == "not a folder"
    assert t.catalog() == []  # refused before a backup was begun


def test_backup_location_without_room(file_target, fingerprint, monkeypatch):
    t = file_target
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(strategy.shutil, "disk_usage", lambda path: usage(10 << 30, (10 << 30) - 2048, 2048))

    error = fails(t, fingerprint, "has 2.0 KiB free but the tables take")

    assert str(t.location) in str(error)
    assert "free space or point backup.location elsewhere" in str(error)
    assert t.catalog() == []


def test_pg_dump_not_installed(pg_file_target, fingerprint, monkeypatch, tmp_path):
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("AIRFLOW_MIGRATE_PG_DUMP", raising=False)

    error = fails(pg_file_target, fingerprint, "needs the `pg_dump` program on the worker, and it is not on PATH")

    assert "postgresql-client" in str(error) and "$AIRFLOW_MIGRATE_PG_DUMP" in str(error)
    assert pg_file_target.catalog() == []


def test_pg_restore_not_installed(pg_file_target, fingerprint, monkeypatch, tmp_path):
    """A backup nobody could restore from is not made either."""
    only_dump = tmp_path / "only_pg_dump"
    only_dump.mkdir()
    (only_dump / "pg_dump").symlink_to(shutil.which("pg_dump"))
    monkeypatch.setenv("PATH", str(only_dump))
    monkeypatch.delenv("AIRFLOW_MIGRATE_PG_DUMP", raising=False)
    monkeypatch.delenv("AIRFLOW_MIGRATE_PG_RESTORE", raising=False)

    fails(pg_file_target, fingerprint, r"needs the `pg_restore` program .* \$AIRFLOW_MIGRATE_PG_RESTORE")


def test_pg_dump_found_through_the_environment_variable(pg_file_target, monkeypatch, tmp_path):
    """The counterpart of the two above: off PATH, $AIRFLOW_MIGRATE_PG_DUMP/_RESTORE point at the tools."""
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("AIRFLOW_MIGRATE_PG_DUMP", shutil.which("pg_dump"))
    monkeypatch.setenv("AIRFLOW_MIGRATE_PG_RESTORE", shutil.which("pg_restore"))
    monkeypatch.setenv("PATH", str(empty))

    assert pg_file_target.backup(UPDATE_USERS).status == "verified"


@pytest.fixture
def mariadb_file_target(mariadb_database, tmp_path):
    t = open_target(mariadb_database, "mariadb_dump", tmp_path / "backups")
    seed_users(t)
    yield t
    t.engine.dispose()


def test_mariadb_dump_not_installed(mariadb_file_target, fingerprint, monkeypatch, tmp_path):
    empty = tmp_path / "empty_bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("AIRFLOW_MIGRATE_MARIADB_DUMP", raising=False)

    error = fails(mariadb_file_target, fingerprint,
                  r"needs the `mariadb-dump` \(or `mysqldump`\) program on the worker, and neither is on PATH")

    assert "mariadb-client" in str(error) and "$AIRFLOW_MIGRATE_MARIADB_DUMP" in str(error)
    assert mariadb_file_target.catalog() == []


@pytest.mark.parametrize("tool", ["mariadb-dump", "mysqldump"])
def test_mariadb_dump_found_under_either_name_or_through_the_environment_variable(mariadb_file_target, monkeypatch,
                                                                                 tmp_path, tool):
    found = shutil.which(tool)
    only = tmp_path / "only_one"
    only.mkdir()
    (only / tool).symlink_to(found)
    monkeypatch.setenv("PATH", str(only))
    monkeypatch.delenv("AIRFLOW_MIGRATE_MARIADB_DUMP", raising=False)
    assert mariadb_dump.find_tool() == str(only / tool)
    assert mariadb_file_target.backup(UPDATE_USERS).status == "verified"

    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    monkeypatch.setenv("AIRFLOW_MIGRATE_MARIADB_DUMP", found)
    assert mariadb_file_target.backup(UPDATE_USERS, run="again").status == "verified"


def test_explicit_table_that_does_not_exist(target, fingerprint):
    error = fails(target, fingerprint, r"backup.tables names table\(s\) that do not exist: no_such_table\. Fix",
                  tables=["users", "no_such_table"])

    assert "existing tables only" in str(error) and "nothing was changed" in str(error)
    assert target.catalog() == []


@pytest.mark.parametrize(("dialect", "strategy", "needs"), [
    ("postgresql", "sqlite_backup", "needs a SQLite target, not postgresql"),
    ("sqlite", "pg_dump", "needs a PostgreSQL target, not sqlite"),
    ("mariadb", "pg_dump", "needs a PostgreSQL target, not (mysql|mariadb)"),
    ("mariadb", "sqlite_backup", "needs a SQLite target, not (mysql|mariadb)"),
    ("postgresql", "mariadb_dump", "needs a MariaDB or MySQL target, not postgresql"),
    ("sqlite", "mariadb_dump", "needs a MariaDB or MySQL target, not sqlite"),
])
def test_strategy_for_the_other_database(request, tmp_path, fingerprint, dialect, strategy, needs):
    t = open_target(database_of(request, dialect), strategy, tmp_path / "backups")
    try:
        seed_users(t)
        error = fails(t, fingerprint, f"backup strategy {strategy} {needs}")
        assert "use `snapshot`" in str(error)
        assert t.catalog() == []
    finally:
        t.engine.dispose()


def test_auto_tables_with_a_statement_whose_table_cannot_be_told(pg_snapshot, fingerprint):
    t = pg_snapshot
    do_block = "DO $$ BEGIN UPDATE users SET theme = 'x'; END $$"

    error = fails(t, fingerprint, "backup.tables is `auto` but step 's1' has a statement whose written table "
                  "cannot be told", UPDATE_USERS, do_block)

    assert "DO $$ BEGIN UPDATE users" in str(error)
    assert "List the tables to back up in the plan's `backup.tables`" in str(error)
    assert t.catalog() == []
    # listing the tables is the way out
    assert t.backup(UPDATE_USERS, do_block, tables=["users"]).status == "verified"


def test_snapshot_of_a_table_written_meanwhile_fails_and_is_removed(snapshot_target, fingerprint, monkeypatch):
    t = snapshot_target
    writes: list[str] = []
    real_locked = snapshot.locked

    @contextmanager
    def copy_then_write(*args, **kwargs):
        with real_locked(*args, **kwargs) as conn:
            yield conn
        # the copy is committed; another session writes to the table before the copy is verified
        writes.append(t.try_write("UPDATE users SET theme = 'concurrent' WHERE id = 2"))

    monkeypatch.setattr(snapshot, "locked", copy_then_write)
    before_rows = t.rows("SELECT id, email FROM users ORDER BY id")

    with pytest.raises(BackupFailed) as failed:
        t.backup(UPDATE_USERS)

    message = str(failed.value)
    assert writes == ["written"]
    assert "could not be verified: users: live 3 rows" in message
    assert "The table changed while it was being backed up" in message
    assert "`backup.lock_writes: true`" in message
    assert t.snapshot_tables() == []  # the copy made is removed
    [row] = t.catalog()
    assert (row.status, row.error, row.tables) == ("failed", message, [])
    assert t.rows("SELECT id, email FROM users ORDER BY id") == before_rows  # the other session's write stays
    assert t.scalar("SELECT theme FROM users WHERE id = 2") == "concurrent"

    # the run is not stuck with its failed backup: the next attempt makes a new one
    monkeypatch.setattr(snapshot, "locked", real_locked)
    again = t.backup(UPDATE_USERS)
    assert again.status == "verified" and again.id != row.id
    assert {b.status for b in t.catalog()} == {"failed", "verified"}


def test_sqlite_file_of_a_table_written_meanwhile_fails_and_is_removed(sqlite_database, tmp_path, monkeypatch):
    t = open_target(sqlite_database, "sqlite_backup", tmp_path / "backups")
    seed_users(t)
    real = SqliteBackupStrategy._fingerprint_live

    def write_then_fingerprint(conn, present, copy):
        t.sql("DELETE FROM users WHERE id = 3")  # after the file was copied, before the live tables are read
        real(conn, present, copy)

    monkeypatch.setattr(SqliteBackupStrategy, "_fingerprint_live", staticmethod(write_then_fingerprint))

    with pytest.raises(BackupFailed, match=re.escape("users: live 2 rows")) as failed:
        t.backup(UPDATE_USERS)

    assert "lock_writes" in str(failed.value)
    assert t.files() == []  # no partial file
    assert [b.status for b in t.catalog()] == ["failed"]
    t.engine.dispose()
