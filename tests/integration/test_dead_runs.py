"""Dead runs (issue 12): a run killed with SIGKILL at a step boundary or inside a backfill, then a new run that
takes over its lock at once, inherits what it applied, and either succeeds (the ledger shows both runs) or fails
and leaves the target exactly as it was before the first run.

Plus the lock's liveness checks: a dead same-host process, a vanished database session, a statement PostgreSQL
goes on running after its client died (ended on takeover), deferred holders, and the ledger upgrade.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from dead_run_worker import PLAN_ID, SOURCE_ROWS, TTL, apply_steps, plan_text, seed
from migrate_it_support import fingerprint
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.backup.catalog import BackupCatalog
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.dialects.base import session_tag
from airflow_migrate_provider.core.ledger import LOCK_TABLE, Ledger, RunIdentity, utcnow
from airflow_migrate_provider.core.lock_keeper import LockKeeper
from airflow_migrate_provider.core.rollback import backup_before, rollback_run
from airflow_migrate_provider.core.status import lock_line, status_table
from airflow_migrate_provider.core.steps import StepRunner
from airflow_migrate_provider.errors import LockHeld, MigrateError
from airflow_migrate_provider.plan.loader import parse_plan

WORKER = Path(__file__).with_name("dead_run_worker.py")
HOST = socket.gethostname()


def _new_run(run_id: str = "r2") -> RunIdentity:
    return RunIdentity("dead_dag", run_id, 1, host=HOST, pid=os.getpid())


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def kill_worker(url: str, stall_at: str, *, backup: bool = False, run_id: str = "r1") -> int:
    """Start a run in a child process, SIGKILL it at ``stall_at``; its pid (the child is reaped)."""
    config = {"url": url, "plan": plan_text(backup=backup), "run_id": run_id, "stall_at": stall_at,
              "backup": backup}
    child = subprocess.Popen([sys.executable, str(WORKER), json.dumps(config)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=WORKER.parent)
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(child.stdout, lines), daemon=True).start()
    deadline = time.monotonic() + 90
    try:
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                raise AssertionError(f"worker ended before {stall_at}: {child.wait()} {child.stderr.read()}")
            if line == f"stall {stall_at}":
                break
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    return child.pid


def _engine(database) -> Engine:
    engine = create_engine(database.sqlalchemy_url)
    dialect_for(engine)
    return engine


def _take_over(ledger: Ledger, dead_pid: int) -> RunIdentity:
    """The new run takes the dead run's lock without waiting for the expiry (TTL is 600 s)."""
    assert f"dead: pid {dead_pid} gone on {HOST}" in lock_line(ledger)
    r2 = _new_run()
    t0 = time.monotonic()
    lease = ledger.acquire_lock(r2, TTL)
    assert time.monotonic() - t0 < 10
    assert lease.took_over_from is not None and "run 'r1'" in lease.took_over_from
    assert ledger.run_chain(r2.run_key) == ["dead_dag/r1", "dead_dag/r2"]
    return r2


DEFAULT_CASES = [("sqlite", "after:create_items"), ("sqlite", "batch:3"), ("postgresql", "batch:3"),
                 ("postgresql", "after:copy_items"), ("mariadb", "batch:3")]
POINTS = ["before:create_items", "after:create_items", "batch:3", "after:copy_items"]
SLOW_CASES = [(db, point) for db in ("sqlite", "postgresql", "mariadb") for point in POINTS
              if (db, point) not in DEFAULT_CASES]
CASES = DEFAULT_CASES + [pytest.param(case, marks=pytest.mark.slow) for case in SLOW_CASES]


@pytest.fixture
def dead_db(request):
    """(the test database, the point to kill the run at): one per case."""
    db_name, point = request.param
    return request.getfixturevalue(f"{db_name.replace('postgresql', 'pg')}_database"), point


@pytest.mark.parametrize("dead_db", CASES, indirect=True, ids=lambda c: f"{c[0]}-{c[1]}")
def test_dead_run_then_a_new_run_succeeds_and_the_ledger_shows_both(dead_db):
    database, point = dead_db
    engine = _engine(database)
    try:
        seed(engine)
        dead_pid = kill_worker(database.sqlalchemy_url, point)
        ledger = Ledger(engine, PLAN_ID)
        r2 = _take_over(ledger, dead_pid)
        plan = parse_plan(plan_text())
        with LockKeeper(ledger, ledger.acquire_lock(r2, TTL), TTL) as keeper:
            apply_steps(StepRunner(engine, dialect_for(engine), ledger, r2, keeper, plan=plan), plan)
        assert ledger.release_lock(r2)

        applied = ledger.applied()
        assert sorted(applied) == ["copy_items", "create_items", "flag_customers"]
        assert all(r.status == "applied" for r in applied.values())
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM items")).scalar() == SOURCE_ROWS
        rows = ledger.rows()
        assert not [r for r in rows if r.status == "running"], "a dead run's row was left running"
        assert {r.run_id for r in rows} == ({"r2"} if point == "before:create_items" else {"r1", "r2"})
        assert applied["flag_customers"].run_id == "r2"
        if point == "batch:3":
            copy = applied["copy_items"]
            workers = ledger.workers(copy)
            assert [(w.run_id, w.status) for w in workers] == [("r1", "abandoned"), ("r2", "applied")]
            table = status_table(plan, ledger)
            assert "copy_items: started by dag 'dead_dag' run 'r1'" in table
            assert "finished by dag 'dead_dag' run 'r2'" in table
            assert "applied" in table and "dag 'dead_dag' run 'r2'" in table.split("copy_items")[1]
        events = ledger.lock_events()
        assert [(e.action, e.run_key, e.from_run, e.inherits) for e in events] == [
            ("takeover", "dead_dag/r2", "dead_dag/r1", True)]
        assert f"pid {dead_pid} gone" in events[0].detail["why"]
        assert lock_line(ledger) == "lock: free"
    finally:
        engine.dispose()


