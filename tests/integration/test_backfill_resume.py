"""Backfill crash/resume and live-source tests against real PostgreSQL (and SQLite) databases.

- SIGKILL: a child process (backfill_resume_worker.py) runs all phases of a backfill; the test kills it at
  a random moment, checks that every checkpoint matches exactly the rows committed with it, then resumes
  in-process and checks that the target equals the source (PostgreSQL on both sides: count and sum of
  hashtextextended(row) computed in SQL on each side; with SQLite on one side: the normalized rows).
- Live source: a writer thread inserts and updates source rows during phases 1-2 (and into phase 3); the
  final sync under the source lock makes the target equal to the source as of the lock.
- max_lock_seconds: an over-long lock window fails the step and releases the source lock; the wait for
  the lock is bounded too (PostgreSQL and SQLite sources). Two backfills with the same step id sharing a
  pooled target connection each get their own staging table.

Random kill moments come from ``random.Random`` seeded per trial from ``SEED`` (printed; set
``BACKFILL_RESUME_SEED`` to replay a run).
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from backfill_resume_worker import STEP_ID, backfill_runner, plan_doc
from sqlalchemy import create_engine, inspect, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine, make_url

from airflow_migrate_provider.core.backfill.state import PhaseState, loads
from airflow_migrate_provider.core.ledger import Ledger
from airflow_migrate_provider.errors import BackfillFailed
from airflow_migrate_provider.plan.model import Plan

WORKER = Path(__file__).with_name("backfill_resume_worker.py")
SEED = int(os.environ.get("BACKFILL_RESUME_SEED") or random.SystemRandom().randrange(2**32))
CHECKPOINTS = "airflow_migrate_backfill"
UTC = timezone.utc
COLS = "id, n, s, j, amount, updated_at"

# source rows: ids 1..N without multiples of 13 (gaps); every 8th id "touched" recently, so that phases
# 2 and 3 (watermark lag of one day) have ~1/8 of the table to re-copy
PG_ROWS_SQL = """
INSERT INTO {table} (id, n, s, j, amount, updated_at)
SELECT g,
       CASE WHEN g % 97 = 0 THEN NULL ELSE (g * 7919) % 100000 END,
       md5(g::text) || repeat('x', g % 40) || CASE WHEN g % 11 = 0 THEN E' tab\\there, \\\\ "q" ' ELSE '' END,
       jsonb_build_object('g', g, 'tags', jsonb_build_array(g % 3, 'a'), 'f', g / 7.0),
       round(((g * 137) % 10000000) / 100.0, 2),
       CASE WHEN g % 8 = 0 THEN timestamptz '2024-01-01 00:00:00+00' + (g % 3600) * interval '1 second'
            ELSE timestamptz '2000-01-01 00:00:00+00' + g * interval '1 second' END
FROM generate_series(1, {n}) AS g
WHERE g % 13 <> 0
"""
PG_TABLE_DDL = ("CREATE TABLE {table} (id bigint PRIMARY KEY, n integer, s text, j jsonb, amount numeric(12,2), "
                "updated_at timestamptz NOT NULL)")
MYSQL_TABLE_DDL = ("CREATE TABLE {table} (id bigint PRIMARY KEY, n int, s text, j json, amount decimal(12,2), "
                   "updated_at datetime(6) NOT NULL)")
MYSQL_ROWS_SQL = """
INSERT INTO {table} (id, n, s, j, amount, updated_at)
SELECT seq,
       CASE WHEN seq % 97 = 0 THEN NULL ELSE (seq * 7919) % 100000 END,
       CONCAT(MD5(seq), REPEAT('x', seq % 40), CASE WHEN seq % 11 = 0 THEN ' tab\there, \\ "q" ' ELSE '' END),
       JSON_OBJECT('g', seq, 'tags', JSON_ARRAY(seq % 3, 'a'), 'f', seq / 7.0),
       ROUND(((seq * 137) % 10000000) / 100.0, 2),
       CASE WHEN seq % 8 = 0 THEN TIMESTAMP'2024-01-01 00:00:00' + INTERVAL (seq % 3600) SECOND
            ELSE TIMESTAMP'2000-01-01 00:00:00' + INTERVAL seq SECOND END
