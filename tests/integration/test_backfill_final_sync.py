"""The final sync's row counts are taken as of its write lock, but counted after releasing it (PostgreSQL, and
MariaDB: a consistent snapshot started under its share-mode row locks).

A spy around the source dialect starts another session's write as soon as the lock is granted (it waits on
the lock), and once the lock is released waits until that write has committed, before the final sync goes on
to count: the write lands between the lock and the counting. Counted as of the lock, the step applies; counted
plainly after the lock, the source would have rows the target has not. A real difference (a row missing in the
target) still fails the step. The wording for SQLite, which counts under the lock, is checked with every pair
in test_backfill_copy.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest
from backfill_it_support import count, is_mysql, open_pair, run_sql, server_urls
from backfill_resume_worker import STEP_ID, backfill_runner, plan_doc
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from airflow_migrate_provider.core.backfill.lock_counts import AT_SNAPSHOT
from airflow_migrate_provider.core.backfill.runner import BackfillRunner
from airflow_migrate_provider.core.ledger import Ledger
from airflow_migrate_provider.errors import BackfillFailed
from airflow_migrate_provider.plan.model import Plan

ROWS = 5_000
TABLE_DDL = "CREATE TABLE {table} (id bigint PRIMARY KEY, note text, updated_at timestamptz NOT NULL)"
FILL = ("INSERT INTO orders SELECT g, 'order ' || g, timestamptz '2020-01-01 00:00:00+00' + g * interval '1 minute' "
        "FROM generate_series(1, {rows}) AS g")
# after phase 2: 10 rows changed, 20 new ones, for the final sync to copy under the lock
DELTA = ("UPDATE orders SET note = note || ' (changed)', updated_at = now() WHERE id % 500 = 0",
         f"INSERT INTO orders SELECT g, 'late ' || g, now() FROM generate_series({ROWS + 1}, {ROWS + 20}) AS g")
# what another session does right after the lock is released
AFTER_LOCK = {
    "insert": f"INSERT INTO orders SELECT g, 'after the lock', now() FROM generate_series({ROWS + 101}, "
              f"{ROWS + 150}) AS g",
    "delete": "DELETE FROM orders WHERE id <= 7",
}
AFTER_LOCK_CHANGE = {"insert": 50, "delete": -7}
MARIADB = {
    "ddl": "CREATE TABLE {table} (id bigint PRIMARY KEY, note text, updated_at datetime(6) NOT NULL)",
    "fill": "INSERT INTO orders SELECT seq, CONCAT('order ', seq), "
            "TIMESTAMP'2020-01-01 00:00:00' + INTERVAL seq MINUTE FROM seq_1_to_{rows}",
    "delta": ("UPDATE orders SET note = CONCAT(note, ' (changed)'), updated_at = UTC_TIMESTAMP(6) WHERE id % 500 = 0",
              f"INSERT INTO orders SELECT seq, CONCAT('late ', seq), UTC_TIMESTAMP(6) "
              f"FROM seq_{ROWS + 1}_to_{ROWS + 20}"),
    "insert": f"INSERT INTO orders SELECT seq, 'after the lock', UTC_TIMESTAMP(6) "
              f"FROM seq_{ROWS + 101}_to_{ROWS + 150}",
    "delete": "DELETE FROM orders WHERE id <= 7",
    # the other session's statement still running (waiting on the lock) a while after it was sent
    "blocked": "SELECT count(*) FROM information_schema.processlist WHERE info = %(sql)s AND time_ms > 50",
}


def libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class WriteAfterLock:
    """Wraps the source dialect. Once the final sync's lock is granted, another session runs ``sql`` on the
    source (it waits on the lock); once the lock is released, waits for that write to commit. Records the
    order of events, snapshots included."""

    def __init__(self, inner: Any, source_url: str, sql: str):
        self.inner, self.source_url, self.sql = inner, source_url, sql
        self.events: list[str] = []
        self.errors: list[BaseException] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @contextmanager
    def write_lock(self, bind: Any, tables: Any, timeout_s: float, **kwargs: Any) -> Iterator[Any]:
        writer = threading.Thread(target=self._write, daemon=True)
        try:
            with self.inner.write_lock(bind, tables, timeout_s, **kwargs) as conn:
                self.events.append("locked")
                writer.start()
                self._wait_until_blocked()
                yield conn
            self.events.append("released")
        finally:
            if writer.ident is not None:  # started
                writer.join(10)
        self.events.append("written after the lock")

    @contextmanager
    def snapshot_reader(self, bind: Any) -> Iterator[Any]:
        with self.inner.snapshot_reader(bind) as conn:
            self.events.append("snapshot taken")
            yield conn
        self.events.append("snapshot left")

    def _write(self) -> None:
        try:
            if self.source_url.startswith("mysql"):
                engine = create_engine(self.source_url, isolation_level="AUTOCOMMIT")
                with engine.connect() as conn:
                    conn.exec_driver_sql(self.sql)
                engine.dispose()
                return
            with psycopg.connect(libpq(self.source_url), autocommit=True) as conn:
                conn.execute(self.sql)
        except BaseException as exc:
            self.errors.append(exc)

    def _wait_until_blocked(self) -> None:
        if self.source_url.startswith("mysql"):
            self._wait_until_blocked_mariadb()
            return
        with psycopg.connect(libpq(self.source_url), autocommit=True) as conn:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                row = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted "
                                   "AND relation = 'orders'::regclass").fetchone()
                if row and row[0]:
                    return
                time.sleep(0.01)
        raise AssertionError("the other session's write never waited on the final sync's lock")

    def _wait_until_blocked_mariadb(self) -> None:
        engine = create_engine(self.source_url)
        try:
            with engine.connect() as conn:
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    if conn.exec_driver_sql(MARIADB["blocked"], {"sql": self.sql}).scalar():
                        return
                    conn.rollback()
                    time.sleep(0.01)
        finally:
            engine.dispose()
        raise AssertionError(f"the other session's write never waited on the final sync's lock {self.errors}")


def _fill(pair: Any) -> None:
    if is_mysql(pair.src_dialect):
        run_sql(pair.source, MARIADB["ddl"].format(table="orders"), MARIADB["fill"].format(rows=ROWS))
        run_sql(pair.target, MARIADB["ddl"].format(table="orders_v2"))
    else:
        run_sql(pair.source, TABLE_DDL.format(table="orders"), FILL.format(rows=ROWS), "ANALYZE orders")
        run_sql(pair.target, TABLE_DDL.format(table="orders_v2"))


@pytest.fixture(params=["pg-pg", "pg-same", "mariadb-mariadb", "mariadb-same"])
def after_phase_2(request, tmp_path) -> Iterator[tuple[Any, BackfillRunner]]:
    """Source ``orders`` (5,000 rows) copied through phases 1 and 2 into ``orders_v2``, then 30 rows changed
    for the final sync."""
    with open_pair(request.param, tmp_path=tmp_path, **server_urls(request, request.param)) as pair:
        _fill(pair)
        bf = backfill_runner(pair.source, pair.target, Plan.model_validate(plan_doc("lockcount", "orders",
                                                                                  "orders_v2")), "run1")
        for info in bf.start():
            bf.copy_chunk(info["chunk"])
        bf.copy_recent()
        run_sql(pair.source, *(MARIADB["delta"] if is_mysql(pair.src_dialect) else DELTA))
        yield pair, bf


@pytest.mark.parametrize("write", ["insert", "delete"])
def test_a_write_right_after_the_lock_is_not_counted(after_phase_2, write):
    pair, bf = after_phase_2
    sql = MARIADB[write] if is_mysql(pair.src_dialect) else AFTER_LOCK[write]
    spy = WriteAfterLock(bf.source_dialect, pair.source.url.render_as_string(hide_password=False), sql)
    bf.source_dialect = spy

    report = bf.final_sync()

    assert not spy.errors, spy.errors
    assert spy.events[:4] == ["locked", "snapshot taken", "released", "written after the lock"]
    assert spy.events[-1] == "snapshot left"  # the counts were read in the snapshot, after the write
    assert report.rows == 30
    at_lock = ROWS + 20
    assert report.detail["source_rows"] == report.detail["target_rows"] == at_lock == count(pair.target, "orders_v2")
    assert count(pair.source, "orders") == at_lock + AFTER_LOCK_CHANGE[write]  # what a plain count would see
    assert report.detail["verified"] == (f"row counts match: source {at_lock:,} = target {at_lock:,} "
                                         f"({AT_SNAPSHOT})")
    assert 0 <= report.detail["lock_seconds"] < 10
    assert Ledger(pair.target, "lockcount").applied()[STEP_ID].status == "applied"


def test_a_row_missing_in_the_target_still_fails_the_final_sync(after_phase_2):
    pair, bf = after_phase_2
    run_sql(pair.target, "DELETE FROM orders_v2 WHERE id = 42")  # not in the delta: nothing brings it back

    with pytest.raises(BackfillFailed, match="row counts differ") as failed:
        bf.final_sync()

    message = str(failed.value)
    print(message)
    assert f"source {ROWS + 20:,}, target {ROWS + 19:,} (-1)" in message
    assert AT_SNAPSHOT in message
    assert Ledger(pair.target, "lockcount").applied()[STEP_ID].status != "applied"