@pytest.mark.parametrize("dead_db", CASES, indirect=True, ids=lambda c: f"{c[0]}-{c[1]}")
def test_dead_run_then_a_failing_run_leaves_the_target_as_before_the_first_run(dead_db):
    database, point = dead_db
    engine = _engine(database)
    try:
        seed(engine)
        before = fingerprint(engine)
        dead_pid = kill_worker(database.sqlalchemy_url, point)
        ledger = Ledger(engine, PLAN_ID)
        r2 = _take_over(ledger, dead_pid)
        plan = parse_plan(plan_text(failing_last=True))
        with LockKeeper(ledger, ledger.acquire_lock(r2, TTL), TTL) as keeper:
            runner = StepRunner(engine, dialect_for(engine), ledger, r2, keeper, plan=plan)
            with pytest.raises(MigrateError, match="flag_customers"):
                apply_steps(runner, plan)
            report = rollback_run(ledger, runner, r2, backup_before(ledger, r2))
        # newest first; where DDL auto-commits (MariaDB), the failed step's own ALTER stayed and is reverted first
        assert [r.step_id for r in report.reverted][-2:] == ["copy_items", "create_items"]
        assert ledger.applied() == {}
        assert fingerprint(engine) == before
    finally:
        engine.dispose()


def test_dead_run_backup_is_inherited_and_the_rollback_checks_against_it(sqlite_database):
    engine = _engine(sqlite_database)
    try:
        seed(engine)
        before = fingerprint(engine)
        dead_pid = kill_worker(sqlite_database.sqlalchemy_url, "batch:3", backup=True)
        ledger = Ledger(engine, PLAN_ID)
        dead_backup = [b for b in BackupCatalog(engine, PLAN_ID).all() if b.run_id == "r1"]
        assert len(dead_backup) == 1 and dead_backup[0].status == "verified"
        r2 = _take_over(ledger, dead_pid)
        plan = parse_plan(plan_text(failing_last=True, backup=True))
        with LockKeeper(ledger, ledger.acquire_lock(r2, TTL), TTL) as keeper:
            runner = StepRunner(engine, dialect_for(engine), ledger, r2, keeper, plan=plan)
            from airflow_migrate_provider.core.backup.make import make_backup

            own = make_backup(engine, dialect_for(engine), plan, r2)  # taken after the dead run's changes
            backup = backup_before(ledger, r2)
            assert backup is not None and backup.id == dead_backup[0].id != own.id
            with pytest.raises(MigrateError):
                apply_steps(runner, plan)
            report = rollback_run(ledger, runner, r2, backup)
        assert report.tables and all(t.equal for t in report.tables)
        assert fingerprint(engine) == before
    finally:
        engine.dispose()


# -- lock liveness -------------------------------------------------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def _held_by(ledger: Ledger, run_id: str, host: str, pid: int, backend: int | None) -> None:
    lease = ledger.acquire_lock(RunIdentity("dead_dag", run_id, 1, host=host, pid=pid), TTL)
    ledger.mark_working(lease, host, pid, backend)


def test_takeover_of_a_dead_same_host_holder_is_instant_and_a_live_one_is_refused(engine):
    ledger = Ledger(engine, "liveness")
    ledger.ensure()
    _held_by(ledger, "alive", HOST, os.getpid(), None)
    with pytest.raises(LockHeld, match=f"pid {os.getpid()} running on {HOST}"):
        ledger.acquire_lock(_new_run(), TTL)
    assert "alive: pid" in lock_line(ledger)
    ledger.release_lock(RunIdentity("dead_dag", "alive"))

    dead = _dead_pid()
    _held_by(ledger, "r1", HOST, dead, None)
    lease = ledger.acquire_lock(_new_run(), TTL)
    assert lease.took_over_from is not None
    assert f"pid {dead} gone on {HOST}" in ledger.lock_events()[-1].detail["why"]


