"""``airflow-migrate unlock``: shows the holder, asks (``--yes`` for scripts; no terminal: refuses), refuses a live
holder unless ``--force``, records who unlocked in the ledger history; the next run inherits the dead run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from sqlalchemy import create_engine

from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
from airflow_migrate_provider.core.unlock import unlock_plan
from airflow_migrate_provider.errors import UnlockRefused

PLAN_ID = "unlock_plan"
HOST = socket.gethostname()


@pytest.fixture
def setup(tmp_path: Path, sqlite_database):
    """(plan file, --conn argument, ledger) on a SQLite target."""
    plan = tmp_path / "unlock.yaml"
    plan.write_text(yaml.safe_dump({"id": PLAN_ID, "connections": {"target": "app_db"}, "steps": [
        {"id": "one", "up": "CREATE TABLE t1 (id INTEGER)", "down": "DROP TABLE t1",
         "verify": "SELECT count(*) = 0 FROM t1"}]}))
    engine = create_engine(sqlite_database.sqlalchemy_url)
    dialect_for(engine)
    ledger = Ledger(engine, PLAN_ID)
    ledger.ensure()
    yield plan, f"app_db={sqlite_database.airflow_uri}", ledger
    engine.dispose()


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def _lock(ledger: Ledger, run_id: str, pid: int | None) -> RunIdentity:
    owner = RunIdentity("unlock_dag", run_id, 1, host=HOST, pid=pid or 0)
    lease = ledger.acquire_lock(owner, 600)
    if pid is not None:
        ledger.mark_working(lease, HOST, pid, None)
    return owner


def test_unlock_a_free_lock_says_so(cli, setup):
    plan, conn, _ = setup
    result = cli("unlock", plan, "--conn", conn)
    assert result.returncode == 0, result.stderr
    assert "the lock is free; nothing to unlock" in result.stdout


def test_unlock_a_dead_holder_needs_yes_without_a_terminal_then_records_who(cli, setup):
    plan, conn, ledger = setup
    dead = _dead_pid()
    _lock(ledger, "r1", dead)
    refused = cli("unlock", plan, "--conn", conn)
    assert refused.returncode == 1
    assert "no terminal to confirm on: pass --yes" in refused.stderr
    assert f"dead: pid {dead} gone on {HOST}" in refused.stderr
    assert ledger.lock_holder() is not None

    done = cli("unlock", plan, "--conn", conn, "--yes")
    assert done.returncode == 0, done.stderr
    assert "unlocked by" in done.stdout and "run 'r1'" in done.stdout
    assert ledger.lock_holder() is None
    event = ledger.lock_events()[-1]
    assert event.action == "unlock" and event.from_run == "unlock_dag/r1" and not event.inherits
    assert event.detail["by"].endswith(f"@{HOST}") and "run 'r1'" in event.detail["from_holder"]
    assert "unlock" in event.run_key

    lease = ledger.acquire_lock(RunIdentity("unlock_dag", "r2"), 600)  # the next run inherits the dead one
    assert lease.took_over_from is not None and "run 'r1'" in lease.took_over_from
    assert ledger.run_chain("unlock_dag/r2") == ["unlock_dag/r1", "unlock_dag/r2"]
    ledger.release_lock(RunIdentity("unlock_dag", "r2"))
    assert ledger.acquire_lock(RunIdentity("unlock_dag", "r3"), 600).took_over_from is None  # claimed once


def test_unlock_refuses_a_live_holder_unless_forced(cli, setup):
    plan, conn, ledger = setup
    _lock(ledger, "alive", os.getpid())
    refused = cli("unlock", plan, "--conn", conn, "--yes")
    assert refused.returncode == 1
    assert "it is alive" in refused.stderr and "--force" in refused.stderr
    assert ledger.lock_holder()["holder_run"] == "unlock_dag/alive"

    forced = cli("unlock", plan, "--conn", conn, "--yes", "--force")
    assert forced.returncode == 0, forced.stderr
    assert ledger.lock_holder() is None


def test_unlock_refuses_an_unexpired_lock_of_unknown_liveness(cli, setup):
    plan, conn, ledger = setup
    _lock(ledger, "between_tasks", None)  # no task working: only the expiry could tell
    refused = cli("unlock", plan, "--conn", conn, "--yes")
    assert refused.returncode == 1 and "not expired" in refused.stderr
    assert ledger.lock_holder() is not None


def test_unlock_not_confirmed_keeps_the_lock(setup):
    _, _, ledger = setup
    _lock(ledger, "r1", _dead_pid())
    asked: list[str] = []
    with pytest.raises(UnlockRefused, match="not confirmed"):
        unlock_plan(ledger, force=False, confirm=lambda q: asked.append(q) or False)
    assert "locked by dag 'unlock_dag' run 'r1'" in asked[0]
    assert ledger.lock_holder() is not None
    assert unlock_plan(ledger, force=False, confirm=lambda q: True, by="ops@box").startswith(
        f"plan '{PLAN_ID}': unlocked by ops@box")