FROM seq_1_to_{n}
WHERE seq % 13 <> 0
"""
SQLITE_TABLE_DDL = ("CREATE TABLE {table} (id INTEGER PRIMARY KEY, n INTEGER, s TEXT, j JSON, amount NUMERIC(12,2), "
                    "updated_at TIMESTAMP NOT NULL)")
BIG_ROWS = 65_000  # 60k rows after the gaps
SMALL_ROWS = 21_000  # ~19k rows: the generic (non-COPY) path moves rows through Python
LAG_DAY = 86_400


# -- helpers ------------------------------------------------------------------------------------------

def _create_table(engine: Engine, table: str) -> None:
    ddl = {"postgresql": PG_TABLE_DDL, "mysql": MYSQL_TABLE_DDL, "mariadb": MYSQL_TABLE_DDL}.get(
        engine.dialect.name, SQLITE_TABLE_DDL)
    with engine.begin() as conn:
        conn.exec_driver_sql(ddl.format(table=table))


def _fill_pg(engine: Engine, table: str, n: int) -> None:
    _create_table(engine, table)
    with engine.begin() as conn:
        conn.execute(text(PG_ROWS_SQL.format(table=table, n=n)))
        conn.exec_driver_sql(f"ANALYZE {table}")


def _fill_mysql(engine: Engine, table: str, n: int) -> None:
    _create_table(engine, table)
    with engine.begin() as conn:
        conn.exec_driver_sql(MYSQL_ROWS_SQL.format(table=table, n=n), execution_options={"no_parameters": True})
        conn.exec_driver_sql(f"ANALYZE TABLE {table}").all()


def _fill_sqlite(engine: Engine, table: str, n: int) -> None:
    _create_table(engine, table)
    base, recent = datetime(2000, 1, 1, tzinfo=UTC), datetime(2024, 1, 1, tzinfo=UTC)
    rows = [{"id": g, "n": None if g % 97 == 0 else (g * 7919) % 100000,
             "s": f"s{g}-" + "x" * (g % 40) + (' tab\there, \\ "q" ' if g % 11 == 0 else ""),
             "j": json.dumps({"g": g, "tags": [g % 3, "a"], "f": round(g / 7.0, 6)}),
             "amount": str(Decimal((g * 137) % 10000000) / 100),
             "updated_at": ((recent + timedelta(seconds=g % 3600)) if g % 8 == 0
                            else (base + timedelta(seconds=g))).isoformat(sep=" ")}
            for g in range(1, n + 1) if g % 13]
    with engine.begin() as conn:
        conn.execute(text(f"INSERT INTO {table} ({COLS}) VALUES (:id, :n, :s, :j, :amount, :updated_at)"), rows)


def _norm(row: Any) -> tuple[Any, ...]:
    """One row as comparable Python values, whichever database it was read from."""
    key, n, s, j, amount, ts = row
    if isinstance(j, str):
        j = json.loads(j)
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    amount = None if amount is None else Decimal(str(amount)).quantize(Decimal("0.01"))
    return int(key), n, s, json.dumps(j, sort_keys=True), amount, ts.astimezone(UTC)


def digest(engine: Engine, table: str, where: str = "", params: dict[str, Any] | None = None,
           *, sql: bool = True) -> Any:
    """An order-independent fingerprint of the rows. ``sql``: count and sum of per-row hashes computed by
    PostgreSQL (both sides must be PostgreSQL with the same column types); else the sorted, normalized rows."""
    where_sql = f" WHERE {where}" if where else ""
    with engine.connect() as conn:
        if sql:
            return tuple(conn.execute(text(
                f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) "
                f"FROM (SELECT {COLS} FROM {table}{where_sql}) AS t"), params or {}).one())
        return sorted(_norm(r) for r in conn.execute(text(f"SELECT {COLS} FROM {table}{where_sql}"), params or {}))


def _count(engine: Engine, sql: str, params: dict[str, Any] | None = None) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params or {}).scalar() or 0)


@dataclass
class Snapshot:
    """What the target's checkpoints and ledger say at one moment."""

    chunks: list[dict[str, Any]] = field(default_factory=list)
    phase: PhaseState | None = None
    status: str | None = None  # the ledger's status of the step (None: never started)

    @property
    def where(self) -> str:
        if self.phase is None:
            return "before start"
        if any(c["status"] != "done" for c in self.chunks):
            return "phase 1"
        if not self.phase.recent.get("done"):
            return "phase 2"
        return "finished" if self.status == "applied" else "phase 3"


def snapshot(target: Engine, plan_id: str) -> Snapshot:
    snap = Snapshot()
    if not inspect(target).has_table(CHECKPOINTS):
        return snap
    with target.connect() as conn:
        rows = conn.execute(text(
            f"SELECT chunk, lo, hi, position, rows_total, rows_copied, status, phase_state FROM {CHECKPOINTS} "
            f"WHERE plan_id = :p AND step_id = :s ORDER BY chunk"), {"p": plan_id, "s": STEP_ID}).all()
    for r in rows:
        if r.chunk == -1:
            snap.phase = PhaseState.from_json(r.phase_state)
        else:
            snap.chunks.append({"chunk": r.chunk, "lo": loads(r.lo), "hi": loads(r.hi), "position": loads(r.position),
                                "rows_total": int(r.rows_total), "rows_copied": int(r.rows_copied),
                                "status": r.status})
    row = Ledger(target, plan_id).applied().get(STEP_ID)
    snap.status = row.status if row is not None else None
    return snap


@dataclass
class Pair:
    """One source table and where its backfill goes."""

    name: str
    source_url: str
    source_table: str
    target_kind: str = "postgresql"
    lag_seconds: int = LAG_DAY

    @property
    def both_pg(self) -> bool:
        return self.source_url.startswith("postgresql") and self.target_kind == "postgresql"


def _tagged(url: str, app: str) -> str:
    """A PostgreSQL URL whose sessions show ``app`` in pg_stat_activity (other URLs unchanged)."""
    return str(make_url(url).update_query_dict({"application_name": app})) if url.startswith("postgresql") else url