@pytest.mark.parametrize("database", ["postgresql", "mariadb"], indirect=True)
def test_takeover_when_the_holders_database_session_is_gone(engine):
    ledger = Ledger(engine, "sessions")
    ledger.ensure()
    dialect = dialect_for(engine)
    holder = create_engine(engine.url)  # the holder's own process, as far as the server can tell
    try:
        with dialect.working_session(holder, ledger.presence_name) as live:
            assert live is not None
            _held_by(ledger, "r1", "another-host", 4242, live)  # a pid on another host: only the session tells
            with pytest.raises(LockHeld, match=f"database session {live}"):
                ledger.acquire_lock(_new_run(), TTL)
    finally:
        holder.dispose()  # its sessions end, as a dead process's do
    for _ in range(50):  # the server ends the session a moment after the client closes it
        if dialect.backend_alive(engine, live) is False:
            break
        time.sleep(0.1)
    lease = ledger.acquire_lock(_new_run(), TTL)
    assert lease.took_over_from is not None
    assert f"its database session {live} is gone" in ledger.lock_events()[-1].detail["why"]


@pytest.mark.parametrize("database", ["postgresql"], indirect=True)
def test_takeover_ends_the_statement_postgresql_still_runs_for_a_dead_holder(engine, database):
    dead_pid = kill_worker(database.sqlalchemy_url, "sql")
    tag = session_tag(HOST, dead_pid)
    active = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :t AND query LIKE '%pg_sleep%'"
    with engine.connect() as conn:
        for _ in range(50):  # the child printed before sending the statement
            if conn.execute(text(active), {"t": tag}).scalar():
                break
            time.sleep(0.1)
        assert conn.execute(text(active), {"t": tag}).scalar() == 1, "PostgreSQL ended the statement by itself"
    ledger = Ledger(engine, PLAN_ID)
    lease = ledger.acquire_lock(_new_run(), TTL)
    assert lease.took_over_from is not None
    assert ledger.lock_events()[-1].detail["ended_sessions"]
    with engine.connect() as conn:
        assert conn.execute(text(active), {"t": tag}).scalar() == 0


def test_takeover_waits_for_a_deferred_holder_and_renewal_keeps_the_extension(engine):
    ledger = Ledger(engine, "deferred")
    ledger.ensure()
    r1 = RunIdentity("dead_dag", "r1", 1, host=HOST, pid=_dead_pid())
    lease = ledger.acquire_lock(r1, 1)
    with LockKeeper(ledger, lease, 1):
        pass  # the task ended normally (it deferred): its pid is no longer named
    assert ledger.lock_holder()["holder_pid"] is None
    from datetime import timedelta

    assert ledger.hold_until(r1, utcnow() + timedelta(seconds=60))
    ledger.renew_lock(lease, 1)  # a renewal never shortens the hold
    time.sleep(1.2)
    with pytest.raises(LockHeld):
        ledger.acquire_lock(_new_run(), TTL)
    assert not ledger.hold_until(_new_run(), utcnow() + timedelta(seconds=60))


def test_takeover_columns_are_added_to_a_ledger_made_before_them(sqlite_database):
    from airflow_migrate_provider.core import ledger as ledger_module

    engine = _engine(sqlite_database)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE {LOCK_TABLE} (plan_id VARCHAR(63) PRIMARY KEY, holder_run "
                                 "VARCHAR(500) NOT NULL, holder VARCHAR(1000) NOT NULL, token VARCHAR(36) NOT NULL, "
                                 "acquired_at DATETIME NOT NULL, renewed_at DATETIME NOT NULL, expires_at DATETIME "
                                 "NOT NULL)")
        ledger_module._upgraded.discard(engine.url.render_as_string(hide_password=True))
        ledger = Ledger(engine, "old")
        ledger.ensure()
        from sqlalchemy import inspect

        assert {"holder_host", "holder_pid", "holder_backend"} <= {c["name"] for c in
                                                                   inspect(engine).get_columns(LOCK_TABLE)}
        dead = _dead_pid()
        _held_by(ledger, "r1", HOST, dead, None)
        assert ledger.acquire_lock(_new_run(), TTL).took_over_from is not None
    finally:
        engine.dispose()


def test_takeover_by_a_restore_leaves_the_dead_run_to_the_next_migration_run(engine):
    ledger = Ledger(engine, "restore_first")
    ledger.ensure()
    _held_by(ledger, "r1", HOST, _dead_pid(), None)
    restore = RunIdentity("airflow-migrate-cli", "restore-x", host=HOST, pid=os.getpid())
    assert ledger.acquire_lock(restore, TTL, inherit=False).took_over_from is not None
    assert ledger.run_chain(restore.run_key) == [restore.run_key]
    assert ledger.release_lock(restore)
    lease = ledger.acquire_lock(_new_run(), TTL)  # a fresh lock, but the dead run never completed
    assert lease.took_over_from is not None and "run 'r1'" in lease.took_over_from
    assert ledger.run_chain("dead_dag/r2") == ["dead_dag/r1", "dead_dag/r2"]
