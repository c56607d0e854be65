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

    /tmp/venv-dev/bin/python benchmarks/verify.py --rows 100000      # smoke run, well under a minute
    /tmp/venv-dev/bin/python benchmarks/verify.py                    # 2,000,000 rows, a few minutes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULT_MARK = "BENCH_RESULT "
TABLE = "t"
DDL = f"""CREATE TABLE {TABLE} (
    id          bigint,
    customer_id int,
    status      text,
    note        text,
    payload     jsonb,
    amount      numeric(12,2),
    created_at  timestamptz,
    updated_at  timestamptz
)"""
# deterministic rows: notes of 40-80 characters, a JSON payload with a number above 2**53, millisecond timestamps
GENERATE = f"""
INSERT INTO {TABLE}
SELECT g,
       1 + (g * 7919) % 250000,
       (ARRAY['new', 'paid', 'packed', 'shipped', 'delivered', 'cancelled', 'refunded'])[1 + (g * 31) % 7],
       left(format('Order %s for customer %s: %s %s', g, 1 + (g * 7919) % 250000, md5(g::text),
                   md5((g * 3)::text)), (40 + (g * 13) % 41)::int),
       jsonb_build_object('sku', 'SKU-' || lpad(((g * 17) % 50000)::text, 5, '0'), 'qty', 1 + g % 9,
                          'ext_ref', 9007199254740993 + g * 1000003, 'gift', g % 11 = 0,
                          'channel', (ARRAY['web', 'app', 'store', 'phone'])[1 + g % 4]),
       ((g * 104729) % 10000000) / 100.0,
       ts,
       ts + ((g * 97) % 172800) * interval '1 second'
FROM generate_series(1::bigint, {{rows}}) AS g,
     LATERAL (SELECT timestamptz '2021-01-01 00:00:00+00' + g * interval '15 seconds'
                     + ((g * 7) % 1000) * interval '1 millisecond' AS ts) AS t
"""
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
    phases: dict[str, float] = {}
    for name in ("_drill", "_compare"):  # wall time of the phases after the segment hashes (this process only)
        original = getattr(module, name)

        def timed(*args: Any, _original: Any = original, _name: str = name, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                phases[_name] = phases.get(_name, 0.0) + time.perf_counter() - t0

        setattr(module, name, timed)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    profiler = None
    if cfg.get("profile"):
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0 = time.perf_counter()
    result = module.checksums(Side(source, table=TABLE, filter=cfg.get("filter"), label="source"),
                              Side(target, table=TABLE, filter=cfg.get("filter"), label="target"), ["id"],
                              max_reported=1000)
    seconds = time.perf_counter() - t0
    if profiler is not None:
        import io
        import pstats

        profiler.disable()
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(25)
        print(f"--- cProfile of our check ---\n{out.getvalue()}", file=sys.stderr)
    report = {
        "seconds": seconds, "passed": result.passed, "detail": result.detail, "source": result.source,
        "target": result.target, "total": result.total_differences,
        "found": [[d.kind, d.key] for d in result.differences], "phases": phases,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_before_mb": rss_before,
    }
    source.dispose()
    target.dispose()
    print(RESULT_MARK + json.dumps(report, default=str), flush=True)


# ------------------------------------------------------------------------------------------------------
# parent: databases, references, report
# ------------------------------------------------------------------------------------------------------
@dataclass
class Measure:
    method: str
    runs: list[float] = field(default_factory=list)
    found: int | None = None  # planted keys found (of 10)
    extra: int = 0  # keys reported that were not planted
    note: str = ""

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs)