def wait_for_mariadb_statements(urls: list[str], timeout: float = 30.0) -> None:
    """MariaDB: a SIGKILLed client's last statement may still run in its session: wait until no other session on
    these databases runs one (a session of the dead client then only waits for a command it never gets)."""
    for url in {u for u in urls if u.startswith("mysql")}:
        engine = create_engine(url)
        try:
            deadline = time.monotonic() + timeout
            while _count(engine, "SELECT count(*) FROM information_schema.processlist WHERE db = DATABASE() "
                                 "AND id <> CONNECTION_ID() AND command <> 'Sleep'"):
                assert time.monotonic() < deadline, "statements of the killed client outlived it"
                time.sleep(0.01)
        finally:
            engine.dispose()


def wait_for_sessions_to_end(urls: list[str], app: str, timeout: float = 30.0) -> None:
    """A SIGKILLed client's last COMMIT may still be running in its server process: wait until the server
    has ended every session of ``app``, so what the test reads next no longer changes under it."""
    wait_for_mariadb_statements(urls, timeout)
    for url in {u for u in urls if u.startswith("postgresql")}:
        engine = create_engine(url)
        try:
            deadline = time.monotonic() + timeout
            while _count(engine, "SELECT count(*) FROM pg_stat_activity WHERE application_name = :a", {"a": app}):
                assert time.monotonic() < deadline, f"sessions of {app} outlived their killed client"
                time.sleep(0.01)
        finally:
            engine.dispose()


def _spawn(pair: Pair, target_url: str, plan: dict[str, Any], run_id: str, stderr_path: Path) -> subprocess.Popen:
    app = f"bf-worker-{plan['id']}"
    cfg = {"source_url": _tagged(pair.source_url, app), "target_url": _tagged(target_url, app), "plan": plan,
           "step_id": STEP_ID, "run_id": run_id}
    with stderr_path.open("wb") as err:
        return subprocess.Popen([sys.executable, str(WORKER), json.dumps(cfg)], stdout=subprocess.PIPE,
                                stderr=err, text=True, cwd=str(WORKER.parent))


def _markers(lines: list[str]) -> dict[str, float]:
    out = {}
    for line in lines:
        what, _, rest = line.partition(" ")
        if what != "report":
            out[what] = float(rest)
    return out


def calibrate(pair: Pair, target_url: str, tmp: Path) -> dict[str, float]:
    """Run the worker once to the end: when each phase begins, in seconds after ``ready``."""
    target = create_engine(target_url)
    try:
        _create_table(target, "orders_v2")
    finally:
        target.dispose()
    proc = _spawn(pair, target_url, plan_doc("calibrate", pair.source_table, "orders_v2",
                                             lag_seconds=pair.lag_seconds), "calibrate", tmp / "calibrate.err")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, (tmp / "calibrate.err").read_text()[-3000:]
    marks = _markers(out.splitlines())
    print(f"calibration {pair.name}: {marks}")
    return marks


# kill windows by trial: mostly in phase 1, but phases 0, 2 and 3 get their share
AIMS = ("phase1", "phase2", "phase1", "phase3", "phase1", "any", "phase1", "phase2", "start", "phase1")
WINDOWS = {"start": ("ready", "phase1"), "phase1": ("phase1", "phase2"), "phase2": ("phase2", "phase3"),
           "phase3": ("phase3", "done"), "any": ("ready", "done")}


