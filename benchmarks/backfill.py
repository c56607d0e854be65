#!/usr/bin/env python
"""Benchmark the backfill engine (PostgreSQL -> PostgreSQL) against reference copies, in one run.

Measured, each ``--repeat`` times (medians reported):

1. reference: ``psql src -c "\\copy orders to stdout" | psql tgt -c "\\copy orders from stdin"`` (text COPY
   through two psql processes joined by a pipe; one transaction, no checkpoints);
2. ours: the real backfill step (``StepRunner.apply_through``; phase 1 only, a checkpoint committed with
   every batch, default batch sizing), in a child process so that its peak RSS is its own; once more on a
   quarter of the rows to show that memory does not grow with the table;
3. naive ``cursor.executemany(INSERT ...)`` in batches of 1,000 rows (a commit per batch) on a subset,
   extrapolated to rows/s;
4. the generic path on a subset: our backfill PostgreSQL -> SQLite file, and SQLite file -> PostgreSQL;
5. MariaDB -> MariaDB (``--mariadb-rows``, default 300,000; 0 skips it): ``mariadb-dump <table> | mariadb`` (extended
   INSERTs through two client processes joined by a pipe) against our backfill step (lines formatted by the source
   server, ``LOAD DATA LOCAL INFILE`` through a named pipe, a checkpoint committed with every batch), alternating.

The script creates two uniquely named databases (source, target) on the server of ``--pg-url`` and drops
them at the end, also on error or Ctrl-C. The last line printed is machine-readable::

    backfill rows=N ratio_vs_copy_pipe=R1 ratio_vs_executemany=R2 peak_rss_mb=M

preceded by ``backfill_mariadb rows=N ratio_vs_dump_pipe=R`` when the MariaDB part runs (the last line with
``--skip-pg``).

Usage::

    .venv-test/bin/python benchmarks/backfill.py --rows 100000      # smoke run, well under a minute
    .venv-test/bin/python benchmarks/backfill.py                    # 2,000,000 rows, a few minutes
    .venv-test/bin/python benchmarks/backfill.py --skip-pg          # MariaDB only, 300,000 rows (~1 minute)
    .venv-test/bin/python benchmarks/backfill.py --skip-pg --mariadb-rows 2000000   # larger

(any virtualenv with the package installed with its ``bench`` extra: ``pip install -e '.[tests,bench]'``)
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench_mariadb
import bench_support as bench

STEP_ID = "copy_orders"
EXECUTEMANY_BATCH = 1_000

SQLITE_DDL = """CREATE TABLE orders (
    id          INTEGER PRIMARY KEY,
    customer_id INTEGER,
    status      TEXT,
    note        TEXT,
    payload     TEXT,
    amount      NUMERIC,
    created_at  TEXT,
    updated_at  TEXT
)"""
LEDGER_TABLES = ("airflow_migrate_backfill", "airflow_migrate_history", "airflow_migrate_lock")


# ------------------------------------------------------------------------------------------------------
# child process: one run of our backfill step, reporting its own timings and peak RSS
# ------------------------------------------------------------------------------------------------------
def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def _rss_now_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def child_main(cfg: dict[str, Any]) -> None:
    import logging

    from sqlalchemy import create_engine

    from airflow_migrate_provider.core.backfill import copier as copier_mod
    from airflow_migrate_provider.core.backfill import runner as runner_mod
    from airflow_migrate_provider.core.backfill import state as state_mod
    from airflow_migrate_provider.core.dialects import dialect_for
    from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
    from airflow_migrate_provider.core.steps import StepRunner
    from airflow_migrate_provider.plan.model import Plan

    batches: list[tuple[int, float]] = []

    class BatchLog(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            # Progress.batch: "%s: batch %d +%s rows in %.2f s; ..."
            if isinstance(record.msg, str) and record.msg.startswith("%s: batch %d") and record.args:
                args = record.args
                assert isinstance(args, tuple)
                batches.append((int(str(args[2]).replace(",", "")), float(args[3])))

    pkg_log = logging.getLogger("airflow_migrate_provider")
    pkg_log.setLevel(logging.INFO)
    pkg_log.addHandler(BatchLog())
    pkg_log.propagate = False

    # timings per phase and per part of a batch (wrappers in this process only; the package is untouched)
    totals: dict[str, list[float]] = {}
    for name in ("start", "copy_chunk", "final_sync"):
        bench.record_call_durations(runner_mod.BackfillRunner, name, totals)
    for name in ("copy_range", "_delete_range", "_stream", "_write_rows"):
        bench.record_call_durations(copier_mod.BatchCopier, name, totals)
    bench.record_call_durations(state_mod.Checkpoints, "advance", totals)

    source = create_engine(cfg["src"])
    target = create_engine(cfg["tgt"])
    step: dict[str, Any] = {"kind": "backfill", "id": STEP_ID, "source": {"table": cfg["source_table"]},
                            "target": cfg["target_table"], "key": "id", "append_only": True, "chunks": 1,
                            "phases": {"recent": False, "final_sync": False}}
    if cfg.get("filter"):
        step["source"]["filter"] = cfg["filter"]
    plan = Plan.model_validate({"id": cfg["plan_id"], "connections": {"target": "t", "source": "s"},
                                "steps": [step]})
    ledger = Ledger(target, plan.id)
    ledger.ensure()
    runner = StepRunner(target, dialect_for(target), ledger, RunIdentity(plan.id, cfg["run_id"]), plan=plan,
                        source=source)
    rss_before = bench.peak_rss_mb()
    with bench.profiled(cfg.get("profile", False), "copy", ("tottime", "cumulative")):
        t0, cpu0 = time.perf_counter(), cpu_seconds()
        results = runner.apply_through(plan, STEP_ID)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0

    if results[-1].outcome != "applied":
        raise SystemExit(f"the backfill step did not apply: {results[-1]}")
    report = {
        "seconds": seconds,
        "cpu": cpu,
        "rows": sum(n for n, _ in batches),
        "batches": [n for n, _ in batches],
        "batch_seconds": [s for _, s in batches],
        "phases": {k: sum(v) for k, v in totals.items()},
        "calls": {k: len(v) for k, v in totals.items()},
        "peak_rss_mb": bench.peak_rss_mb(),
        "rss_before_copy_mb": rss_before,
        "rss_end_mb": _rss_now_mb(),
    }
    source.dispose()
    target.dispose()
    bench.send_result(report)


# ------------------------------------------------------------------------------------------------------
# parent: databases, references, report
# ------------------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class CopyMeasure(bench.Measure):
    """A copy method's runs over ``rows`` rows, with the CPU seconds of its client process(es) per run."""

    rows: int
    cpu: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("inf")


