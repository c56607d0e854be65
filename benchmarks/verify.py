#!/usr/bin/env python
"""Benchmark the `checksums` verification (PostgreSQL -> PostgreSQL) against two scans and reladiff, in one run.

Source and target tables are identical (``--rows`` rows: bigint id, ints, text, jsonb, numeric(12,2),
timestamptz), then the target is mutated: 5 rows changed (one column each), 3 deleted, 2 inserted — 10 keys.
Measured, each ``--repeat`` times (medians reported):

1. the floor, "two scans": ``SELECT sum(length(t::text)) FROM t`` on each side, both at once (two threads);
2. ours: ``checksums()`` with its drill-down, in a child process so that its peak RSS is its own (once more
   on a quarter of the rows, filtered, to show that memory does not grow with the table); it must find all 10;
3. reladiff 0.6 (``reladiff <src> t <tgt> t -k id -c '%'``: all columns; without ``-c`` it compares keys
   only), with one thread and with ``-j 2``; its JSON output is parsed and the keys it found are counted.

The script creates two uniquely named databases on the server of ``--pg-url`` and drops them at the end, also
on error or Ctrl-C. The last line printed is machine-readable::

    verify rows=N found=F/10 ratio_vs_reladiff=R1 ratio_vs_two_scans=R2 peak_rss_mb=M

R1 = our median time / reladiff's best median; R2 = our median time / the two scans' median; M = our peak RSS.

Usage::

    .venv-test/bin/python benchmarks/verify.py --rows 100000      # smoke run, well under a minute
    .venv-test/bin/python benchmarks/verify.py                    # 2,000,000 rows, a few minutes

(any virtualenv with the package installed with its ``bench`` extra: ``pip install -e '.[tests,bench]'``)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bench_support as bench

TABLE = "t"
CHANGES = ("note = note || '!'", "amount = amount + 0.01", "payload = payload || '{\"qty\": 99}'",
           "status = 'lost'", "updated_at = updated_at + interval '1 microsecond'")


def planted(n: int) -> dict[str, list[int]]:
    """The 10 keys the target differs by, spread over the key space."""
    return {"changed": [n * k // 6 + 3 for k in range(1, 6)], "missing_in_target": [1, n // 2 + 1, n],
            "extra_in_target": [n + 1, n + 1000]}


# ------------------------------------------------------------------------------------------------------
# child process: one run of our check, reporting its own time and peak RSS
# ------------------------------------------------------------------------------------------------------
def child_main(cfg: dict[str, Any]) -> None:
    from sqlalchemy import create_engine

    from airflow_migrate_provider.core.verify import checksums as module
    from airflow_migrate_provider.core.verify.base import Side

    source, target = create_engine(cfg["src"]), create_engine(cfg["tgt"])
    durations: dict[str, list[float]] = {}
    for name in ("_drill", "_compare"):  # wall time of the phases after the segment hashes (this process only)
        bench.record_call_durations(module, name, durations)
    rss_before = bench.peak_rss_mb()
    with bench.profiled(cfg.get("profile", False), "check"):
        t0 = time.perf_counter()
        result = module.checksums(Side(source, table=TABLE, filter=cfg.get("filter"), label="source"),
                                  Side(target, table=TABLE, filter=cfg.get("filter"), label="target"), ["id"],
                                  max_reported=1000)
        seconds = time.perf_counter() - t0
    report = {
        "seconds": seconds, "passed": result.passed, "detail": result.detail, "source": result.source,
        "target": result.target, "total": result.total_differences,
        "found": [[d.kind, d.key] for d in result.differences],
        "phases": {name: sum(runs) for name, runs in durations.items()},
        "peak_rss_mb": bench.peak_rss_mb(), "rss_before_mb": rss_before,
    }
    source.dispose()
    target.dispose()
    bench.send_result(report)


# ------------------------------------------------------------------------------------------------------
# parent: databases, references, report
# ------------------------------------------------------------------------------------------------------
@dataclass
class KeyMeasure(bench.Measure):
    """A method's runs and how many of the 10 planted keys it found."""

    found: int | None = None  # planted keys found (of 10)
    extra: int = 0  # keys reported that were not planted


