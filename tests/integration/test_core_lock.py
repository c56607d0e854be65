"""The run lock against real SQLite, PostgreSQL and MariaDB: races (threads, processes), takeover, renewal."""

from __future__ import annotations

import logging
import multiprocessing
import queue
import threading
import time
from datetime import timedelta

import pytest
from migrate_it_support import make_plan, race_worker, runner_for, table_names, who

from airflow_migrate_provider.core.ledger import HISTORY_TABLE, LOCK_TABLE, Ledger, as_utc, metadata
from airflow_migrate_provider.core.lock_keeper import LockKeeper
from airflow_migrate_provider.core.steps import StepRunner
from airflow_migrate_provider.errors import LockHeld, LockLost

ROUNDS = 5
LEDGER_LOG = "airflow_migrate_provider.core.ledger"


def _race(targets: list) -> list:
    """Run the callables in threads released together; return what each returned or raised."""
    barrier = threading.Barrier(len(targets))
    results: list = [None] * len(targets)

    def run(index: int) -> None:
        barrier.wait(timeout=30)
        try:
            results[index] = ("ok", targets[index]())
        except Exception as exc:
            results[index] = ("raised", exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(targets))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a racing thread hung"
    return results


def test_racing_ensure_on_fresh_database_threads(engine):
    for _ in range(ROUNDS):
        metadata.drop_all(engine)
        assert not {HISTORY_TABLE, LOCK_TABLE} & table_names(engine)
        results = _race([Ledger(engine, "p1").ensure, Ledger(engine, "p2").ensure])
        assert [r[0] for r in results] == ["ok", "ok"], results
        assert Ledger(engine, "p1").exists()


def test_racing_acquire_threads_exactly_one_wins(engine):
    Ledger(engine, "race").ensure()
    runs = ["r1", "r2"]
    for n in range(ROUNDS):
        plan_id = f"race_{n}"
        results = _race([lambda run=run, plan_id=plan_id: Ledger(engine, plan_id).acquire_lock(who(run), 60)
                         for run in runs])
        winners = [runs[i] for i, r in enumerate(results) if r[0] == "ok"]
        losers = [r[1] for r in results if r[0] == "raised"]
        assert len(winners) == 1 and len(losers) == 1, results
        assert isinstance(losers[0], LockHeld), repr(losers[0])
        assert f"run '{winners[0]}'" in losers[0].holder
        assert f"run '{winners[0]}'" in str(losers[0])
        assert Ledger(engine, plan_id).lock_holder()["holder_run"] == f"d/{winners[0]}"


def test_racing_ensure_and_acquire_processes_exactly_one_wins(database):
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    results = ctx.Queue()
    procs = [ctx.Process(target=race_worker, args=(database.sqlalchemy_url, run, ROUNDS, barrier, results))
             for run in ("p1", "p2")]
    for p in procs:
        p.start()
    got = []
    try:
        for _ in range(2 * (ROUNDS + 1)):
            got.append(results.get(timeout=60))
    except queue.Empty:
        pytest.fail(f"racing processes did not report in time; got {got}")
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    assert [p.exitcode for p in procs] == [0, 0]

    ensure = [g for g in got if g[0] == "ensure"]
    assert [g[3] for g in ensure] == ["ok", "ok"], ensure
    for n in range(ROUNDS):
        outcomes = {g[1]: g[3] for g in got if g[0] == "lock" and g[2] == n}
        won = [run for run, outcome in outcomes.items() if outcome == "won"]
        held = [outcome for outcome in outcomes.values() if outcome.startswith("held: ")]
        assert len(won) == 1 and len(held) == 1, outcomes
        assert f"run '{won[0]}'" in held[0]