def fingerprint(server: bench.Server, database: str, table: str, upto: int | None = None) -> tuple[int, int]:
    """Row count and an order-independent hash of every row's text."""
    where = f" WHERE id <= {int(upto)}" if upto is not None else ""
    count, digest = server.query(database, f"SELECT count(*), coalesce(sum(hashtextextended(t::text, 0)), 0) "
                                           f"FROM {table} AS t{where}")
    return int(count), int(digest)


def prepare_target(server: bench.Server, tgt: str, table: str) -> None:
    """Empty the target table and forget earlier backfill runs, then flush dirty buffers (fair start)."""
    statements = [f"TRUNCATE {table}"]
    statements += [f"DO $$ BEGIN IF to_regclass('{t}') IS NOT NULL THEN DELETE FROM {t}; END IF; END $$"
                   for t in LEDGER_TABLES]
    server.run(tgt, *statements)
    server.admin("CHECKPOINT")


def run_psql_pipe(server: bench.Server, src: str, tgt: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds of the two psql processes."""
    base = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"]
    cpu0 = cpu_seconds(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.Popen([*base, server.libpq(src), "-c", "\\copy orders to stdout"], stdout=subprocess.PIPE)
    try:
        into = subprocess.Popen([*base, server.libpq(tgt), "-c", "\\copy orders from stdin"], stdin=out.stdout)
        assert out.stdout is not None
        out.stdout.close()  # psql (in) owns the read end now: psql (out) sees SIGPIPE if psql (in) dies
        rc_in, rc_out = into.wait(), out.wait()
    finally:
        if out.poll() is None:
            out.kill()
    seconds = time.perf_counter() - t0
    if rc_in or rc_out:
        raise SystemExit(f"the psql pipe failed (exit codes {rc_out} | {rc_in})")
    return seconds, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu0


def run_ours(cfg: dict[str, Any]) -> dict[str, Any]:
    return bench.run_child(__file__, cfg, "backfill")


def run_executemany(server: bench.Server, src: str, tgt: str, rows: int) -> tuple[float, float]:
    """A naive copy: plain SELECT, then executemany(INSERT ... VALUES) and a commit per 1,000 rows."""
    import psycopg
    from psycopg.types.json import Jsonb

    insert = f"INSERT INTO orders ({bench.COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
    t0, cpu0 = time.perf_counter(), cpu_seconds()
    with psycopg.connect(server.libpq(src)) as sconn, psycopg.connect(server.libpq(tgt)) as tconn:
        read = sconn.execute(f"SELECT {bench.COLUMNS} FROM orders WHERE id <= %s ORDER BY id", (rows,))
        with tconn.cursor() as cur:
            while batch := read.fetchmany(EXECUTEMANY_BATCH):
                cur.executemany(insert, [(*r[:4], Jsonb(r[4]), *r[5:]) for r in batch])
                tconn.commit()
    return time.perf_counter() - t0, cpu_seconds() - cpu0


def repeat(measure: CopyMeasure, k: int, prepare: Callable[[], None], work: Callable[[int], tuple[float, float]]
           ) -> None:
    for i in range(k):
        prepare()
        seconds, cpu = work(i)
        measure.runs.append(seconds)
        measure.cpu.append(cpu)


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def print_copy_table(rows: list[CopyMeasure], reference: CopyMeasure, reference_name: str = "psql pipe") -> None:
    header = (f"{'method':<46} {'rows':>11} {'seconds':>9} {'rows/s':>11} {'vs ' + reference_name:>13} "
              f"{'client CPU s':>13}  runs (s)")
    lines = []
    for m in rows:
        cpu = f"{statistics.median(m.cpu):.2f}" if m.cpu else "-"
        lines.append(f"{m.method:<46} {m.rows:>11,} {m.seconds:>9.2f} {fmt_rate(m.rate):>11} "
                     f"{m.rate / reference.rate:>12.2f}x {cpu:>13}  {m.runs_text}{'  ' + m.note if m.note else ''}")
    bench.print_table(header, lines)


def main(argv: list[str] | None = None) -> None:
    parser = bench.benchmark_parser(__doc__, "rows in the source table (default 2,000,000)")
    parser.add_argument("--subset", type=int, default=None,
                        help="rows for executemany and the SQLite paths (default min(200,000, rows/10))")
    parser.add_argument("--skip-sqlite", action="store_true", help="skip the generic PG <-> SQLite paths")
    parser.add_argument("--profile", action="store_true",
                        help="also run our copy once under cProfile (not timed) and print its top functions")
    parser.add_argument("--mariadb-rows", type=int, default=300_000,
                        help="rows of the MariaDB -> MariaDB comparison (default 300,000; 0 skips it)")
    parser.add_argument("--mariadb-url", default=bench_mariadb.DEFAULT_URL,
                        help="MariaDB server/admin URL; two scratch databases are created there and dropped")
    parser.add_argument("--skip-pg", action="store_true", help="run only the MariaDB -> MariaDB comparison")
    args = bench.parse_benchmark_args(parser, argv, min_rows=1_000, child_main=child_main)
    mariadb_line = ""
    if args.mariadb_rows:
        mariadb_line = bench_mariadb.compare(args.mariadb_url, args.mariadb_rows, args.repeat, run_ours,
                                             CopyMeasure, print_copy_table)
    if args.skip_pg:
        print(mariadb_line)
        return
    clock = bench.BenchmarkClock()
    server = bench.Server(args.pg_url)
    n, k = args.rows, args.repeat
    subset = min(args.subset or min(200_000, n // 10), n)
    quarter = n // 4

    with bench.scratch_databases(server, "backfill") as (src, tgt):
        bench.log(f"source {src}, target {tgt}: generating {n:,} rows")
        t0 = time.perf_counter()
        server.run(src, bench.create_table_sql("orders", primary_key=False))
        server.run(src, bench.insert_rows_sql("orders", n), autocommit=False)
        server.run(src, "ALTER TABLE orders ADD PRIMARY KEY (id)", "VACUUM (ANALYZE) orders")
        server.run(tgt, *(bench.create_table_sql(name, primary_key=True) for name in ("orders", "orders_sqlite")))
        source_print = fingerprint(server, src, "orders")
        size = server.table_size(src, "orders")
        bench.log(f"source ready in {time.perf_counter() - t0:.1f} s ({size}); {k} repeat(s) per method")

        pipe = CopyMeasure(method="psql text pipe (\\copy to stdout | from stdin)", rows=n)
        ours = CopyMeasure(method="ours: backfill step PG->PG (binary COPY)", rows=n,
                           note="apply_through, checkpoint per batch")
        ours_p1 = CopyMeasure(method="ours: phase 1 only (copy_chunk)", rows=n)
        ours_reports: list[dict[str, Any]] = []

        def pg_cfg(plan_id: str, **extra: Any) -> dict[str, Any]:
            return {"src": server.sqlalchemy(src), "tgt": server.sqlalchemy(tgt), "plan_id": plan_id,
                    "run_id": f"{plan_id}_run", "source_table": "orders", "target_table": "orders", **extra}

        for i in range(k):
            prepare_target(server, tgt, "orders")
            seconds, cpu = run_psql_pipe(server, src, tgt)
            pipe.runs.append(seconds)
            pipe.cpu.append(cpu)
            got = fingerprint(server, tgt, "orders")[0]
            if got != n:
                raise SystemExit(f"the psql pipe copied {got:,} rows, expected {n:,}")
            bench.log(f"psql pipe run {i + 1}: {pipe.runs[-1]:.2f} s")

            prepare_target(server, tgt, "orders")
            report = run_ours(pg_cfg(f"bench_pg_{i}"))
            ours_reports.append(report)
            ours.runs.append(report["seconds"])
            ours.cpu.append(report["cpu"])
            ours_p1.runs.append(report["phases"]["copy_chunk"])
            bench.log(f"ours run {i + 1}: {report['seconds']:.2f} s ({len(report['batches'])} batches, "
                      f"peak RSS {report['peak_rss_mb']:.1f} MB)")
            if i == 0:
                copied = fingerprint(server, tgt, "orders")
                if copied != source_print:
                    raise SystemExit(f"CORRECTNESS FAILURE: source (count, hash) {source_print} != target "
                                     f"{copied} after our backfill")
                bench.log(f"verified: {copied[0]:,} rows, hash {copied[1]} match the source")

        prepare_target(server, tgt, "orders")
        quarter_report = run_ours(pg_cfg("bench_pg_quarter", filter=f"id <= {quarter}"))
        if fingerprint(server, tgt, "orders")[0] != quarter:
            raise SystemExit("the quarter-rows backfill copied the wrong number of rows")
        bench.log(f"ours on {quarter:,} rows: {quarter_report['seconds']:.2f} s, "
                  f"peak RSS {quarter_report['peak_rss_mb']:.1f} MB")

        if args.profile:
            prepare_target(server, tgt, "orders")
            bench.log("profiling our copy once (cProfile; not timed)")
            run_ours(pg_cfg("bench_pg_profile", profile=True))

        naive = CopyMeasure(method=f"naive executemany ({EXECUTEMANY_BATCH:,}-row batches)", rows=subset,
                            note="commit per batch; rows/s extrapolated")
        repeat(naive, k, lambda: prepare_target(server, tgt, "orders"),
               lambda i: run_executemany(server, src, tgt, subset))
        if fingerprint(server, tgt, "orders") != fingerprint(server, src, "orders", subset):
            raise SystemExit("the executemany reference copied different rows")
        bench.log(f"executemany on {subset:,} rows: median {naive.seconds:.2f} s")

        generic: list[CopyMeasure] = []
        if not args.skip_sqlite:
            generic = run_sqlite_paths(server, src, tgt, subset, k)

    measures = [pipe, ours, ours_p1, naive, *generic]
    peak = max(r["peak_rss_mb"] for r in ours_reports)
    print()
    print(f"backfill benchmark: {n:,} rows ({size}), PostgreSQL -> PostgreSQL on {args.pg_url.split('@')[-1]}, "
          f"median of {k}")
    print()
    print_copy_table(measures, pipe)
    print()
    print_details(ours_reports, quarter_report, quarter, n)
    print(f"{clock.summary()} (other work on the machine adds noise: compare the runs)")
    print()
    if mariadb_line:
        print(mariadb_line)
    print(f"backfill rows={n} ratio_vs_copy_pipe={ours.rate / pipe.rate:.2f} "
          f"ratio_vs_executemany={ours.rate / naive.rate:.2f} peak_rss_mb={peak:.1f}")


def print_details(reports: list[dict[str, Any]], quarter_report: dict[str, Any], quarter: int, n: int) -> None:
    median_run = bench.median_report(reports)
    phases, calls = median_run["phases"], median_run["calls"]
    sizes = median_run["batches"]
    batch_sum = phases.get("copy_range", 0.0)
    stream, delete, advance = (phases.get(name, 0.0) for name in ("_stream", "_delete_range", "advance"))
    print(f"ours, median run ({median_run['seconds']:.2f} s): {len(sizes)} batches (checkpoint committed with "
          f"each), rows per batch first {sizes[0]:,}, median {int(statistics.median(sizes)):,}, max {max(sizes):,}")
    print(f"  start {phases.get('start', 0):.2f} s | phase 1 {phases.get('copy_chunk', 0):.2f} s "
          f"(batches {batch_sum:.2f} s: binary COPY stream {stream:.2f} s, range DELETE {delete:.2f} s, "
          f"checkpoint {advance:.2f} s, commit+other {batch_sum - stream - delete - advance:.2f} s) | "
          f"closing count {phases.get('final_sync', 0):.2f} s"
          f" | {calls.get('copy_range', 0)} batch transactions")
    print(f"memory: peak RSS {max(r['peak_rss_mb'] for r in reports):.1f} MB copying {n:,} rows vs "
          f"{quarter_report['peak_rss_mb']:.1f} MB copying {quarter:,} rows "
          f"(after imports and connecting, before the copy: {median_run['rss_before_copy_mb']:.1f} MB)")


def run_sqlite_paths(server: bench.Server, src: str, tgt: str, subset: int, k: int) -> list[CopyMeasure]:
    """The generic path: our backfill PG -> SQLite file, then that file -> PG; subset rows each."""
    import sqlite3

    with tempfile.TemporaryDirectory(prefix="bench_backfill_") as tmp:
        path = Path(tmp) / "orders.sqlite"

        def fresh_sqlite() -> None:
            with suppress(FileNotFoundError):
                path.unlink()
            with sqlite3.connect(path) as conn:
                conn.execute(SQLITE_DDL)
            conn.close()

        to_sqlite = CopyMeasure(method="ours: PG->SQLite file (generic path)", rows=subset,
                                note="SELECT + executemany INSERT")

        def pg_to_sqlite(i: int) -> tuple[float, float]:
            report = run_ours({"src": server.sqlalchemy(src), "tgt": f"sqlite:///{path}",
                               "plan_id": f"bench_to_sqlite_{i}", "run_id": "run", "source_table": "orders",
                               "target_table": "orders", "filter": f"id <= {subset}"})
            return float(report["seconds"]), float(report["cpu"])

        repeat(to_sqlite, k, fresh_sqlite, pg_to_sqlite)
        with sqlite3.connect(path) as conn:
            got = conn.execute("SELECT count(*) FROM orders").fetchone()[0]
        conn.close()
        if got != subset:
            raise SystemExit(f"PG -> SQLite copied {got:,} rows, expected {subset:,}")
        bench.log(f"PG -> SQLite on {subset:,} rows: median {to_sqlite.seconds:.2f} s")

        from_sqlite = CopyMeasure(method="ours: SQLite file->PG (generic path)", rows=subset,
                                  note="SELECT + text COPY")

        def sqlite_to_pg(i: int) -> tuple[float, float]:
            report = run_ours({"src": f"sqlite:///{path}", "tgt": server.sqlalchemy(tgt),
                               "plan_id": f"bench_from_sqlite_{i}", "run_id": "run", "source_table": "orders",
                               "target_table": "orders_sqlite"})
            return float(report["seconds"]), float(report["cpu"])

        repeat(from_sqlite, k, lambda: prepare_target(server, tgt, "orders_sqlite"), sqlite_to_pg)
        # the round trip PG -> SQLite -> PG should give back the same rows (same text of every row)
        same = fingerprint(server, tgt, "orders_sqlite") == fingerprint(server, src, "orders", subset)
        from_sqlite.note += "; round trip " + ("identical" if same else "DIFFERS from the source rows")
        bench.log(f"SQLite -> PG on {subset:,} rows: median {from_sqlite.seconds:.2f} s; round trip "
                  f"{'identical' if same else 'DIFFERS'}")
    return [to_sqlite, from_sqlite]


if __name__ == "__main__":
    main()
