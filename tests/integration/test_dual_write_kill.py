"""kill -9 during a dual_write replay (issue 13): the replay resumes from its checkpoint, nothing is lost, nothing
is duplicated, and replaying a change twice is harmless.

Each test seeds the old table, installs capture, copies the history while writer threads (dual_write_support.
Writers) insert, update, move keys and delete, then piles up tens of thousands of captured changes with bulk
statements (updates, key moves, deletes, inserts), each applied to the writers' model of every acknowledged
write as well. The replay then runs in a child process (dual_write_kill_worker.py: the replay task's own code
path, ``DualWriteKind.replay``) with small batches, and the test SIGKILLs it again and again: once its
checkpoint has moved on, at a random moment, and while a batch stands between its two commits (new table plus
checkpoint committed, its change rows not yet deleted). After every kill the new table must already equal the
old one for every key that has no change row left (a lost change shows up here, not only at the end). Then the
replay runs to completion in the test process, and the new table must hold exactly the writers' model and equal
the old table through the transform, with an empty change table and a checkpoint that counted every change.

Pairings: PostgreSQL to PostgreSQL (two databases: two commits per batch), MariaDB (one database, but two
commits per batch as between two) and SQLite (one file, users → users_v2 with a JSON column: one transaction per
batch).

Kill moments come from ``random.Random(SEED)`` (printed; set ``DUAL_WRITE_KILL_SEED`` to replay a run).
"""

from __future__ import annotations

import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from airflow_migrate_provider.core.backfill.state import loads
from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.kinds import kind_named
from airflow_migrate_provider.core.kinds.dual_write import FORWARD_SLOT, capture_names, history_copy
from airflow_migrate_provider.core.ledger import BACKFILL_TABLE, Ledger
from airflow_migrate_provider.plan.loader import parse_plan
from tests.integration.dual_write_support import (
    Writers,
    assert_holds_every_write,
    assert_same,
    create_same_layout,
    prepared_engine,
    seed_users,
    seeded_model,
    table_state,
)
from tests.integration.migrate_it_support import plan_yaml, who

WORKER = Path(__file__).with_name("dual_write_kill_worker.py")
SEED = int(os.environ.get("DUAL_WRITE_KILL_SEED") or random.SystemRandom().randrange(2**32))
PLAN_ID = "dw_kill"
BATCH_CHANGES = 100  # small batches: the replay takes long enough to be killed many times in the middle

STEP = """
  - id: sync_users
    kind: dual_write
    source: {{table: users}}
    target: users_v2
    key: id
    columns: {columns}
    chunks: 2
    batch: {{rows: 1000, seconds: null}}
    replay: {{batch_changes: {batch}}}
    catch_up: {{max_lag_changes: 0, max_lag_seconds: 3600, timeout_minutes: 5}}
"""
SQLITE_COLUMNS = ('{preferences: "json_object(\'theme\', theme, \'notifications\', json(CASE WHEN notifications '
                  'THEN \'true\' ELSE \'false\' END))"}')


# -- the databases ------------------------------------------------------------------------------------

@dataclass
class Pairing:
    """Where the old table (users) and the new one (users_v2) live, and how to compare them."""

    name: str
    source_url: str
    target_url: str
    source: Engine
    target: Engine
    layout: str  # how dual_write_support.table_state reads the new table
    columns: str  # the step's transform
    expected_sql: str  # on the source: the old table through the transform
    actual_sql: str  # on the target: the new table
    one_transaction: bool = False  # a batch commits the new table and forgets its changes at once (SQLite)

    @property
    def one_database(self) -> bool:
        return self.source_url == self.target_url

    def plan_text(self, batch: int = BATCH_CHANGES) -> str:
        connections = "{target: app_db}" if self.one_database else "{target: app_db, source: old_db}"
        return plan_yaml(STEP.format(columns=self.columns, batch=batch), plan_id=PLAN_ID, connections=connections)