class Server:
    """The PostgreSQL server of ``--pg-url``: URLs for libpq and SQLAlchemy, statements."""

    def __init__(self, admin_url: str):
        from sqlalchemy.engine import make_url

        self.admin_url = admin_url
        self._url = make_url(admin_url)
        if self._url.get_backend_name() != "postgresql":
            raise SystemExit(f"--pg-url must be a postgresql:// URL, got {admin_url!r}")

    def libpq(self, database: str) -> str:
        return self._url.set(drivername="postgresql", database=database).render_as_string(hide_password=False)

    def sqlalchemy(self, database: str) -> str:
        url = self._url.set(drivername="postgresql+psycopg", database=database)
        return url.render_as_string(hide_password=False)

    def run(self, database: str | None, *statements: str) -> None:
        import psycopg

        with psycopg.connect(self.libpq(database) if database else self.admin_url, autocommit=True) as conn:
            for sql in statements:
                conn.execute(sql)

    def query(self, database: str, sql: str) -> tuple[Any, ...]:
        import psycopg

        with psycopg.connect(self.libpq(database)) as conn:
            row = conn.execute(sql).fetchone()
        assert row is not None
        return tuple(row)


@contextmanager
def scratch_databases(server: Server) -> Iterator[tuple[str, str]]:
    tag = f"bench_verify_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    src, tgt = f"{tag}_src", f"{tag}_tgt"
    created: list[str] = []
    try:
        server.run(None, f'CREATE DATABASE "{src}"')
        created.append(src)
        yield src, tgt  # the target is created from the source (TEMPLATE) once the source is filled
    finally:
        for name in (tgt, src):
            try:
                server.run(None, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:
                print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)
        print(f"dropped scratch databases {src}, {tgt}", file=sys.stderr)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def two_scans(server: Server, src: str, tgt: str) -> float:
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
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(cfg)],
                          stdout=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode or not lines:
        sys.stderr.write(proc.stdout)
        raise SystemExit(f"our verification child failed (exit code {proc.returncode})")
    return json.loads(lines[-1][len(RESULT_MARK):])


def reladiff_binary() -> str:
    local = Path(sys.executable).with_name("reladiff")
    found = str(local) if local.exists() else shutil.which("reladiff")
    if not found:
        raise SystemExit("reladiff is not installed (pip install 'airflow-migrate-provider[bench]')")
    return found


def run_reladiff(server: Server, src: str, tgt: str, threads: int) -> tuple[float, set[int]]:
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


def score(measure: Measure, keys: set[int], expected: set[int]) -> None:
    """Planted keys found (the worst run counts) and keys reported that were not planted."""
    found = len(keys & expected)
    measure.found = found if measure.found is None else min(measure.found, found)
    measure.extra = max(measure.extra, len(keys - expected))


