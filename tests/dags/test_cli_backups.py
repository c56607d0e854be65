"""``airflow-migrate backups list|prune`` and ``airflow-migrate restore``, run as a user would (through the
console script's ``main()``, in process: the ``cli`` fixture), against backups made with ``make_backup`` in
real SQLite, PostgreSQL and MariaDB targets."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from airflow_migrate_provider.core.backup.catalog import Backup, BackupCatalog
from airflow_migrate_provider.core.backup.make import make_backup
from airflow_migrate_provider.core.backup.restore import compare_backup
from airflow_migrate_provider.core.backup.tables import table_exists
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
from airflow_migrate_provider.plan.loader import load_plan

pytestmark = pytest.mark.timeout(240)
SECRET = "hunter2-s3cret"
PLAN_ID = "cli_backups_plan"


def write_plan(tmp_path: Path, strategy: str, location: Path | None = None) -> Path:
    backup: dict = {"strategy": strategy, "tables": ["accounts", "notes"], "keep_days_after_success": 7}
    if location is not None:
        backup["location"] = str(location)
    data = {
        "id": PLAN_ID, "connections": {"target": "app_db"}, "backup": backup,
        "steps": [{"id": "bump", "up": "UPDATE accounts SET balance = balance + 1;",
                   "down": "UPDATE accounts SET balance = balance - 1;",
                   "verify": "SELECT count(*) = 3 FROM accounts"}],
    }
    path = tmp_path / f"{PLAN_ID}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def conn_arg(db) -> tuple[str, str]:
    """``app_db=URI`` for ``--conn``, with a password in the URI (the local server trusts us and ignores it),
    and the secret that must never be printed."""
    if db.dialect in ("sqlite", "mariadb"):  # MariaDB's root has no password here and refuses one
        return f"app_db={db.airflow_uri}", SECRET  # nothing secret in it; SECRET can't appear either
    url = make_url(db.airflow_uri)
    if url.password is None:
        url = url.set(password=SECRET)
    secret = str(url.password)
    return f"app_db={url.render_as_string(hide_password=False)}", secret


@pytest.fixture
def target(database):
    """The ``database`` (SQLite, PostgreSQL, MariaDB) with accounts and notes, and an engine on it."""
    engine = create_engine(database.sqlalchemy_url)
    dialect = dialect_for(engine)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner VARCHAR(20) NOT NULL, "
                          "balance INTEGER NOT NULL)"))
        conn.execute(text("INSERT INTO accounts VALUES (1, 'ann', 10), (2, 'bob', 20), (3, 'cy', 30)"))
        conn.execute(text("CREATE TABLE notes (id INTEGER PRIMARY KEY, account_id INTEGER REFERENCES accounts (id), "
                          "body VARCHAR(50))"))
        conn.execute(text("INSERT INTO notes VALUES (1, 1, 'hello'), (2, 3, 'bye')"))
    yield database, engine, dialect
    engine.dispose()


def backup_of(target, plan_path: Path, run: str) -> Backup:
    _, engine, dialect = target
    return make_backup(engine, dialect, load_plan(plan_path), RunIdentity(PLAN_ID, run))


def assert_secret_kept(secret: str, *results: subprocess.CompletedProcess) -> None:
    for result in results:
        assert secret not in result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr


def test_list_shows_the_backups_and_prune_removes_them(target, tmp_path, cli):
    db, engine, _ = target
    plan = write_plan(tmp_path, "snapshot")
    conn, secret = conn_arg(db)
    b1, b2 = backup_of(target, plan, "r1"), backup_of(target, plan, "r2")
    BackupCatalog(engine, PLAN_ID).mark_run_succeeded(RunIdentity(PLAN_ID, "r1"), keep_days=0)  # expired

    listed = cli("backups", "list", str(plan), "--conn", conn)

    assert listed.returncode == 0, listed.stderr[-3000:]
    assert f"plan '{PLAN_ID}': 2 backup(s), 2 not pruned" in listed.stdout
    for backup, run in ((b1, "r1"), (b2, "r2")):
        line = next(line for line in listed.stdout.splitlines() if line.startswith(backup.id))
        assert "verified" in line and "snapshot" in line and f"{PLAN_ID}/{run}" in line
        assert f"{backup.created_at:%Y-%m-%d %H:%M:%S}" in line
    assert "backups expire 7 day(s) after their run succeeded" in listed.stdout

    dry = cli("backups", "prune", str(plan), "--conn", conn, "--backup", b2.id, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert f"plan '{PLAN_ID}': would prune (dry run: nothing was removed) 2 backup(s)" in dry.stdout
    assert {b.status for b in BackupCatalog(engine, PLAN_ID).all()} == {"verified"}

    pruned = cli("backups", "prune", str(plan), "--conn", conn)  # only what expired: r1's

    assert pruned.returncode == 0, pruned.stderr[-3000:]
    assert f"plan '{PLAN_ID}': pruned 1 backup(s)" in pruned.stdout
    assert b1.id in pruned.stdout and b2.id not in pruned.stdout
    with engine.connect() as c:
        assert not any(table_exists(c, t.stored_as) for t in b1.tables)
        assert all(table_exists(c, t.stored_as) for t in b2.tables)

    named = cli("backups", "prune", str(plan), "--conn", conn, "--backup", b2.id)
    nothing = cli("backups", "prune", str(plan), "--conn", conn, "--older-than", "0")

    assert named.returncode == 0, named.stderr[-3000:]
    assert "pruned 1 backup(s)" in named.stdout and b2.id in named.stdout
    assert nothing.returncode == 0, nothing.stderr[-3000:]
    assert f"plan '{PLAN_ID}': no backup to prune (looked for backups expired or older than 0 day(s))" \
        in nothing.stdout
    assert {b.id: b.status for b in BackupCatalog(engine, PLAN_ID).all()} == {b1.id: "pruned", b2.id: "pruned"}
    relisted = cli("backups", "list", str(plan), "--conn", conn)
    assert f"plan '{PLAN_ID}': 2 backup(s), 0 not pruned" in relisted.stdout
    gone = cli("restore", str(plan), "--backup", b1.id, "--conn", conn)
    assert gone.returncode == 1
    assert gone.stderr.strip() == f"error: backup {b1.id} is pruned, not verified: it cannot be restored from"
    assert_secret_kept(secret, listed, dry, pruned, named, nothing, relisted, gone)


def test_prune_refuses_the_backup_of_the_run_holding_the_lock(target, tmp_path, cli):
    db, engine, _ = target
    plan = write_plan(tmp_path, "snapshot")
    conn, secret = conn_arg(db)
    b1 = backup_of(target, plan, "r1")
    Ledger(engine, PLAN_ID).acquire_lock(RunIdentity(PLAN_ID, "r1", host="worker-7", pid=99), 600)

    refused = cli("backups", "prune", str(plan), "--conn", conn, "--backup", b1.id)

    assert refused.returncode == 1
    assert refused.stderr.startswith(f"error: backup {b1.id} was made by run {PLAN_ID}/r1, which holds the lock")
    assert "Prune it after that run has finished." in refused.stderr
    assert BackupCatalog(engine, PLAN_ID).get(b1.id).status == "verified"
    assert_secret_kept(secret, refused)


@pytest.mark.parametrize("strategy", ["snapshot", "file"])
def test_restore_brings_corrupted_tables_back(target, tmp_path, fingerprint, strategy, cli):
    db, engine, _ = target
    files = {"sqlite": "sqlite_backup", "postgresql": "pg_dump", "mariadb": "mariadb_dump"}
    strategy = {"file": files[db.dialect]}.get(strategy, strategy)
    plan = write_plan(tmp_path, strategy, location=tmp_path / "backups")
    conn, secret = conn_arg(db)
    before = fingerprint(db)
    backup = backup_of(target, plan, "r1")
    with engine.begin() as c:  # what a bad migration (or a bad hand) leaves behind
        c.execute(text("UPDATE accounts SET balance = 0, owner = 'x' WHERE id = 2"))
        c.execute(text("INSERT INTO accounts VALUES (4, 'dan', 40)"))
        c.execute(text("DELETE FROM notes"))
    assert fingerprint(db) != before
    assert not any(state.equal for state in compare_backup(engine, backup))

    restored = cli("restore", str(plan), "--backup", backup.id, "--conn", conn)

    assert restored.returncode == 0, restored.stderr[-3000:]
    header = f"plan '{PLAN_ID}': restore from backup {backup.id} (made by run {PLAN_ID}/r1"
    assert header in restored.stdout
    out = restored.stdout[restored.stdout.index(header):]  # the command's report, after the restore's log
    assert "restored 2 table(s) (accounts, notes)" in out
    assert f"every table equals backup {backup.id}" in out
    for manifest in backup.tables:
        line = next(line for line in out.splitlines() if line.startswith(f"{manifest.table} "))
        assert line.count(str(manifest.fingerprint)) == 2 and line.rstrip().endswith("yes")
    assert fingerprint(db) == before
    assert all(state.equal for state in compare_backup(engine, backup))
    assert Ledger(engine, PLAN_ID).lock_holder() is None  # the restore released the lock it took
    again = cli("restore", str(plan), "--backup", backup.id, "--conn", conn)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "no table differed from the backup, nothing was restored" in again.stdout
    assert_secret_kept(secret, restored, again)


def test_restore_with_an_unknown_backup_id_fails_with_one_clear_line(target, tmp_path, cli):
    db, _, _ = target
    plan = write_plan(tmp_path, "snapshot")
    conn, secret = conn_arg(db)
    backup = backup_of(target, plan, "r1")

    result = cli("restore", str(plan), "--backup", "20990101T000000-000000", "--conn", conn)

    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: plan '{PLAN_ID}' has no backup '20990101T000000-000000' (its backups: {backup.id}); "
        f"see `airflow-migrate backups list`")
    assert result.stdout == ""
    assert_secret_kept(secret, result)


def test_restore_is_refused_while_a_run_holds_the_plans_lock(target, tmp_path, cli):
    db, engine, _ = target
    plan = write_plan(tmp_path, "snapshot")
    conn, secret = conn_arg(db)
    backup = backup_of(target, plan, "r1")
    with engine.begin() as c:
        c.execute(text("UPDATE accounts SET balance = 0"))
    Ledger(engine, PLAN_ID).acquire_lock(RunIdentity(PLAN_ID, "r2", host="worker-7", pid=99), 600)

    result = cli("restore", str(plan), "--backup", backup.id, "--conn", conn)

    assert result.returncode == 1
    assert result.stderr.startswith(f"error: plan '{PLAN_ID}' is locked by dag '{PLAN_ID}' run 'r2' try 1 on "
                                    f"worker-7 pid 99 until ")
    assert [s.table for s in compare_backup(engine, backup) if not s.equal] == ["accounts"]  # untouched
    assert Ledger(engine, PLAN_ID).lock_holder()["holder_run"] == f"{PLAN_ID}/r2"  # not released by the CLI
    assert_secret_kept(secret, result)


def test_backups_list_of_a_target_without_backups(target, tmp_path, cli):
    db, engine, _ = target
    plan = write_plan(tmp_path, "snapshot")
    conn, secret = conn_arg(db)

    result = cli("backups", "list", str(plan), "--conn", conn)

    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"plan '{PLAN_ID}' has no backups in its target (Airflow connection 'app_db')"
    assert not Ledger(engine, PLAN_ID).exists()
    assert_secret_kept(secret, result)