@pytest.fixture(params=["pg_to_pg", "sqlite", "mariadb"])
def pairing(request: pytest.FixtureRequest, pg_database_factory, tmp_path) -> Iterator[Pairing]:
    if request.param == "mariadb":
        with request.getfixturevalue("mariadb_database_factory")() as db:
            engine = prepared_engine(db.sqlalchemy_url)
            create_same_layout(engine)
            yield Pairing("mariadb", db.sqlalchemy_url, db.sqlalchemy_url, engine, engine, "old", "{}",
                          "SELECT id, email, theme, notifications FROM users",
                          "SELECT id, email, theme, notifications FROM users_v2")
            engine.dispose()
        return
    if request.param == "pg_to_pg":
        with pg_database_factory() as src_db, pg_database_factory() as tgt_db:
            source, target = prepared_engine(src_db.sqlalchemy_url), prepared_engine(tgt_db.sqlalchemy_url)
            create_same_layout(target)
            yield Pairing("pg_to_pg", src_db.sqlalchemy_url, tgt_db.sqlalchemy_url, source, target, "old", "{}",
                          "SELECT id, email, theme, notifications FROM users",
                          "SELECT id, email, theme, notifications FROM users_v2")
            source.dispose()
            target.dispose()
        return
    url = f"sqlite:///{(tmp_path / 'app.sqlite').resolve()}"
    engine = prepared_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE users_v2 (id INTEGER PRIMARY KEY, email TEXT NOT NULL, preferences TEXT "
                             "NOT NULL CHECK (json_valid(preferences)))")
    yield Pairing("sqlite", url, url, engine, engine, "new_sqlite", SQLITE_COLUMNS,
                  "SELECT id, email, json_object('theme', theme, 'notifications', json(CASE WHEN notifications THEN "
                  "'true' ELSE 'false' END)) FROM users",
                  "SELECT id, email, preferences FROM users_v2", one_transaction=True)
    engine.dispose()


def _context(p: Pairing, batch: int = BATCH_CHANGES) -> tuple[RunContext, Any]:
    plan = parse_plan(p.plan_text(batch))
    ledger = Ledger(p.target, plan.id)
    ledger.ensure()
    ctx = RunContext(p.target, dialect_for(p.target), ledger, who("kill"), plan=plan,
                     source=None if p.one_database else p.source, sleep=lambda s: None)
    return ctx, plan.steps[0]


def _scalar(engine: Engine, sql: str, params: dict[str, Any] | None = None) -> Any:
    with engine.connect() as conn:
        return conn.execute(text(sql), params or {}).scalar()


# -- piling up captured changes -----------------------------------------------------------------------

def _insert_rows(engine: Engine, ids: range, model: dict[int, tuple[Any, ...]]) -> None:
    with engine.begin() as conn:
        for start in range(ids.start, ids.stop, 500):
            part = range(start, min(start + 500, ids.stop))
            values = ", ".join(f"({k}, 'b{k}@example.com', 'bulk', {'TRUE' if k % 2 == 0 else 'FALSE'})"
                               for k in part)
            conn.exec_driver_sql(f"INSERT INTO users (id, email, theme, notifications) VALUES {values}")
    model.update({k: (f"b{k}@example.com", "bulk", k % 2 == 0) for k in ids})


def _update_rows(engine: Engine, mod: int, rem: int, theme: str, model: dict[int, tuple[Any, ...]]) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE users SET theme = :t, notifications = NOT notifications WHERE id % {mod} = {rem}"),
                     {"t": theme})
    for k in [k for k in model if k % mod == rem]:
        email, _, notifications = model[k]
        model[k] = (email, theme, not notifications)


def _move_keys(engine: Engine, mod: int, rem: int, offset: int, model: dict[int, tuple[Any, ...]]) -> None:
    """Key updates: ``id += offset`` (offsets are distinct powers of two times 10M: no key can collide)."""
    with engine.begin() as conn:
        conn.execute(text(f"UPDATE users SET id = id + {offset} WHERE id % {mod} = {rem}"))
    moved = [k for k in model if k % mod == rem]
    assert not set(model) & {k + offset for k in moved}
    for k in moved:
        model[k + offset] = model.pop(k)