def test_expired_lock_is_taken_over_with_a_warning(engine, caplog):
    ledger = Ledger(engine, "stale")
    ledger.ensure()
    run_a, run_b = who("run_a"), who("run_b")
    lease_a = ledger.acquire_lock(run_a, 1)
    with pytest.raises(LockHeld):
        ledger.acquire_lock(run_b, 60)  # still live
    time.sleep(1.2)

    with caplog.at_level(logging.WARNING, logger=LEDGER_LOG):
        lease_b = ledger.acquire_lock(run_b, 60)
    assert lease_b.took_over_from is not None and "run 'run_a'" in lease_b.took_over_from
    assert not lease_b.reentered
    warnings = [r for r in caplog.records if r.name == LEDGER_LOG and r.levelno == logging.WARNING]
    assert any("Took over the expired lock" in r.getMessage() and "run_a" in r.getMessage()
               for r in warnings), caplog.text
    assert ledger.lock_holder()["holder_run"] == "d/run_b"

    with pytest.raises(LockLost) as lost:
        ledger.renew_lock(lease_a, 60)
    assert "run 'run_a'" in str(lost.value)
    assert ledger.release_lock(run_a) is False  # A cannot drop B's lock
    assert ledger.lock_holder()["holder_run"] == "d/run_b"


def test_same_run_reenters_its_lock(engine):
    ledger = Ledger(engine, "reenter")
    ledger.ensure()
    first = ledger.acquire_lock(who("r1", 1), 60)
    again = ledger.acquire_lock(who("r1", 2), 60)
    assert again.reentered and again.took_over_from is None
    assert "try 2" in ledger.lock_holder()["holder"]
    assert ledger.renew_lock(again, 60).token == again.token
    with pytest.raises(LockLost):
        ledger.renew_lock(first, 60)  # the older try's lease was superseded
    assert ledger.release_lock(who("r1", 3)) is True
    assert ledger.lock_holder() is None


def test_lock_keeper_renews_lease(engine):
    ledger = Ledger(engine, "keeper")
    ledger.ensure()
    lease = ledger.acquire_lock(who("keeper_run"), 3)
    first_expiry = as_utc(ledger.lock_holder()["expires_at"])
    with LockKeeper(ledger, lease, 3) as keeper:
        time.sleep(4.5)
        holder = ledger.lock_holder()
        assert as_utc(holder["expires_at"]) > first_expiry + timedelta(seconds=2)
        assert as_utc(holder["renewed_at"]) > as_utc(holder["acquired_at"])
        with pytest.raises(LockHeld) as held:
            ledger.acquire_lock(who("intruder"), 3)
        assert "run 'keeper_run'" in str(held.value)
        keeper.check()  # not lost
    assert keeper.lease.expires_at > lease.expires_at
    assert not keeper._thread.is_alive()


def test_racing_takeover_of_expired_lock_has_one_winner(engine):
    ledger = Ledger(engine, "stale_race")
    ledger.ensure()
    ledger.acquire_lock(who("dead_run"), 1)
    time.sleep(1.2)
    runs = ["r1", "r2"]
    results = _race([lambda run=run: Ledger(engine, "stale_race").acquire_lock(who(run), 60) for run in runs])
    winners = [(runs[i], r[1]) for i, r in enumerate(results) if r[0] == "ok"]
    losers = [r[1] for r in results if r[0] == "raised"]
    assert len(winners) == 1 and len(losers) == 1, results
    (winner, lease), (loser,) = winners[0], losers
    assert "run 'dead_run'" in lease.took_over_from
    assert isinstance(loser, LockHeld) and f"run '{winner}'" in str(loser)


def test_step_stops_when_keeper_lost_the_lock(engine):
    plan = make_plan("""
  - id: guarded
    up: CREATE TABLE guarded (id INTEGER PRIMARY KEY);
    down: DROP TABLE guarded;
    verify: SELECT count(*) = 0 FROM guarded
""")
    me = who("slow_run")
    ledger, plain = runner_for(engine, plan.id, me)
    lease = ledger.acquire_lock(me, 1)
    time.sleep(1.2)
    ledger.acquire_lock(who("other_run"), 60)  # takes over the expired lock
    with LockKeeper(ledger, lease, 1) as keeper:
        deadline = time.monotonic() + 5
        while keeper._lost is None and time.monotonic() < deadline:
            time.sleep(0.1)
        runner = StepRunner(engine, plain.dialect, ledger, me, keeper)
        with pytest.raises(LockLost):
            runner.apply(plan.steps[0])
    assert "guarded" not in table_names(engine)  # the step's transaction was rolled back
    (row,) = ledger.rows()
    assert row.status == "failed" and "taken by another run" in row.error
    assert ledger.applied() == {}


