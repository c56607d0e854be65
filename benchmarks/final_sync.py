#!/usr/bin/env python
"""Benchmark how long the backfill's final sync holds its write lock on the source (PostgreSQL -> PostgreSQL).

Each run: an empty target, the backfill's phases 1 and 2 over the whole table, then ``--changes`` rows changed
in the source (half updated, half inserted), then the final sync, timed, while a writer session keeps updating
one source row at a time (its slowest UPDATE is how long the application was held up). Two ways, alternating,
each ``--repeat`` times (medians reported):

1. ours: only the delta under the lock; the row counts at a snapshot taken under the lock, counted after it;
2. reference, the way it was before: the same final sync counting both tables under the lock (the dialects
   told that they keep no snapshots, which is what SQLite gets).

The source table has an index on its watermark ``updated_at`` (as a table whose changes are found by their
watermark should): without it, the delta's query under the lock reads the whole table (``--no-watermark-index``
shows what that costs). The script creates two uniquely named databases on the server of ``--pg-url`` and drops
them at the end, also on error or Ctrl-C. The last line printed is machine-readable::

    final_sync rows=N changes=C lock_seconds=L lock_seconds_counting_under_lock=R ratio=L/R writer_stall_seconds=W

Usage::

    .venv-test/bin/python benchmarks/final_sync.py --rows 200000 --repeat 1   # smoke run (~10 s)
    .venv-test/bin/python benchmarks/final_sync.py                            # 5,000,000 rows, median of 3 (~3 minutes)
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import bench_support as bench
from backfill import fingerprint, prepare_target

STEP_ID = "copy_orders"
PROBE_ID = 1  # the row the writer session keeps updating (its values do not change)


class CountUnderLock:
    """A dialect as it is, except that it keeps no snapshots: the final sync counts under its lock."""

    snapshot_reads = False

    def __init__(self, inner: Any):
        self.inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@dataclass
class Way:
    """One way of running the final sync, and what each run measured."""

    method: str
    under_lock: bool
    lock: list[float] = field(default_factory=list)
    stall: list[float] = field(default_factory=list)
    counts: list[float] = field(default_factory=list)
    total: list[float] = field(default_factory=list)
    delta_rows: list[int] = field(default_factory=list)


class Writer:
    """Another session updating one source row at a time, as fast as it can; its slowest UPDATE."""

    def __init__(self, libpq_url: str):
        self.url, self.slowest, self.updates = libpq_url, 0.0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._errors: list[BaseException] = []

    def _run(self) -> None:
        import psycopg

        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                while not self._stop.is_set():
                    t0 = time.perf_counter()
                    conn.execute("UPDATE orders SET amount = amount WHERE id = %s", (PROBE_ID,))
                    self.slowest = max(self.slowest, time.perf_counter() - t0)
                    self.updates += 1
                    time.sleep(0.002)
        except BaseException as exc:
            self._errors.append(exc)

    @contextmanager
    def running(self) -> Iterator[Writer]:
        self._thread.start()
        time.sleep(0.05)
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(60)
        if self._errors:
            raise SystemExit(f"the writer session failed: {self._errors[0]}")


def make_source(server: bench.Server, src: str, n: int, watermark_index: bool) -> None:
    server.run(src, bench.create_table_sql("orders", primary_key=False))
    server.run(src, bench.insert_rows_sql("orders", n), autocommit=False)
    server.run(src, "ALTER TABLE orders ADD PRIMARY KEY (id)")
    if watermark_index:
        server.run(src, "CREATE INDEX orders_updated_at ON orders (updated_at)")
    server.run(src, "VACUUM (ANALYZE) orders")


def reset_source(server: bench.Server, src: str, n: int) -> None:
    """The rows an earlier run inserted go, and the rows it updated get a watermark in the past again (within
    the watermark lag of phase 2, they would be copied again under the lock)."""
    server.run(src, f"DELETE FROM orders WHERE id > {int(n)}",
               "UPDATE orders SET updated_at = created_at WHERE updated_at > timestamptz '2024-01-01 00:00:00+00'")


def change_source(server: bench.Server, src: str, n: int, changes: int, run: int) -> None:
    """``changes`` rows for the final sync: half of them existing rows updated, half new rows."""
    updated, inserted = changes // 2, changes - changes // 2
    server.run(src, f"UPDATE orders SET note = note || ' *', updated_at = now() WHERE id IN "
                    f"(SELECT 1 + (g * 7919 + {int(run)} * 104729) % {int(n)} FROM generate_series(1, {updated}) g)",
               f"INSERT INTO orders ({bench.COLUMNS}) SELECT id + {int(n)}, customer_id, status, note, payload, "
               f"amount, now(), now() FROM orders WHERE id <= {inserted}")


def backfill_runner(server: bench.Server, src: str, tgt: str, plan_id: str) -> Any:
    from sqlalchemy import create_engine

    from airflow_migrate_provider.core.dialects import dialect_for
    from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
    from airflow_migrate_provider.core.steps import StepRunner
    from airflow_migrate_provider.plan.model import Plan

    source, target = create_engine(server.sqlalchemy(src)), create_engine(server.sqlalchemy(tgt))
    plan = Plan.model_validate({"id": plan_id, "connections": {"target": "t", "source": "s"}, "steps": [{
        "kind": "backfill", "id": STEP_ID, "source": {"table": "orders"}, "target": "orders", "key": "id",
        "watermark": "updated_at", "chunks": 1, "max_lock_seconds": 120}]})
    ledger = Ledger(target, plan.id)
    ledger.ensure()
    return StepRunner(target, dialect_for(target), ledger, RunIdentity(plan.id, "run"), plan=plan,
                      source=source).backfill(plan.step(STEP_ID))


def run_once(server: bench.Server, src: str, tgt: str, way: Way, n: int, changes: int, run: int) -> None:
    prepare_target(server, tgt, "orders")
    reset_source(server, src, n)
    bf = backfill_runner(server, src, tgt, f"bench_lock_{run}")
    t0 = time.perf_counter()
    for info in bf.start():
        bf.copy_chunk(info["chunk"])
    bf.copy_recent()
    bench.log(f"run {run + 1} ({way.method}): phases 1 and 2 in {time.perf_counter() - t0:.1f} s")
    change_source(server, src, n, changes, run)
    server.admin("CHECKPOINT")
    if way.under_lock:
        bf.source_dialect, bf.target_dialect = CountUnderLock(bf.source_dialect), CountUnderLock(bf.target_dialect)
    with Writer(server.libpq(src)).running() as writer:
        time.sleep(0.2)
        t0 = time.perf_counter()
        report = bf.final_sync()
        way.total.append(time.perf_counter() - t0)
        time.sleep(0.2)
    detail = report.detail
    way.lock.append(detail["lock_seconds"])
    way.counts.append(detail.get("count_seconds", 0.0))
    way.stall.append(writer.slowest)
    way.delta_rows.append(report.rows)
    bench.log(f"run {run + 1} ({way.method}): lock held {detail['lock_seconds']:.3f} s, {report.rows:,} rows "
              f"copied under it; writer's slowest UPDATE {writer.slowest:.3f} s ({writer.updates} updates); "
              f"{detail['verified']}")
    if detail["source_rows"] != detail["target_rows"]:
        raise SystemExit(f"the final sync's counts differ: {detail}")
    bf.source.dispose()
    bf.target.dispose()


def print_results(ways: list[Way], reference: Way) -> None:
    median = statistics.median
    header = (f"{'final sync (delta copied under the lock)':<46} {'lock held s':>11} {'vs before':>9} "
              f"{'writer stall s':>14} {'counts after s':>14} {'total s':>8}  lock held per run (s)")
    lines = []
    for w in ways:
        after = "-" if w.under_lock else f"{median(w.counts):.3f}"
        lines.append(f"{w.method:<46} {median(w.lock):>11.3f} {median(w.lock) / median(reference.lock):>8.3f}x "
                     f"{median(w.stall):>14.3f} {after:>14} {median(w.total):>8.2f}  "
                     f"[{', '.join(f'{s:.3f}' for s in w.lock)}]")
    bench.print_table(header, lines)


def main(argv: list[str] | None = None) -> None:
    parser = bench.benchmark_parser(__doc__, "rows in the source table (default 5,000,000)")
    parser.set_defaults(rows=5_000_000)
    parser.add_argument("--changes", type=int, default=1_000,
                        help="source rows changed after phase 2, half updated, half inserted (default 1,000)")
    parser.add_argument("--no-watermark-index", action="store_true",
                        help="no index on the watermark: the delta's query under the lock reads the whole table")
    args = bench.parse_benchmark_args(parser, argv, min_rows=10_000, child_main=lambda cfg: None)
    logging.getLogger("airflow_migrate_provider").setLevel(logging.WARNING)
    clock = bench.BenchmarkClock()
    server = bench.Server(args.pg_url)
    n, k = args.rows, args.repeat
    ours = Way("ours: counts at the lock's snapshot, after it", under_lock=False)
    before = Way("before: counts under the lock", under_lock=True)

    with bench.scratch_databases(server, "final_sync") as (src, tgt):
        bench.log(f"source {src}, target {tgt}: generating {n:,} rows")
        t0 = time.perf_counter()
        make_source(server, src, n, not args.no_watermark_index)
        server.run(tgt, bench.create_table_sql("orders", primary_key=True))
        size = server.table_size(src, "orders")
        bench.log(f"source ready in {time.perf_counter() - t0:.1f} s ({size})")
        for i in range(k):
            for j, way in enumerate((ours, before)):
                run_once(server, src, tgt, way, n, args.changes, 2 * i + j)
                if i == 0:
                    check_copy(server, src, tgt)

    lock, reference = statistics.median(ours.lock), statistics.median(before.lock)
    print()
    print(f"final sync benchmark: {n:,} rows ({size}), {args.changes:,} rows changed after phase 2 "
          f"({statistics.median(ours.delta_rows):,.0f} copied under the lock), watermark "
          f"{'not ' if args.no_watermark_index else ''}indexed, PostgreSQL -> PostgreSQL on "
          f"{args.pg_url.split('@')[-1]}, median of {k}")
    print()
    print_results([ours, before], before)
    print(clock.summary())
    print()
    print(f"final_sync rows={n} changes={args.changes} lock_seconds={lock:.3f} "
          f"lock_seconds_counting_under_lock={reference:.3f} ratio={lock / reference:.3f} "
          f"writer_stall_seconds={statistics.median(ours.stall):.3f}")


def check_copy(server: bench.Server, src: str, tgt: str) -> None:
    """The target holds the source's rows, except what the writer session did after the lock (nothing: it
    writes a row's own values back)."""
    source, target = fingerprint(server, src, "orders"), fingerprint(server, tgt, "orders")
    if source != target:
        raise SystemExit(f"CORRECTNESS FAILURE: source (count, hash) {source} != target {target}")
    bench.log(f"verified: {target[0]:,} rows, hash {target[1]} match the source")


if __name__ == "__main__":
    main()