def _delete_rows(engine: Engine, mod: int, rem: int, model: dict[int, tuple[Any, ...]]) -> None:
    with engine.begin() as conn:
        conn.execute(text(f"DELETE FROM users WHERE id % {mod} = {rem}"))
    for k in [k for k in model if k % mod == rem]:
        del model[k]


def storm(engine: Engine, model: dict[int, tuple[Any, ...]], inserts: int) -> None:
    """Bulk writes, each also applied to ``model``: rows changed several times, moved, deleted, re-inserted."""
    _insert_rows(engine, range(2_000_001, 2_000_001 + inserts), model)
    _update_rows(engine, 2, 0, "storm1", model)
    _move_keys(engine, 7, 2, 10_000_000, model)
    _delete_rows(engine, 11, 5, model)
    _update_rows(engine, 3, 1, "storm2", model)
    _move_keys(engine, 5, 1, 20_000_000, model)
    _delete_rows(engine, 13, 3, model)
    _update_rows(engine, 2, 1, "storm3", model)


@dataclass
class Captured:
    """The scenario before the replay: capture on, history copied, changes piled up."""

    ctx: RunContext
    step: Any
    writers: Writers
    change_table: str
    changes: int  # captured changes, none replayed yet


def capture_changes(p: Pairing, seed_rows: int, inserts: int, batch: int = BATCH_CHANGES) -> Captured:
    seed_users(p.source, seed_rows)
    ctx, step = _context(p, batch)
    kind_named("dual_write").capture(ctx, step)
    writers = Writers(p.source_url, threads=2, pause_s=0.001, model=seeded_model(seed_rows), seed=SEED % 10_000)
    with writers:
        writers.wait_for(50)
        copied = history_copy(ctx, step).copy_all()
        writers.wait_for(writers.writes + 300)
    assert writers.ops["error"] == 0, writers.errors[:3]
    assert copied > 0 and writers.ops["key_update"] > 0 and writers.ops["delete"] > 0, writers.ops
    storm(p.source, writers.model, inserts)
    assert_holds_every_write(writers, p.source, "users")  # the model is right about the old table
    change_table = capture_names(ctx.plan_id, step).change_table
    changes = int(_scalar(p.source, f"SELECT count(*) FROM {change_table}"))
    ops = dict(_rows(p.source, f"SELECT op, count(*) FROM {change_table} GROUP BY op"))
    print(f"{p.name}: {copied:,} rows copied, writers {writers.ops}; {changes:,} changes captured {ops}")
    return Captured(ctx, step, writers, change_table, changes)


def _rows(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(text(sql))]


# -- observing the replay -----------------------------------------------------------------------------

def checkpoint(observer: Engine) -> tuple[int, int | None]:
    """(changes counted by the replay's checkpoint, seq of the last change it replayed)."""
    with observer.connect() as conn:
        row = conn.execute(text(f"SELECT rows_copied, position FROM {BACKFILL_TABLE} WHERE plan_id = :p AND "
                                f"step_id = 'sync_users' AND chunk = :c"), {"p": PLAN_ID, "c": FORWARD_SLOT}).first()
    if row is None:
        return 0, None
    position = loads(row[1])
    return int(row[0]), (int(position[0]) if position else None)


def assert_replayed_keys_match(p: Pairing, change_table: str, tag: str) -> int:
    """Every key without a change row left is already equal in both tables (a lost change fails here): the
    number of keys still pending."""
    pending = {int(r[0]) for r in _rows(p.source, f"SELECT DISTINCT k_id FROM {change_table}")}
    expected, actual = table_state(p.source, "users"), table_state(p.target, "users_v2", p.layout)
    wrong = sorted(k for k in (set(expected) | set(actual)) - pending if expected.get(k) != actual.get(k))
    assert not wrong, (f"{tag}: {len(wrong)} keys with no change left to replay differ, e.g. "
                       f"{[(k, expected.get(k), actual.get(k)) for k in wrong[:5]]}")
    return len(pending)