def kill_and_resume(pair: Pair, target_url: str, marks: dict[str, float], trial: int, tmp: Path,
                    caplog: pytest.LogCaptureFixture) -> str:
    """One trial: run the backfill in a child, SIGKILL it at a random moment, check the checkpoints,
    resume in-process, check the result. Returns where the kill landed."""
    rng = random.Random(f"{SEED}:{pair.name}:{trial}")
    aim = AIMS[trial % len(AIMS)]
    anchor, end = WINDOWS[aim]
    delay = rng.uniform(0, marks[end] - marks[anchor])  # after the worker prints ``anchor``
    name = pair.name.replace("-", "_")
    plan_id, table = f"resume_{name}_{trial}", f"orders_{name}_{trial}"
    tag = f"[seed {SEED} {pair.name} trial {trial}: aim {aim}, kill {delay:.3f} s after '{anchor}']"
    print(tag)
    source, target = create_engine(pair.source_url), create_engine(target_url)
    sql, proc = pair.both_pg, None
    try:
        _create_table(target, table)
        plan = plan_doc(plan_id, pair.source_table, table, lag_seconds=pair.lag_seconds)
        t0 = time.monotonic()
        proc = _spawn(pair, target_url, plan, "killed", tmp / "worker.err")
        assert proc.stdout is not None
        lines = [proc.stdout.readline()]
        assert lines[0].startswith("ready"), f"{tag} worker failed: {(tmp / 'worker.err').read_text()[-3000:]}"
        t_ready = time.monotonic()
        while lines[-1] and not lines[-1].startswith(anchor):  # the phase begins
            lines.append(proc.stdout.readline())
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)  # a no-op when it already finished
        lines += proc.stdout.read().splitlines()
        proc.wait(timeout=30)
        wait_for_sessions_to_end([pair.source_url, target_url], f"bf-worker-{plan_id}")
        killed = proc.returncode == -signal.SIGKILL
        assert killed or proc.returncode == 0, f"{tag} worker failed: {(tmp / 'worker.err').read_text()[-3000:]}"
        seen = _markers([line for line in lines if line.strip()])

        # -- after the kill: each checkpoint matches exactly the rows committed with it ------------------
        before = snapshot(target, plan_id)
        print(f"{tag} killed={killed}, last marker {max(seen, key=seen.get)}, landed in {before.where}; "
              f"chunks {[(c['rows_copied'], c['rows_total'], c['status']) for c in before.chunks]}; phase 2 "
              f"{ {k: v for k, v in (before.phase.recent if before.phase else {}).items() if k != 'cutoff'} }")
        for c in before.chunks:
            lo_key, hi_key = c["lo"][0], c["hi"][0]
            in_chunk = _count(target, f"SELECT count(*) FROM {table} WHERE id > :lo AND id <= :hi",
                              {"lo": lo_key, "hi": hi_key})
            assert in_chunk == c["rows_copied"], f"{tag} chunk {c}: {in_chunk} rows in the target"
            source_total = _count(source, f"SELECT count(*) FROM {pair.source_table} WHERE id > :lo AND id <= :hi",
                                  {"lo": lo_key, "hi": hi_key})
            assert c["rows_total"] == source_total, f"{tag} chunk {c}: {source_total} rows in the source"
            if c["status"] == "done":
                assert c["rows_copied"] == c["rows_total"], f"{tag} {c}"
            if c["position"] is not None:
                upto = {"lo": lo_key, "hi": c["position"][0]}
                assert digest(target, table, "id > :lo AND id <= :hi", upto, sql=sql) == digest(
                    source, pair.source_table, "id > :lo AND id <= :hi", upto, sql=sql), f"{tag} {c}"
            else:
                assert c["rows_copied"] == 0, f"{tag} {c}"
        recent = before.phase.recent if before.phase is not None else {}
        delta_sql = f"SELECT count(*) FROM {pair.source_table} WHERE (id > :hw OR updated_at >= :cut) AND id <= :pos"
        if recent.get("position") is not None:  # phase 2's count committed with its rows
            assert before.phase is not None
            delta = _count(source, delta_sql, {"hw": before.phase.high_water[0], "cut": before.phase.cutoff,
                                               "pos": recent["position"][0]})
            assert recent["rows"] == delta, f"{tag} phase 2 checkpoint {recent} vs {delta} delta rows"

        # -- resume in this process, as a retried task would ---------------------------------------------
        t_resume = time.monotonic()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="airflow_migrate_provider"):
            bf = backfill_runner(source, target, Plan.model_validate(plan), "resumed")
            chunks = bf.start()
            if before.chunks:
                assert [(c["chunk"], c["rows"]) for c in chunks] == [
                    (c["chunk"], c["rows_total"]) for c in before.chunks], f"{tag} start() is not idempotent"
            copied = {info["chunk"]: bf.copy_chunk(info["chunk"]).rows for info in chunks}
            recent_report = bf.copy_recent()
            report = bf.final_sync()
        t_resumed = time.monotonic()
        logs = [r.getMessage() for r in caplog.records if r.name.startswith("airflow_migrate_provider")]

        # re-copies nothing that was committed: phase 1 of the resumed run copies exactly what was missing
        for c in before.chunks:
            assert copied[c["chunk"]] == c["rows_total"] - c["rows_copied"], f"{tag} {c} resumed {copied}"
            if c["position"] is not None and c["status"] != "done":
                want = f"resuming after key {c['position']}"
                assert any(want in m and f"chunk {c['chunk'] + 1}/" in m for m in logs), f"{tag} no '{want}': {logs}"
        if recent.get("position") is not None and not recent.get("done"):
            want = f"resuming after key {recent['position']}"
            assert any("phase 2" in m and want in m for m in logs), f"{tag} no phase 2 '{want}': {logs}"

        after = snapshot(target, plan_id)
        assert after.status == "applied" and after.where == "finished", f"{tag} {after}"
        assert after.phase is not None
        whole_delta = _count(source, delta_sql, {"hw": after.phase.high_water[0], "cut": after.phase.cutoff,
                                                 "pos": after.phase.high_water[0] + 1})
        assert whole_delta > 0, f"{tag} phase 2 had nothing to copy"
        expected_recent = 0 if recent.get("done") else whole_delta - int(recent.get("rows") or 0)
        assert recent_report.rows == expected_recent, f"{tag} phase 2 copied {recent_report.rows} after {recent}"
        assert all(c["rows_copied"] == c["rows_total"] for c in after.chunks), f"{tag} {after.chunks}"
        if before.status != "applied":
            assert report.detail["source_rows"] == report.detail["target_rows"], f"{tag} {report.detail}"
        assert _count(target, f"SELECT count(*) - count(DISTINCT id) FROM {table}") == 0, f"{tag} duplicate keys"
        src_digest = digest(source, pair.source_table, sql=sql)
        assert digest(target, table, sql=sql) == src_digest, f"{tag} target differs from source"
        print(f"{tag} timings: worker start {t_ready - t0:.2f} s, run and kill checks {t_resume - t_ready:.2f} s, "
              f"resume {t_resumed - t_resume:.2f} s, final checks {time.monotonic() - t_resumed:.2f} s")
        return before.where
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(30)
        source.dispose()
        with target.begin() as conn:  # the target database outlives the trial; its tables need not
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        target.dispose()