def _hold_lock_in_child(url: str, plan_id: str, ready: multiprocessing.Event) -> None:
    """A run's task: takes the lock with a 1 s TTL, keeps its presence lock, never renews (then hangs)."""
    from sqlalchemy import create_engine

    from airflow_migrate_provider.core.dialects import dialect_for

    engine = create_engine(url)
    dialect_for(engine)
    ledger = Ledger(engine, plan_id)
    ledger.ensure()
    ledger.acquire_lock(who("alive_run"), 1)
    with ledger.presence() as held:
        assert held
        ready.set()
        time.sleep(600)


@pytest.mark.parametrize("database", ["mariadb"], indirect=True)
def test_mariadb_expired_lock_of_a_live_task_is_not_taken_over_until_its_session_ends(engine, database):
    """On MariaDB a task holding the lock also holds GET_LOCK on its own session: an expired lock whose holder is
    still connected (alive, but not renewing: a stalled renewal, a long pause) is refused; once its process dies
    (kill -9: the server ends its session) the lock is taken over at once."""
    ctx = multiprocessing.get_context("spawn")
    ready = ctx.Event()
    child = ctx.Process(target=_hold_lock_in_child, args=(database.sqlalchemy_url, "presence_plan", ready))
    child.start()
    try:
        assert ready.wait(60), "the child never took the lock"
        time.sleep(1.2)  # its lease has expired
        ledger = Ledger(engine, "presence_plan")
        assert ledger.holder_present() is True
        with pytest.raises(LockHeld, match="still connected to the database"):
            ledger.acquire_lock(who("next_run"), 60)
    finally:
        child.kill()
        child.join(30)
    deadline = time.monotonic() + 10
    while ledger.holder_present() and time.monotonic() < deadline:  # the server notices the closed socket
        time.sleep(0.1)
    lease = ledger.acquire_lock(who("next_run"), 60)
    assert lease.took_over_from is not None and "alive_run" in lease.took_over_from


@pytest.mark.parametrize("database", ["mariadb"], indirect=True)
def test_mariadb_lock_keeper_holds_presence_and_releases_it(engine):
    ledger = Ledger(engine, "keeper_plan")
    ledger.ensure()
    lease = ledger.acquire_lock(who("r1"), 60)
    assert ledger.holder_present() is False
    with LockKeeper(ledger, lease, 60):
        assert ledger.holder_present() is True
    assert ledger.holder_present() is False


@pytest.mark.parametrize("database", ["mariadb", "postgresql"], indirect=True)
def test_write_lock_blocks_updates_inserts_and_deletes_but_not_reads(engine):
    """Dialect.write_lock (the final sync's and the cutover's lock): on MariaDB a locking read over a secondary index
    would let an update of another column through; every kind of write must wait, while reads go on."""
    from airflow_migrate_provider.core.dialects import dialect_for

    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE lk (id INTEGER PRIMARY KEY, a INTEGER, b INTEGER)")
        conn.exec_driver_sql("CREATE INDEX ix_lk_a ON lk (a)")
        conn.exec_driver_sql("INSERT INTO lk VALUES (1, 1, 1), (2, 2, 2), (3, 3, 3)")
    writes = {"update": "UPDATE lk SET b = 9 WHERE id = 2", "insert": "INSERT INTO lk VALUES (10, 10, 10)",
              "delete": "DELETE FROM lk WHERE id = 1"}
    done: dict[str, str] = {}

    def write(name: str) -> None:
        with engine.begin() as conn:
            conn.exec_driver_sql(writes[name])
        done[name] = "written"

    with dialect_for(engine).write_lock(engine, ["lk"], 5):
        threads = [threading.Thread(target=write, args=(name,)) for name in writes]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        assert done == {}  # every writer waits for the lock
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM lk").scalar() == 3  # readers do not
    for thread in threads:
        thread.join(timeout=30)
    assert done == dict.fromkeys(writes, "written")  # and all of them go through once it is released