class Worker:
    """The replay in a child process; its stdout lines arrive on a queue."""

    def __init__(self, p: Pairing, plan: str, run_id: str, stall_at: int | None, stderr: Path):
        self.app = f"dw-kill-{run_id}"
        cfg = {"source_url": _tagged(p.source_url, self.app), "target_url": _tagged(p.target_url, self.app),
               "plan": plan, "run_id": run_id, "stall_at": stall_at}
        self.stderr = stderr
        with stderr.open("wb") as err:
            self.proc = subprocess.Popen([sys.executable, str(WORKER), json.dumps(cfg)], stdout=subprocess.PIPE,
                                         stderr=err, text=True, cwd=str(WORKER.parent))
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout_s: float = 30.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                line = self.lines.get(timeout=max(deadline - time.monotonic(), 0.001))
            except queue.Empty:
                raise AssertionError(f"no '{prefix}' from the worker in {timeout_s} s; {self.trace()}") from None
            if line is None:
                raise AssertionError(f"the worker ended before '{prefix}'; {self.trace()}")
            self.seen.append(line)
            if line.startswith(prefix):
                return line

    def last_line(self) -> str:
        """The last line the worker printed (once it is stopped)."""
        while not self.lines.empty():
            line = self.lines.get()
            if line is not None:
                self.seen.append(line)
        return self.seen[-1] if self.seen else "nothing"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def trace(self) -> str:
        return f"exit {self.proc.poll()}, stdout tail {self.seen[-3:]}, stderr: {self.stderr.read_text()[-2000:]}"

    def kill(self) -> None:
        assert self.alive(), f"the replay was over before the kill: {self.trace()}"
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait(30)
        self.reader.join(10)  # the pipe's end: the reader is done with it
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _tagged(url: str, app: str) -> str:
    """A PostgreSQL URL whose sessions show ``app`` in pg_stat_activity (other URLs unchanged)."""
    return str(make_url(url).update_query_dict({"application_name": app})) if url.startswith("postgresql") else url


def wait_for_sessions_to_end(p: Pairing, app: str, timeout_s: float = 30.0) -> None:
    """A killed client's last COMMIT may still be running in its server process: wait until the server has ended
    every session of ``app``, so that what the test reads next no longer changes under it."""
    if p.source_url.startswith("mysql"):
        _wait_for_mariadb_sessions(p, timeout_s)
    if not p.source_url.startswith("postgresql"):
        return
    deadline = time.monotonic() + timeout_s
    while _scalar(p.target, "SELECT count(*) FROM pg_stat_activity WHERE application_name = :a", {"a": app}):
        assert time.monotonic() < deadline, f"sessions of {app} outlived their killed client"
        time.sleep(0.01)


def _wait_for_mariadb_sessions(p: Pairing, timeout_s: float) -> None:
    """MariaDB: until no other session of the test database runs a statement or holds a transaction (a killed
    client's session ends once its statement, a COMMIT say, is done)."""
    busy = ("SELECT (SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE() AND id <> "
            "CONNECTION_ID() AND command <> 'Sleep') + (SELECT count(*) FROM information_schema.innodb_trx t JOIN "
            "information_schema.processlist s ON s.id = t.trx_mysql_thread_id WHERE s.db = DATABASE() AND s.id <> "
            "CONNECTION_ID())")
    deadline = time.monotonic() + timeout_s
    while _scalar(p.target, busy):
        assert time.monotonic() < deadline, "sessions of a killed worker outlived it"
        time.sleep(0.01)


@dataclass
class KillLog:
    """What the kills hit."""

    lines: list[str] = field(default_factory=list)
    counted_twice: int = 0  # changes whose replay committed but whose change rows survived a kill
    between_commits: int = 0  # kills that landed there