# -- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pg_source(pg_database_factory) -> Iterator[str]:
    """A PostgreSQL source shared by the kill trials (they only read it): ``orders`` (60k rows) and
    ``orders_small`` (~19k rows)."""
    with pg_database_factory() as db:
        engine = create_engine(db.sqlalchemy_url)
        try:
            _fill_pg(engine, "orders", BIG_ROWS)
            _fill_pg(engine, "orders_small", SMALL_ROWS)
        finally:
            engine.dispose()
        yield db.sqlalchemy_url


@pytest.fixture(scope="module")
def pg_target(pg_database_factory) -> Iterator[str]:
    """A PostgreSQL target shared by the kill trials: each trial copies into its own table, with its own plan
    id (so its own checkpoint and ledger rows)."""
    with pg_database_factory() as db:
        yield db.sqlalchemy_url


@pytest.fixture(scope="module")
def sqlite_source(tmp_path_factory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('bf-src') / 'source.sqlite'}"
    engine = create_engine(url)
    try:
        _fill_sqlite(engine, "orders_small", SMALL_ROWS)
    finally:
        engine.dispose()
    return url


@pytest.fixture(scope="module")
def calibrations(pg_database_factory, mariadb_database_factory, tmp_path_factory):
    """Phase timings per source/target pair, measured once per module by a full uninterrupted run."""
    cache: dict[str, dict[str, float]] = {}

    def get(pair: Pair) -> dict[str, float]:
        if pair.name not in cache:
            tmp = tmp_path_factory.mktemp(f"calibrate-{pair.name}")
            if pair.target_kind in ("postgresql", "mariadb"):
                factory = pg_database_factory if pair.target_kind == "postgresql" else mariadb_database_factory
                with factory() as db:
                    cache[pair.name] = calibrate(pair, db.sqlalchemy_url, tmp)
            else:
                cache[pair.name] = calibrate(pair, f"sqlite:///{tmp / 'target.sqlite'}", tmp)
        return cache[pair.name]

    return get


# -- 1. SIGKILL and resume, PostgreSQL -> PostgreSQL (binary COPY path) --------------------------------

def _pg_trial(pg_source, pg_target, calibrations, tmp_path, caplog, trial: int) -> None:
    pair = Pair("pg-pg", pg_source, "orders")
    kill_and_resume(pair, pg_target, calibrations(pair), trial, tmp_path, caplog)


@pytest.mark.parametrize("trial", range(10))
def test_sigkill_then_resume_pg_to_pg(pg_source, pg_target, calibrations, tmp_path, caplog, trial):
    _pg_trial(pg_source, pg_target, calibrations, tmp_path, caplog, trial)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(100, 150))
def test_sigkill_then_resume_pg_to_pg_many(pg_source, pg_target, calibrations, tmp_path, caplog, trial):
    _pg_trial(pg_source, pg_target, calibrations, tmp_path, caplog, trial)


# -- 2. SIGKILL and resume on the generic path ----------------------------------------------------------

@pytest.mark.parametrize("trial", range(3))
def test_sigkill_then_resume_sqlite_to_pg(sqlite_source, pg_target, calibrations, tmp_path, caplog, trial):
    pair = Pair("sqlite-pg", sqlite_source, "orders_small")
    kill_and_resume(pair, pg_target, calibrations(pair), trial, tmp_path, caplog)


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_then_resume_pg_to_sqlite(pg_source, calibrations, tmp_path, caplog, trial):
    pair = Pair("pg-sqlite", pg_source, "orders_small", target_kind="sqlite")
    kill_and_resume(pair, f"sqlite:///{tmp_path / 'target.sqlite'}", calibrations(pair), trial, tmp_path, caplog)


# -- 2b. SIGKILL and resume on MariaDB (LOAD DATA LOCAL through a pipe) --------------------------------------

@pytest.fixture(scope="module")
def mariadb_source(mariadb_database_factory) -> Iterator[str]:
    """A MariaDB source shared by the kill trials (they only read it): ``orders`` (60k rows)."""
    with mariadb_database_factory() as db:
        engine = create_engine(db.sqlalchemy_url)
        try:
            _fill_mysql(engine, "orders", BIG_ROWS)
        finally:
            engine.dispose()
        yield db.sqlalchemy_url


@pytest.fixture(scope="module")
def mariadb_target(mariadb_database_factory) -> Iterator[str]:
    with mariadb_database_factory() as db:
        yield db.sqlalchemy_url


@pytest.mark.parametrize("trial", range(3))
def test_sigkill_then_resume_mariadb_to_mariadb(mariadb_source, mariadb_target, calibrations, tmp_path, caplog,
                                                trial):
    pair = Pair("mariadb-mariadb", mariadb_source, "orders", target_kind="mariadb")
    kill_and_resume(pair, mariadb_target, calibrations(pair), trial, tmp_path, caplog)