def two_scans(server: bench.Server, src: str, tgt: str) -> float:
    """Wall seconds of ``SELECT sum(length(t::text)) FROM t`` on both sides at once."""
    import psycopg

    conns = [psycopg.connect(server.libpq(db)) for db in (src, tgt)]
    try:
        errors: list[BaseException] = []

        def scan(conn: Any) -> None:
            try:
                conn.execute(f"SELECT sum(length(t::text)) FROM {TABLE} AS t").fetchone()
            except BaseException as exc:  # reported by the caller
                errors.append(exc)

        threads = [threading.Thread(target=scan, args=(c,)) for c in conns]
        t0 = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        seconds = time.perf_counter() - t0
        if errors:
            raise errors[0]
        return seconds
    finally:
        for conn in conns:
            conn.close()


def run_ours(cfg: dict[str, Any]) -> dict[str, Any]:
    return bench.run_child(__file__, cfg, "verification")


def reladiff_binary() -> str:
    local = Path(sys.executable).with_name("reladiff")
    found = str(local) if local.exists() else shutil.which("reladiff")
    if not found:
        raise SystemExit("reladiff is not installed (pip install 'airflow-migrate-provider[bench]')")
    return found


def run_reladiff(server: bench.Server, src: str, tgt: str, threads: int) -> tuple[float, set[int]]:
    """Wall seconds and the keys reladiff reports (``--json``: one ``["-"|"+", [key, ...]]`` per line)."""
    cmd = [reladiff_binary(), server.libpq(src), TABLE, server.libpq(tgt), TABLE, "-k", "id", "-c", "%", "--json"]
    cmd += ["-j", str(threads)] if threads > 1 else []
    env = {**os.environ, "COLUMNS": "1000000"}  # its console would wrap long lines otherwise
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"reladiff failed (exit code {proc.returncode})")
    keys = set()
    for line in proc.stdout.splitlines():
        line = line.strip()
        if line.startswith("["):
            _sign, row = json.loads(line)
            keys.add(int(row[0]))
    return seconds, keys


def score(measure: KeyMeasure, keys: set[int], expected: set[int]) -> None:
    """Planted keys found (the worst run counts) and keys reported that were not planted."""
    found = len(keys & expected)
    measure.found = found if measure.found is None else min(measure.found, found)
    measure.extra = max(measure.extra, len(keys - expected))


def copy_database(server: bench.Server, src: str, tgt: str) -> None:
    """``CREATE DATABASE tgt TEMPLATE src``; it needs src to itself (autovacuum may be visiting it)."""
    import psycopg

    for attempt in range(20):
        server.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{src}' "
                     f"AND pid <> pg_backend_pid()")
        try:
            server.admin(f'CREATE DATABASE "{tgt}" TEMPLATE "{src}"')
            return
        except psycopg.errors.ObjectInUse:
            time.sleep(0.5 * (attempt + 1))
    raise SystemExit(f"could not copy database {src}: it stays in use")