# how each worker is stopped: after its checkpoint moved on (at a random point of a batch), at a random moment
# after it started, or stalled before deleting the change rows of a batch whose replay has committed
KILLS = ("progress", "between_commits", "random", "progress", "between_commits", "progress")


def kill_once(p: Pairing, cap: Captured, how: str, n: int, rng: random.Random, observer: Engine, tmp: Path,
              log: KillLog) -> None:
    before, _ = checkpoint(observer)
    stall_at = rng.randint(2, 6) if how == "between_commits" else None
    worker = Worker(p, p.plan_text(), f"kill{n}", stall_at, tmp / f"worker{n}.err")
    try:
        worker.wait_for("ready")
        if how == "between_commits":
            worker.wait_for("stall")
        elif how == "random":
            time.sleep(rng.uniform(0.0, 0.5))
        else:  # after a random stretch of progress, at a random point of a batch
            goal = before + rng.randint(cap.changes // 20, cap.changes // 10)
            deadline = time.monotonic() + 30
            while checkpoint(observer)[0] < goal:
                assert worker.alive(), f"the worker ended before the kill: {worker.trace()}"
                assert time.monotonic() < deadline, f"no progress to {goal} changes: {worker.trace()}"
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.05))
        worker.kill()
    finally:
        worker.stop()
    wait_for_sessions_to_end(p, worker.app)
    replayed, last_seq = checkpoint(observer)
    lag = int(_scalar(p.source, f"SELECT count(*) FROM {cap.change_table}"))
    # change rows that a batch of this worker replayed and counted (its checkpoint names them) but whose deletion
    # the kill prevented: they replay, and count, again (without a committed batch, rows left by an earlier kill)
    left = 0 if last_seq is None else int(_scalar(
        p.source, f"SELECT count(*) FROM {cap.change_table} WHERE seq <= :s", {"s": last_seq}))
    again = left if replayed > before else 0
    assert lag > 0, f"kill {n} ({how}) came after the replay had caught up: it proved nothing"
    if how == "between_commits":
        # two databases: the new table and the checkpoint committed, the change rows not yet deleted; one SQLite
        # file: the kill rolled back the batch's only transaction
        assert again == (0 if p.one_transaction else BATCH_CHANGES), f"kill {n}: {again} changes left behind"
    if p.one_transaction:
        assert left == 0, f"kill {n}: the checkpoint names changes still in the change table on one database"
    assert replayed >= cap.changes - lag, f"kill {n}: changes deleted from the change table were never counted"
    pending = assert_replayed_keys_match(p, cap.change_table, f"after kill {n} ({how})")
    log.counted_twice += again
    log.between_commits += again > 0
    log.lines.append(f"kill {n} ({how}{f', stalled at batch {stall_at}' if stall_at else ''}): checkpoint "
                     f"{before:,} → {replayed:,} changes, {lag:,} left ({pending:,} keys), {again} counted to "
                     f"replay again; the worker's last word: '{worker.last_line()}'")


# -- the tests ----------------------------------------------------------------------------------------