@pytest.mark.slow
@pytest.mark.parametrize("trial", range(100, 120))
def test_sigkill_then_resume_mariadb_to_mariadb_many(mariadb_source, mariadb_target, calibrations, tmp_path, caplog,
                                                     trial):
    pair = Pair("mariadb-mariadb", mariadb_source, "orders", target_kind="mariadb")
    kill_and_resume(pair, mariadb_target, calibrations(pair), trial, tmp_path, caplog)


@pytest.mark.parametrize("trial", range(2))
def test_sigkill_then_resume_pg_to_mariadb(pg_source, mariadb_target, calibrations, tmp_path, caplog, trial):
    pair = Pair("pg-mariadb", pg_source, "orders_small", target_kind="mariadb")
    kill_and_resume(pair, mariadb_target, calibrations(pair), trial, tmp_path, caplog)


# -- 3. a live source: concurrent inserts and updates ---------------------------------------------------

WRITER_INSERT = text(
    "INSERT INTO orders (id, n, s, j, amount, updated_at) SELECT g, g % 1000, 'new-' || g, "
    "jsonb_build_object('new', g), g / 100.0, clock_timestamp() FROM generate_series(:a, :b) AS g")
WRITER_UPDATE = text(
    "UPDATE orders SET n = coalesce(n, 0) + 1, s = s || '+', amount = amount + 1, "
    "j = jsonb_set(j, '{v}', to_jsonb(coalesce((j->>'v')::int, 0) + 1)), updated_at = clock_timestamp() "
    "WHERE id = ANY(:ids)")


class SourceWriter(threading.Thread):
    """Inserts rows above the current max id and updates random rows (values and ``updated_at =
    clock_timestamp()``), one autocommit statement at a time, until stopped."""

    def __init__(self, url: str, next_id: int, seed: int):
        super().__init__(daemon=True)
        self.engine = create_engine(url, isolation_level="AUTOCOMMIT")
        self.next_id, self.rng = next_id, random.Random(seed)
        self.halt = threading.Event()
        self.ops, self.inserted, self.max_op_seconds = 0, 0, 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.engine.connect() as conn:
                while not self.halt.is_set():
                    t0 = time.monotonic()
                    if self.rng.random() < 0.4:
                        k = self.rng.randint(1, 5)
                        conn.execute(WRITER_INSERT, {"a": self.next_id, "b": self.next_id + k - 1})
                        self.next_id += k
                        self.inserted += k
                    else:
                        ids = [self.rng.randint(1, self.next_id - 1) for _ in range(self.rng.randint(1, 20))]
                        conn.execute(WRITER_UPDATE, {"ids": ids})
                    self.max_op_seconds = max(self.max_op_seconds, time.monotonic() - t0)
                    self.ops += 1
                    time.sleep(self.rng.uniform(0, 0.002))
        except BaseException as exc:  # reported by stop()
            self.error = exc

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=30)
        self.engine.dispose()
        assert not self.is_alive(), "the writer did not stop"
        if self.error is not None:
            raise AssertionError(f"the writer failed: {self.error!r}") from self.error


LIVE_ROWS = 60_000


@pytest.fixture
def live_source(pg_database_factory) -> Iterator[str]:
    """A fresh PostgreSQL source (the test writes to it): ``orders`` with ~55k rows."""
    with pg_database_factory() as db:
        engine = create_engine(db.sqlalchemy_url)
        try:
            _fill_pg(engine, "orders", LIVE_ROWS)
        finally:
            engine.dispose()
        yield db.sqlalchemy_url


def _live_runner(source_url: str, target_url: str, *, max_lock_seconds: float = 10.0, lag_seconds: int = 0):
    source, target = create_engine(source_url), create_engine(target_url)
    _create_table(target, "orders_v2")
    plan = Plan.model_validate(plan_doc("live", "orders", "orders_v2", lag_seconds=lag_seconds,
                                        max_lock_seconds=max_lock_seconds))
    return source, target, backfill_runner(source, target, plan, "live")


def test_concurrent_writes_during_phases_1_and_2(live_source, pg_database):
    seed = SEED ^ 0x5EED
    print(f"seed {SEED} (writer seed {seed})")
    source, target, bf = _live_runner(live_source, pg_database.sqlalchemy_url)
    writer = SourceWriter(live_source, LIVE_ROWS + 1, seed)
    try:
        writer.start()
        time.sleep(0.2)
        chunks = bf.start()
        for info in chunks:
            bf.copy_chunk(info["chunk"])
        recent = bf.copy_recent()
        time.sleep(0.1)  # changes after phase 2 are the final sync's
    finally:
        writer.stop()
    report = bf.final_sync()
    print(f"writer: {writer.ops} ops, {writer.inserted} rows inserted; phase 2 copied {recent.rows}, "
          f"phase 3 {report.rows}")
    assert writer.ops > 50 and writer.inserted > 0
    assert recent.rows > 0 and report.rows > 0
    assert report.detail["source_rows"] == report.detail["target_rows"]
    assert digest(target, "orders_v2") == digest(source, "orders")
    assert Ledger(target, "live").applied()[STEP_ID].status == "applied"
    source.dispose()
    target.dispose()