def main(argv: list[str] | None = None) -> None:
    parser = bench.benchmark_parser(__doc__, "rows per table (default 2,000,000)")
    parser.add_argument("--profile", action="store_true", help="also run ours once under cProfile (not timed)")
    args = bench.parse_benchmark_args(parser, argv, min_rows=10_000, child_main=child_main)
    clock = bench.BenchmarkClock()
    server = bench.Server(args.pg_url)
    n, k = args.rows, args.repeat
    keys = planted(n)
    expected = {key for group in keys.values() for key in group}
    with bench.scratch_databases(server, "verify", create_target=False) as (src, tgt):
        bench.log(f"source {src}: generating {n:,} rows")
        server.run(src, bench.create_table_sql(TABLE, primary_key=False), bench.insert_rows_sql(TABLE, n),
                   f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id)")
        copy_database(server, src, tgt)
        changes = [f"UPDATE {TABLE} SET {change} WHERE id = {key}"
                   for change, key in zip(CHANGES, keys["changed"], strict=True)]
        server.run(tgt, *changes, f"DELETE FROM {TABLE} WHERE id IN ({', '.join(map(str, keys['missing_in_target']))})",
                   *(f"INSERT INTO {TABLE} SELECT {new}, customer_id, status, note, payload, amount, created_at, "
                     f"updated_at FROM {TABLE} WHERE id = 2" for new in keys["extra_in_target"]))
        for db in (src, tgt):
            server.run(db, f"VACUUM (ANALYZE) {TABLE}")
        size = server.table_size(src, TABLE)
        bench.log(f"tables ready ({size} each); target mutated: {json.dumps(keys)}; warming the cache")
        two_scans(server, src, tgt)

        floor = KeyMeasure("two scans: sum(length(t::text)), both sides at once")
        ours = KeyMeasure("ours: checksums() + drill-down (child process)")
        rel1 = KeyMeasure("reladiff -k id -c '%' (all columns)")
        rel2 = KeyMeasure("reladiff -k id -c '%' -j 2")
        reports: list[dict[str, Any]] = []
        cfg = {"src": server.sqlalchemy(src), "tgt": server.sqlalchemy(tgt)}
        for i in range(k):
            floor.runs.append(two_scans(server, src, tgt))
            report = run_ours(cfg)
            reports.append(report)
            ours.runs.append(report["seconds"])
            score(ours, {int(key) for _, key in report["found"]}, expected)
            kinds = {kind: sorted(int(key) for kd, key in report["found"] if kd == kind) for kind in keys}
            if kinds != {kind: sorted(group) for kind, group in keys.items()}:
                bench.log(f"WARNING: ours reported {kinds}, planted {keys}")
            for measure, threads in ((rel1, 1), (rel2, 2)):
                seconds, found = run_reladiff(server, src, tgt, threads)
                measure.runs.append(seconds)
                score(measure, found, expected)
            bench.log(f"run {i + 1}: two scans {floor.runs[-1]:.2f} s, ours {ours.runs[-1]:.2f} s "
                      f"(found {ours.found}/10, peak RSS {report['peak_rss_mb']:.1f} MB), "
                      f"reladiff {rel1.runs[-1]:.2f} s, -j 2 {rel2.runs[-1]:.2f} s")
        quarter = run_ours({**cfg, "filter": f"id <= {n // 4}"})
        bench.log(f"ours on a quarter of the rows: {quarter['seconds']:.2f} s, "
                  f"peak RSS {quarter['peak_rss_mb']:.1f} MB")
        if args.profile:
            run_ours({**cfg, "profile": True})

    best_reladiff = min((rel1, rel2), key=lambda m: m.seconds)
    peak = max(r["peak_rss_mb"] for r in reports)
    median_run = bench.median_report(reports)
    print()
    print(f"verify benchmark: {n:,} rows per side ({size}), PostgreSQL -> PostgreSQL on "
          f"{args.pg_url.split('@')[-1]}, 10 keys differ, median of {k}")
    print()
    header = f"{'method':<54} {'seconds':>8} {'vs two scans':>13} {'found':>7}  runs (s)"
    lines = []
    for m in (floor, ours, rel1, rel2):
        found = f"{m.found}/10" if m.found is not None else "-"
        extra = f"  (+{m.extra} keys not planted)" if m.extra else ""
        lines.append(f"{m.method:<54} {m.seconds:>8.2f} {m.seconds / floor.seconds:>12.2f}x {found:>7}  "
                     f"{m.runs_text}{extra}")
    bench.print_table(header, lines)
    print()
    phases = median_run["phases"]
    drill, compare = phases.get("_drill", 0.0), phases.get("_compare", 0.0)
    print(f"ours, median run ({median_run['seconds']:.2f} s): {median_run['detail']}")
    print(f"  source {median_run['source']}, target {median_run['target']}; setup + segment hashes "
          f"{median_run['seconds'] - drill - compare:.2f} s, drill-down {drill:.2f} s, row comparison {compare:.2f} s")
    print(f"memory: peak RSS {peak:.1f} MB on {n:,} rows vs {quarter['peak_rss_mb']:.1f} MB on {n // 4:,} rows "
          f"(after imports, before the check: {median_run['rss_before_mb']:.1f} MB)")
    print(clock.summary())
    print()
    print(f"verify rows={n} found={ours.found}/10 ratio_vs_reladiff={ours.seconds / best_reladiff.seconds:.2f} "
          f"ratio_vs_two_scans={ours.seconds / floor.seconds:.2f} peak_rss_mb={peak:.1f}")


if __name__ == "__main__":
    main()