@pytest.mark.timeout(180)  # 13-25 s alone; up to ~70 s on MariaDB next to the DAG tests on 2 cores
def test_replay_killed_mid_way_resumes_without_loss_or_duplicates(pairing: Pairing, tmp_path: Path) -> None:
    t0 = time.monotonic()
    rng = random.Random(SEED)
    print(f"seed {SEED} (DUAL_WRITE_KILL_SEED)")
    cap = capture_changes(pairing, seed_rows=15_000, inserts=5_000)
    assert cap.changes >= 20_000
    t_captured = time.monotonic()

    observer = create_engine(pairing.target_url)  # plain reads (SQLite: no BEGIN IMMEDIATE, no write lock)
    log = KillLog()
    try:
        for n, how in enumerate(KILLS, 1):
            kill_once(pairing, cap, how, n, rng, observer, tmp_path, log)
        t_killed = time.monotonic()

        # resume: the replay task runs again (here in the test process, with bigger batches: replay.batch_changes
        # is tuning, not part of the step's checksum) and catches up from the checkpoint
        ctx, step = _context(pairing, batch=2_000)
        totals = kind_named("dual_write").replay(ctx, step)
        t_resumed = time.monotonic()
        replayed, _ = checkpoint(observer)
    finally:
        observer.dispose()
    print("\n".join(log.lines))
    print(f"{pairing.name}: {len(KILLS)} kills ({log.between_commits} between a batch's commits), then "
          f"{totals.line()}")

    assert totals.lag_changes == 0
    assert _scalar(pairing.source, f"SELECT count(*) FROM {cap.change_table}") == 0
    # the new table holds exactly every acknowledged write: 0 lost, 0 divergent, 0 resurrected ...
    rows = assert_holds_every_write(cap.writers, pairing.target, "users_v2", pairing.layout)
    # ... and equals the old table through the transform, row for row, with no key twice
    assert assert_same(pairing.source, pairing.expected_sql, pairing.target, pairing.actual_sql) == rows
    counts = _rows(pairing.target, "SELECT count(*), count(DISTINCT id) FROM users_v2")[0]
    assert counts == (rows, rows) == (len(cap.writers.model), _scalar(pairing.source, "SELECT count(*) FROM users"))
    # every captured change was counted by a committed batch; a batch killed between its two commits (new table
    # and checkpoint committed, change rows not yet deleted) is replayed again and counted again — harmless,
    # since a replay writes each key's current row — so the count is the captured changes plus exactly those
    assert replayed >= cap.changes
    assert replayed == cap.changes + log.counted_twice, (replayed, cap.changes, log.counted_twice)
    if not pairing.one_transaction:
        assert log.between_commits >= 2 and log.counted_twice > 0
    print(f"{pairing.name} timings: setup and capture {t_captured - t0:.1f} s, {len(KILLS)} kills "
          f"{t_killed - t_captured:.1f} s, resume {t_resumed - t_killed:.1f} s, checks "
          f"{time.monotonic() - t_resumed:.1f} s")


@pytest.mark.timeout(60)
def test_replaying_changes_twice_is_harmless(pairing: Pairing) -> None:
    cap = capture_changes(pairing, seed_rows=3_000, inserts=1_000, batch=500)
    replayed_rows = _rows(pairing.source, f"SELECT op, k_id FROM {cap.change_table}")
    kind = kind_named("dual_write")
    assert kind.replay(cap.ctx, cap.step).lag_changes == 0
    rows = assert_holds_every_write(cap.writers, pairing.target, "users_v2", pairing.layout)
    before = table_state(pairing.target, "users_v2", pairing.layout)

    # the change rows of keys that were updated, moved (old and new key), deleted and inserted, back in the
    # change table by hand, as if their deletion after the replay had been lost
    again = random.Random(SEED).sample(replayed_rows, 2_000)
    with pairing.source.begin() as conn:
        conn.execute(text(f"INSERT INTO {cap.change_table} (op, k_id) VALUES (:op, :k)"),
                     [{"op": op, "k": k} for op, k in again])
    gone = {k for _, k in again} - set(before)
    assert gone and {op for op, _ in again} >= {"I", "U", "D"}, "the sample should hold deleted and moved keys"
    totals = kind.replay(cap.ctx, cap.step)
    print(f"{pairing.name}: {len(again):,} changes replayed again ({len(gone):,} of keys now gone): {totals.line()}")

    assert totals.changes == len(again) and totals.lag_changes == 0
    assert table_state(pairing.target, "users_v2", pairing.layout) == before  # unchanged: no row back, none lost
    assert assert_holds_every_write(cap.writers, pairing.target, "users_v2", pairing.layout) == rows
    assert assert_same(pairing.source, pairing.expected_sql, pairing.target, pairing.actual_sql) == rows
    assert _scalar(pairing.source, f"SELECT count(*) FROM {cap.change_table}") == 0