class LockSpy:
    """Wraps the source dialect: right after the final sync's lock is taken, reads the database clock in the
    locked transaction and proves that another session's UPDATE cannot get through."""

    def __init__(self, inner: Any, source_url: str):
        self.inner, self.source_url = inner, source_url
        self.locked_at: datetime | None = None
        self.probe_blocked: bool | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @contextmanager
    def write_lock(self, bind: Any, tables: Any, timeout_s: float, **kwargs: Any) -> Iterator[Any]:
        with self.inner.write_lock(bind, tables, timeout_s, **kwargs) as conn:
            self._probe(conn)
            yield conn

    def _probe(self, conn: Any) -> None:
        self.locked_at = conn.exec_driver_sql("SELECT clock_timestamp()").scalar()
        probe = create_engine(self.source_url, isolation_level="AUTOCOMMIT")
        try:
            with probe.connect() as pconn:
                pconn.exec_driver_sql("SET lock_timeout = '100ms'")
                try:
                    pconn.exec_driver_sql("UPDATE orders SET n = n WHERE id = 1")
                    self.probe_blocked = False
                except sa_exc.DBAPIError as exc:
                    self.probe_blocked = getattr(exc.orig, "sqlstate", None) == "55P03"
        finally:
            probe.dispose()


def _rows_by_id(engine: Engine, table: str) -> dict[int, tuple[Any, ...]]:
    with engine.connect() as conn:
        return {r[0]: tuple(r) for r in conn.execute(text(f"SELECT {COLS} FROM {table}"))}


def test_concurrent_writes_continue_into_final_sync(live_source, pg_database):
    seed = SEED ^ 0xB10C
    print(f"seed {SEED} (writer seed {seed})")
    source, target, bf = _live_runner(live_source, pg_database.sqlalchemy_url, lag_seconds=5)
    spy = LockSpy(bf.source_dialect, live_source)
    bf.source_dialect = spy
    writer = SourceWriter(live_source, LIVE_ROWS + 1, seed)
    try:
        writer.start()
        time.sleep(0.2)
        for info in bf.start():
            bf.copy_chunk(info["chunk"])
        bf.copy_recent()
        report = bf.final_sync()
        time.sleep(0.3)  # the writer goes on after the lock is released
    finally:
        writer.stop()
    locked_at = spy.locked_at
    print(f"writer: {writer.ops} ops, slowest {writer.max_op_seconds:.3f} s; final sync {report.to_json()}; "
          f"locked at {locked_at}")
    assert locked_at is not None and spy.probe_blocked is True, "the final sync's lock did not block an UPDATE"
    assert writer.max_op_seconds >= 0.09, "the writer was never held up by the final sync's lock"
    assert report.detail["source_rows"] == report.detail["target_rows"]

    # every change committed before the lock is in the target; every change after it is not (the writer
    # stamps clock_timestamp() after its table lock is granted: before the final sync's lock or after it)
    src, tgt = _rows_by_id(source, "orders"), _rows_by_id(target, "orders_v2")
    before = {k: r for k, r in src.items() if r[5] < locked_at}
    later = {k: r for k, r in src.items() if r[5] >= locked_at}
    assert later, "no source change after the final sync: the test proved nothing about the lock"
    missing = [k for k, r in before.items() if tgt.get(k) != r]
    assert not missing, f"{len(missing)} rows changed before the lock differ in the target, e.g. " \
                        f"{[(src[k], tgt.get(k)) for k in missing[:3]]}"
    assert set(tgt) <= set(src), "the target has rows the source never had"
    assert all(tgt[k][5] < locked_at for k in tgt), "the target has a change made after the lock"
    assert all(k not in tgt or tgt[k] != r for k, r in later.items())
    assert len(tgt) == report.detail["target_rows"] == len([k for k in src if k in tgt])
    source.dispose()
    target.dispose()


# -- 4. max_lock_seconds ----------------------------------------------------------------------------------

def _phases_1_and_2(bf) -> None:
    for info in bf.start():
        bf.copy_chunk(info["chunk"])
    bf.copy_recent()