def copy_database(server: Server, src: str, tgt: str) -> None:
    """``CREATE DATABASE tgt TEMPLATE src``; it needs src to itself (autovacuum may be visiting it)."""
    import psycopg

    for attempt in range(20):
        server.run(None, f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{src}' "
                         f"AND pid <> pg_backend_pid()")
        try:
            server.run(None, f'CREATE DATABASE "{tgt}" TEMPLATE "{src}"')
            return
        except psycopg.errors.ObjectInUse:
            time.sleep(0.5 * (attempt + 1))
    raise SystemExit(f"could not copy database {src}: it stays in use")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_000_000, help="rows per table (default 2,000,000)")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres",
                        help="server/admin URL; two scratch databases are created on this server and dropped")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; medians are reported (default 3)")
    parser.add_argument("--profile", action="store_true", help="also run ours once under cProfile (not timed)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return
    if args.rows < 10_000 or args.repeat < 1:
        parser.error("--rows must be at least 10,000 and --repeat at least 1")

    def on_term(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally block that drops the databases

    signal.signal(signal.SIGTERM, on_term)
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    server = Server(args.pg_url)
    n, k = args.rows, args.repeat
    keys = planted(n)
    expected = {key for group in keys.values() for key in group}
    with scratch_databases(server) as (src, tgt):
        log(f"source {src}: generating {n:,} rows")
        server.run(src, DDL, GENERATE.format(rows=n), f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id)")
        copy_database(server, src, tgt)
        changes = [f"UPDATE {TABLE} SET {change} WHERE id = {key}"
                   for change, key in zip(CHANGES, keys["changed"], strict=True)]
        server.run(tgt, *changes, f"DELETE FROM {TABLE} WHERE id IN ({', '.join(map(str, keys['missing_in_target']))})",
                   *(f"INSERT INTO {TABLE} SELECT {new}, customer_id, status, note, payload, amount, created_at, "
                     f"updated_at FROM {TABLE} WHERE id = 2" for new in keys["extra_in_target"]))
        for db in (src, tgt):
            server.run(db, f"VACUUM (ANALYZE) {TABLE}")
        size = server.query(src, f"SELECT pg_size_pretty(pg_total_relation_size('{TABLE}'))")[0]
        log(f"tables ready ({size} each); target mutated: {json.dumps(keys)}; warming the cache")
        two_scans(server, src, tgt)

        floor = Measure("two scans: sum(length(t::text)), both sides at once")
        ours = Measure("ours: checksums() + drill-down (child process)")
        rel1 = Measure("reladiff -k id -c '%' (all columns)")
        rel2 = Measure("reladiff -k id -c '%' -j 2")
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
                log(f"WARNING: ours reported {kinds}, planted {keys}")
            for measure, threads in ((rel1, 1), (rel2, 2)):
                seconds, found = run_reladiff(server, src, tgt, threads)
                measure.runs.append(seconds)
                score(measure, found, expected)
            log(f"run {i + 1}: two scans {floor.runs[-1]:.2f} s, ours {ours.runs[-1]:.2f} s (found {ours.found}/10, "
                f"peak RSS {report['peak_rss_mb']:.1f} MB), reladiff {rel1.runs[-1]:.2f} s, -j 2 {rel2.runs[-1]:.2f} s")
        quarter = run_ours({**cfg, "filter": f"id <= {n // 4}"})
        log(f"ours on a quarter of the rows: {quarter['seconds']:.2f} s, peak RSS {quarter['peak_rss_mb']:.1f} MB")
        if args.profile:
            run_ours({**cfg, "profile": True})

    best_reladiff = min((rel1, rel2), key=lambda m: m.seconds)
    peak = max(r["peak_rss_mb"] for r in reports)
    median_run = sorted(reports, key=lambda r: r["seconds"])[len(reports) // 2]
    print()
    print(f"verify benchmark: {n:,} rows per side ({size}), PostgreSQL -> PostgreSQL on "
          f"{args.pg_url.split('@')[-1]}, 10 keys differ, median of {k}")
    print()
    header = f"{'method':<54} {'seconds':>8} {'vs two scans':>13} {'found':>7}  runs (s)"
    print(header)
    print("-" * len(header))
    for m in (floor, ours, rel1, rel2):
        found = f"{m.found}/10" if m.found is not None else "-"
        extra = f"  (+{m.extra} keys not planted)" if m.extra else ""
        runs = ", ".join(f"{r:.2f}" for r in m.runs)
        print(f"{m.method:<54} {m.seconds:>8.2f} {m.seconds / floor.seconds:>12.2f}x {found:>7}  [{runs}]{extra}")
    print()
    phases = median_run["phases"]
    drill, compare = phases.get("_drill", 0.0), phases.get("_compare", 0.0)
    print(f"ours, median run ({median_run['seconds']:.2f} s): {median_run['detail']}")
    print(f"  source {median_run['source']}, target {median_run['target']}; setup + segment hashes "
          f"{median_run['seconds'] - drill - compare:.2f} s, drill-down {drill:.2f} s, row comparison {compare:.2f} s")
    print(f"memory: peak RSS {peak:.1f} MB on {n:,} rows vs {quarter['peak_rss_mb']:.1f} MB on {n // 4:,} rows "
          f"(after imports, before the check: {median_run['rss_before_mb']:.1f} MB)")
    print(f"total benchmark time: {time.perf_counter() - started:.1f} s; {os.cpu_count()} CPUs, 1-minute load "
          f"average {load_before:.2f} at start, {os.getloadavg()[0]:.2f} at end")
    print()
    print(f"verify rows={n} found={ours.found}/10 ratio_vs_reladiff={ours.seconds / best_reladiff.seconds:.2f} "
          f"ratio_vs_two_scans={ours.seconds / floor.seconds:.2f} peak_rss_mb={peak:.1f}")


if __name__ == "__main__":
    main()