def _update_within(source_url: str, timeout: str = "1s") -> float:
    """Seconds another session needs to UPDATE the source with a short lock_timeout (raises if it can't)."""
    engine = create_engine(source_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            t0 = time.monotonic()
            conn.exec_driver_sql(f"SET lock_timeout = '{timeout}'")
            conn.exec_driver_sql("UPDATE orders SET n = n WHERE id = 1")
            return time.monotonic() - t0
    finally:
        engine.dispose()


@pytest.fixture
def small_source(pg_database_factory) -> Iterator[str]:
    with pg_database_factory() as db:
        engine = create_engine(db.sqlalchemy_url)
        try:
            _fill_pg(engine, "orders", 8_000)
            with engine.begin() as conn:  # an autovacuum's lock would fail a 1 ms lock_timeout for another reason
                conn.exec_driver_sql("ALTER TABLE orders SET (autovacuum_enabled = false)")
        finally:
            engine.dispose()
        yield db.sqlalchemy_url


def test_final_sync_over_max_lock_seconds_fails_and_releases_the_lock(small_source, pg_database):
    source, target, bf = _live_runner(small_source, pg_database.sqlalchemy_url, max_lock_seconds=0.001)
    _phases_1_and_2(bf)
    with source.begin() as conn:  # a delta for the final sync
        conn.execute(text(PG_ROWS_SQL.format(table="orders", n=12_000) + " AND g > 8000"))
    with pytest.raises(BackfillFailed, match="max_lock_seconds"):
        bf.final_sync()
    assert _update_within(small_source) < 1.0
    assert Ledger(target, "live").applied()[STEP_ID].status != "applied"

    # the same step with a wider lock window finishes it (max_lock_seconds is tuning, not part of the checksum)
    plan = Plan.model_validate(plan_doc("live", "orders", "orders_v2", max_lock_seconds=10))
    report = backfill_runner(source, target, plan, "retry").final_sync()
    assert report.detail["source_rows"] == report.detail["target_rows"] == _count(source, "SELECT count(*) FROM orders")
    assert digest(target, "orders_v2") == digest(source, "orders")
    assert Ledger(target, "live").applied()[STEP_ID].status == "applied"
    source.dispose()
    target.dispose()


@contextmanager
def write_transaction_open(url: str, seconds: float) -> Iterator[None]:
    """Another session holds an open write transaction on the source's ``orders`` for up to ``seconds``
    (until the block ends)."""
    ready, release, error = threading.Event(), threading.Event(), []

    def hold() -> None:
        try:
            if url.startswith("sqlite"):
                conn = sqlite3.connect(make_url(url).database, isolation_level=None)
                conn.execute("BEGIN IMMEDIATE")
            else:
                conn = psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
            conn.execute("UPDATE orders SET n = n WHERE id = 1")
            ready.set()
            release.wait(seconds)
            conn.rollback()
            conn.close()
        except BaseException as exc:
            error.append(exc)
            ready.set()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    assert ready.wait(10) and not error, error
    try:
        yield
    finally:
        release.set()
        thread.join(10)


@pytest.mark.parametrize("max_lock_seconds", [
    0.05,
    0.0005,  # under 1 ms: must not become lock_timeout '0ms' (PostgreSQL's "wait forever")
])
def test_final_sync_lock_wait_is_bounded_by_max_lock_seconds(small_source, pg_database, max_lock_seconds):
    source, target, bf = _live_runner(small_source, pg_database.sqlalchemy_url, max_lock_seconds=max_lock_seconds)
    _phases_1_and_2(bf)
    with write_transaction_open(small_source, 2.5):
        t0 = time.monotonic()
        with pytest.raises(BackfillFailed) as failed:
            bf.final_sync()
        waited = time.monotonic() - t0
    print(f"final_sync failed after {waited:.3f} s: {failed.value}")
    assert "could not lock" in str(failed.value) and waited < 1.5
    assert failed.value.transient
    assert _update_within(small_source) < 1.0
    assert Ledger(target, "live").applied()[STEP_ID].status != "applied"
    source.dispose()
    target.dispose()


def test_final_sync_lock_wait_is_bounded_on_a_sqlite_source(tmp_path):
    source_url, target_url = f"sqlite:///{tmp_path / 'source.sqlite'}", f"sqlite:///{tmp_path / 'target.sqlite'}"
    source, target = create_engine(source_url), create_engine(target_url)
    _fill_sqlite(source, "orders", 3000)
    _create_table(target, "orders_v2")
    bf = backfill_runner(source, target, Plan.model_validate(plan_doc("lite", "orders", "orders_v2",
                                                                      max_lock_seconds=0.2)), "r")
    _phases_1_and_2(bf)
    with write_transaction_open(source_url, 2.0):
        t0 = time.monotonic()
        try:
            bf.final_sync()
            outcome = "finished"
        except BackfillFailed as exc:
            outcome = str(exc)
        waited = time.monotonic() - t0
    print(f"final_sync after {waited:.3f} s: {outcome}")
    source.dispose()
    target.dispose()
    assert "could not lock" in outcome and waited < 1.0


def test_two_backfills_with_the_same_step_id_share_a_target_pool(small_source, pg_database):
    with create_engine(small_source).begin() as conn:
        conn.exec_driver_sql("CREATE TABLE people (id bigint PRIMARY KEY, name text, updated_at timestamptz)")
        conn.exec_driver_sql("INSERT INTO people SELECT g, 'p' || g, now() FROM generate_series(1, 3000) g")
    source = create_engine(small_source)
    target = create_engine(pg_database.sqlalchemy_url, pool_size=1)  # one connection: both steps share it
    _create_table(target, "orders_v2")
    with target.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE people_v2 (id bigint PRIMARY KEY, name text, updated_at timestamptz)")
    try:
        for plan_id, src_table, tgt_table in [("orders", "orders", "orders_v2"), ("people", "people", "people_v2")]:
            bf = backfill_runner(source, target, Plan.model_validate(plan_doc(plan_id, src_table, tgt_table)), "r")
            _phases_1_and_2(bf)
            report = bf.final_sync()
            assert report.detail["source_rows"] == report.detail["target_rows"]
    finally:
        source.dispose()
        target.dispose()
