#!/usr/bin/env python
"""Benchmark dual write on PostgreSQL: capture's cost to the writer, replay throughput, the cutover's lock hold.

Three parts in one run, each printed next to a reference measured in the same run:

1. capture overhead: ``--writes`` single-row writes (60% UPDATE, 20% INSERT, 20% DELETE by primary key, one
   transaction each, one client) on a table with capture installed (``PgCaptureSql.install``: statement-level
   triggers with transition tables into a change table) and on the same table without it, interleaved in blocks
   of 50 so that both see the same server; median and p95 per operation. Then ``--multi`` multi-row statements
   (1,000 rows each) per kind, medians;
2. replay: ``--changes`` changes (60% updates, 20% inserts, 20% deletes, statements of 1,000 rows on scattered
   keys) made to a ``--replay-rows`` table under capture, replayed by the engine (``forward_replayer(...).drain``:
   batches of ``--batch-changes``, a checkpoint each) into a table in another database (PG->PG) and into one in
   the same database. Reference, the same changed keys brought up to date by hand: a ``psql \\copy`` pipe of the
   current rows into a stage + ``INSERT ... ON CONFLICT DO UPDATE`` + ``DELETE`` (PG->PG), and that upsert +
   delete straight from the source table (same database), one transaction each. ``--repeat`` rounds, each with new
   changes (medians);
3. cutover: a ``--cutover-rows`` table under dual write (history copied by the engine, ``DualWriteKind.apply``,
   or by SQL with ``--history sql``), one application session writing ``--writer-rate`` single-row UPDATEs per
   second, ``--pending`` more changes made right after the cutover's catch-up (so they are left for the final
   replay under the lock), then ``Cutover.switch()``: by rename (same database) and/or by a Variable (a dict;
   PG->PG, the writer follows it). Printed: the lock hold (``SwitchReport.lock_seconds``), the final replay's
   changes, the writer's longest wait, and as reference how long ``SELECT count(*)`` of both tables takes (what
   counting under the lock would have cost).

Two scratch databases are created on the server of ``--pg-url`` and dropped at the end, also on error or Ctrl-C.
The last line printed is machine-readable::

    dual_write writes=N write_p50_ratio=W1 write_p95_ratio=W2 multi_row_ratio=W3 replay_changes=C
    replay_ratio_pg_to_pg=R1 replay_ratio_same_db=R2 cutover_rows=M lock_seconds_<switch>=L
    final_changes_<switch>=F count_both_seconds_<switch>=S ...

Usage::

    .venv-test/bin/python benchmarks/dual_write.py --writes 1000 --replay-rows 200000 --changes 20000 \\
        --cutover-rows 500000 --repeat 1          # smoke run (~35 s)
    .venv-test/bin/python benchmarks/dual_write.py   # defaults: 5,000 writes, 3 x 100,000 changes, 5M rows (~4 min)
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import bench_support as bench
from backfill import fingerprint

KINDS = ("update", "insert", "delete")
MULTI_ROWS = 1_000
BLOCK = 50  # single-row writes per block; blocks alternate between the two tables
SINGLE = {
    "update": "UPDATE {t} SET amount = amount + 1, status = 'updated', updated_at = clock_timestamp() WHERE id = %s",
    "insert": "INSERT INTO {t} (id, customer_id, status, note, payload, amount, created_at, updated_at) VALUES "
              "(%s, 42, 'new', 'a new order', jsonb_build_object('sku', 'SKU-00042', 'qty', 1), 9.99, "
              "clock_timestamp(), clock_timestamp())",
    "delete": "DELETE FROM {t} WHERE id = %s",
}
MULTI = {
    "update": "UPDATE {t} SET amount = amount + 1, updated_at = clock_timestamp() WHERE id BETWEEN %s AND %s",
    "insert": "INSERT INTO {t} (id, customer_id, status, note, payload, amount, created_at, updated_at) "
              "SELECT g, 42, 'new', 'a new order', jsonb_build_object('sku', 'SKU-' || g, 'qty', 1), 9.99, "
              "clock_timestamp(), clock_timestamp() FROM generate_series(%s::bigint, %s::bigint) AS g",
    "delete": "DELETE FROM {t} WHERE id BETWEEN %s AND %s",
}
CHANGE = {  # the replay part's changes, on many keys at once
    "update": "UPDATE {t} SET amount = amount + 1, status = 'changed', note = note || '+', "
              "updated_at = clock_timestamp() WHERE id = ANY(%s)",
    "insert": MULTI["insert"].replace("generate_series(%s::bigint, %s::bigint)", "unnest(%s::bigint[])"),
    "delete": "DELETE FROM {t} WHERE id = ANY(%s)",
}
UPSERT_SET = ", ".join(f"{c} = EXCLUDED.{c}" for c in bench.COLUMNS.split(", ")[1:])


# ------------------------------------------------------------------------------------------------------
# small shared pieces
# ------------------------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


def pg_engine(server: bench.Server, database: str) -> Any:
    from sqlalchemy import create_engine

    from airflow_migrate_provider.core.dialects import dialect_for

    engine = create_engine(server.sqlalchemy(database))
    dialect_for(engine)
    return engine


def make_table(server: bench.Server, database: str, table: str, rows: int) -> float:
    """The benchmark table with ``rows`` rows (0: empty), its primary key, vacuumed; seconds taken."""
    t0 = time.perf_counter()
    server.run(database, bench.create_table_sql(table, primary_key=False))
    if rows:
        server.run(database, bench.insert_rows_sql(table, rows), autocommit=False)
    server.run(database, f"ALTER TABLE {table} ADD PRIMARY KEY (id)", f"VACUUM (ANALYZE) {table}")
    return time.perf_counter() - t0


def plan_for(plan_id: str, old: str, new: str, *, separate: bool, batch_changes: int, switch: str | None = None
             ) -> Any:
    """A plan with a dual_write step (and a cutover step when ``switch`` is given), parsed like a plan file."""
    from airflow_migrate_provider.plan.loader import parse_plan

    steps = [f"  - id: sync_orders\n    kind: dual_write\n    source: {{table: {old}}}\n    target: {new}\n"
             f"    key: id\n    replay: {{batch_changes: {batch_changes}}}\n"
             f"    catch_up: {{max_lag_changes: 100, max_lag_seconds: 600, timeout_minutes: 30}}\n"]
    if switch:
        steps.append(f"  - id: cut_over\n    kind: cutover\n    dual_write: sync_orders\n    switch_reads: {switch}\n"
                     f"    approval: false\n    max_lock_seconds: 5\n")
    connections = "{target: new_db, source: old_db}" if separate else "{target: app_db}"
    return parse_plan(f"id: {plan_id}\nconnections: {connections}\nsteps:\n{''.join(steps)}")


def run_context(plan: Any, new_engine: Any, old_engine: Any, variables: Any = None) -> Any:
    from airflow_migrate_provider.core.context import RunContext
    from airflow_migrate_provider.core.dialects import dialect_for
    from airflow_migrate_provider.core.ledger import Ledger, RunIdentity

    ledger = Ledger(new_engine, plan.id)
    ledger.ensure()
    who = RunIdentity("bench_dual_write", f"{plan.id}_run", host=os.uname().nodename, pid=os.getpid())
    return RunContext(new_engine, dialect_for(new_engine), ledger, who, plan=plan,
                      source=None if old_engine is new_engine else old_engine, variables=variables)


_DURATIONS: dict[str, list[float]] = {}


def timings() -> dict[str, list[float]]:
    """Where the durations of the engine's steps go (emptied here): the parts of a replay batch, of a switch.
    Their methods are wrapped on the first call (in this process only; the package is untouched)."""
    from airflow_migrate_provider.core.backfill.copier import BatchCopier
    from airflow_migrate_provider.core.backfill.lock_counts import LockCounts
    from airflow_migrate_provider.core.capture.cutover import Cutover
    from airflow_migrate_provider.core.capture.replay import Replayer

    if "wrapped" not in _DURATIONS:
        for owner, names in ((Replayer, ("_read_changes", "_gone_keys", "_delete_keys", "_upsert_keys", "_checkpoint",
                                         "_forget", "lag")),
                             (BatchCopier, ("_stream", "_merge_stage")),
                             (Cutover, ("catch_up", "_switch_under_lock", "_after_switch")), (LockCounts, ("finish",))):
            for name in names:
                bench.record_call_durations(owner, name, _DURATIONS)
    _DURATIONS.clear()
    _DURATIONS["wrapped"] = []
    return _DURATIONS


def pieces_text(totals: dict[str, float]) -> str:
    names = {"_read_changes": "read changes", "_gone_keys": "find gone keys", "_delete_keys": "delete them",
             "_upsert_keys": "upsert", "_stream": "of which COPY to stage", "_merge_stage": "merge stage",
             "_checkpoint": "checkpoint", "_forget": "delete change rows", "lag": "lag queries"}
    return ", ".join(f"{label} {totals.get(k, 0.0):.2f} s" for k, label in names.items())


def change_table_of(ctx: Any, step: Any) -> str:
    from airflow_migrate_provider.core.kinds.dual_write import capture_names

    return str(capture_names(ctx.plan_id, step).change_table)


# ------------------------------------------------------------------------------------------------------
# part 1: capture overhead on the writer
# ------------------------------------------------------------------------------------------------------
def overhead_ops(rows: int, writes: int, rng: random.Random) -> list[tuple[str, tuple[int, ...]]]:
    """60% updates (ids in the first half), 20% inserts (new ids), 20% deletes (distinct ids of the third
    quarter), shuffled; the same list runs on both tables."""
    n_ins = n_del = writes // 5
    deletes = rng.sample(range(rows // 2 + 1, rows * 3 // 4 + 1), n_del)
    ops = ([("update", (rng.randint(1, rows // 2),)) for _ in range(writes - n_ins - n_del)]
           + [("insert", (rows * 10 + i,)) for i in range(n_ins)] + [("delete", (k,)) for k in deletes])
    rng.shuffle(ops)
    return ops


def measure_overhead(server: bench.Server, db: str, args: argparse.Namespace) -> dict[str, Any]:
    import psycopg

    from airflow_migrate_provider.core.dialects import dialect_for
    from airflow_migrate_provider.core.dialects.capture import CaptureNames, capture_sql

    rows, tables = args.write_rows, ("w_plain", "w_captured")
    for table in tables:
        make_table(server, db, table, rows)
    engine = pg_engine(server, db)
    names = CaptureNames.of("bench_overhead", "writes", "forward", "w_captured", ["id"])
    with engine.begin() as conn:
        capture_sql(dialect_for(engine)).install(conn, names)
    engine.dispose()
    ops = overhead_ops(rows, args.writes, random.Random(7))
    single = {t: {k: SINGLE[k].format(t=t) for k in KINDS} for t in tables}
    multi = {t: {k: MULTI[k].format(t=t) for k in KINDS} for t in tables}
    lat: dict[str, dict[str, list[float]]] = {t: {k: [] for k in (*KINDS, *(f"multi_{k}" for k in KINDS))}
                                              for t in tables}
    server.admin("CHECKPOINT")
    with psycopg.connect(server.libpq(db)) as conn:
        for table in tables:  # warm-up, not timed: prepared statements, the trigger functions, caches
            for i in range(30):
                conn.execute(single[table]["update"], (1 + i,))
                conn.execute(single[table]["insert"], (rows * 30 + i,))
                conn.execute(single[table]["delete"], (rows * 30 + i,))
                conn.commit()
        for b, start in enumerate(range(0, len(ops), BLOCK)):
            for table in tables if b % 2 == 0 else reversed(tables):
                for kind, params in ops[start:start + BLOCK]:
                    t0 = time.perf_counter()
                    conn.execute(single[table][kind], params)
                    conn.commit()
                    lat[table][kind].append(time.perf_counter() - t0)
        for i in range(args.multi):
            ranges = {"update": (1 + i * MULTI_ROWS, (i + 1) * MULTI_ROWS),
                      "insert": (rows * 20 + 1 + i * MULTI_ROWS, rows * 20 + (i + 1) * MULTI_ROWS),
                      "delete": (rows * 3 // 4 + 1 + i * MULTI_ROWS, rows * 3 // 4 + (i + 1) * MULTI_ROWS)}
            for kind in KINDS:
                for table in tables if i % 2 == 0 else reversed(tables):
                    t0 = time.perf_counter()
                    cur = conn.execute(multi[table][kind], ranges[kind])
                    conn.commit()
                    lat[table][f"multi_{kind}"].append(time.perf_counter() - t0)
                    if cur.rowcount != MULTI_ROWS:
                        raise SystemExit(f"a multi-row {kind} on {table} wrote {cur.rowcount} rows")
    captured, size = server.query(db, f"SELECT count(*), pg_size_pretty(pg_total_relation_size("
                                      f"'{names.change_table}')) FROM {names.change_table}")
    sync = server.query(db, "SHOW synchronous_commit")[0]
    server.run(db, "DROP TABLE w_plain, w_captured CASCADE", f"DROP TABLE {names.change_table}")
    return {"lat": lat, "captured": int(captured), "change_table_size": size, "synchronous_commit": sync}


def print_overhead(result: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    plain, captured = result["lat"]["w_plain"], result["lat"]["w_captured"]
    header = (f"{'operation (one transaction each)':<34} {'n':>6} {'off p50 ms':>11} {'on p50 ms':>10} "
              f"{'p50 on/off':>11} {'off p95 ms':>11} {'on p95 ms':>10} {'p95 on/off':>11}")
    every_off, every_on = ([x for k in KINDS for x in side[k]] for side in (plain, captured))
    rows = [(f"single-row {k}", plain[k], captured[k]) for k in KINDS]
    rows.append(("all single-row writes", every_off, every_on))
    rows += [(f"{MULTI_ROWS:,}-row {k} (one statement)", plain[f"multi_{k}"], captured[f"multi_{k}"]) for k in KINDS]
    lines = []
    for label, off, on in rows:
        r50, r95 = pct(on, 0.5) / pct(off, 0.5), pct(on, 0.95) / pct(off, 0.95)
        lines.append(f"{label:<34} {len(on):>6,} {ms(pct(off, 0.5)):>11} {ms(pct(on, 0.5)):>10} {r50:>10.2f}x "
                     f"{ms(pct(off, 0.95)):>11} {ms(pct(on, 0.95)):>10} {r95:>10.2f}x")
    print(f"1. capture overhead on the writer: {args.writes:,} single-row writes per table on {args.write_rows:,} "
          f"rows, one client, blocks of {BLOCK} alternating between the tables; synchronous_commit="
          f"{result['synchronous_commit']}")
    print()
    bench.print_table(header, lines)
    print(f"capture wrote {result['captured']:,} change rows ({result['change_table_size']}); 'off' is the same "
          f"table without triggers")
    multi_on = sum(statistics.median(captured[f"multi_{k}"]) for k in KINDS)
    multi_off = sum(statistics.median(plain[f"multi_{k}"]) for k in KINDS)
    return {"p50": pct(every_on, 0.5) / pct(every_off, 0.5), "p95": pct(every_on, 0.95) / pct(every_off, 0.95),
            "multi": multi_on / multi_off}


# ------------------------------------------------------------------------------------------------------
# part 2: replay throughput
# ------------------------------------------------------------------------------------------------------
@dataclass
class ReplayMethod:
    method: str
    run: Callable[[], int | None]  # one replay; ours returns the changes it replayed
    runs: list[float] = field(default_factory=list)
    changes: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return statistics.median(c / s for c, s in zip(self.changes, self.runs, strict=True))


def make_changes(server: bench.Server, db: str, table: str, keys: list[int], new_ids: range) -> int:
    """Updates on the first 75% of ``keys``, deletes of the rest, inserts of ``new_ids``, in statements of
    1,000 rows (each committed), kinds interleaved; the changes made."""
    import psycopg

    n_upd = len(keys) * 3 // 4
    work = {"update": keys[:n_upd], "delete": keys[n_upd:], "insert": list(new_ids)}
    parts = [(kind, ids[i:i + MULTI_ROWS]) for kind, ids in work.items() for i in range(0, len(ids), MULTI_ROWS)]
    random.Random(len(keys)).shuffle(parts)
    made = 0
    with psycopg.connect(server.libpq(db)) as conn:
        for kind, ids in parts:
            made += conn.execute(CHANGE[kind].format(t=table), (ids,)).rowcount
            conn.commit()
    return made


def psql_replay_pipe(server: bench.Server, src: str, tgt: str) -> None:
    """The by-hand PG->PG replay: every changed key with its current row (NULLs: deleted) piped by psql
    ``\\copy`` into a stage on the target, then upsert + delete, in one transaction."""
    base = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"]
    select = "SELECT k.id AS k, o.* FROM bench_changed AS k LEFT JOIN r_orders AS o ON o.id = k.id"
    cols = bench.COLUMNS
    script = ["BEGIN", "CREATE TEMP TABLE ref_stage AS SELECT NULL::bigint AS k, * FROM r_orders_ref WITH NO DATA",
              "\\copy ref_stage from pstdin",
              f"INSERT INTO r_orders_ref ({cols}) SELECT {cols} FROM ref_stage WHERE id IS NOT NULL "
              f"ON CONFLICT (id) DO UPDATE SET {UPSERT_SET}",
              "DELETE FROM r_orders_ref WHERE id IN (SELECT k FROM ref_stage WHERE id IS NULL)", "COMMIT"]
    out = subprocess.Popen([*base, server.libpq(src), "-c", f"\\copy ({select}) to stdout"], stdout=subprocess.PIPE)
    try:
        into = subprocess.Popen([*base, server.libpq(tgt), *(a for s in script for a in ("-c", s))], stdin=out.stdout)
        assert out.stdout is not None
        out.stdout.close()
        rc_in, rc_out = into.wait(), out.wait()
    finally:
        if out.poll() is None:
            out.kill()
    if rc_in or rc_out:
        raise SystemExit(f"the psql replay pipe failed (exit codes {rc_out} | {rc_in})")


def sql_replay_same_db(server: bench.Server, src: str) -> None:
    """The by-hand same-database replay: upsert of the changed keys' rows + delete of the gone ones."""
    import psycopg

    with psycopg.connect(server.libpq(src)) as conn:
        conn.execute(f"INSERT INTO r_orders_v2_ref ({bench.COLUMNS}) SELECT {bench.COLUMNS} FROM r_orders WHERE id "
                     f"IN (SELECT id FROM bench_changed) ON CONFLICT (id) DO UPDATE SET {UPSERT_SET}")
        conn.execute("DELETE FROM r_orders_v2_ref AS r WHERE r.id IN (SELECT id FROM bench_changed) AND NOT EXISTS "
                     "(SELECT 1 FROM r_orders AS o WHERE o.id = r.id)")


def measure_replay(server: bench.Server, src: str, tgt: str, args: argparse.Namespace) -> list[ReplayMethod]:
    from airflow_migrate_provider.core.kinds import kind_named
    from airflow_migrate_provider.core.kinds.dual_write import forward_replayer

    n, c = args.replay_rows, args.changes
    seconds = make_table(server, src, "r_orders", n)
    for db, table in ((tgt, "r_orders"), (src, "r_orders_v2")):
        make_table(server, db, table, 0)
    bench.log(f"replay: r_orders with {n:,} rows generated in {seconds:.1f} s")
    old, new = pg_engine(server, src), pg_engine(server, tgt)
    kind = kind_named("dual_write")
    ctxs = {}
    for name, target_engine, target in (("pg_to_pg", new, "r_orders"), ("same_db", old, "r_orders_v2")):
        plan = plan_for(f"bench_replay_{name}", "r_orders", target, separate=target_engine is not old,
                        batch_changes=args.batch_changes)
        ctx, step = run_context(plan, target_engine, old), plan.steps[0]
        t0 = time.perf_counter()
        kind.apply(ctx, step)
        bench.log(f"replay, {name}: capture + history copy ({n:,} rows) by DualWriteKind.apply in "
                  f"{time.perf_counter() - t0:.1f} s")
        ctxs[name] = (ctx, step)
    for db, table in ((tgt, "r_orders_ref"), (src, "r_orders_v2_ref")):  # the references' tables: same rows
        make_table(server, db, table, n)

    pieces = timings()

    def ours(name: str) -> Callable[[], int]:
        def run() -> int:  # what one replay task (or the catch-up) does
            ctx, step = ctxs[name]
            timings()
            totals = forward_replayer(ctx, step).drain(args.batch_changes)
            m = methods[0 if name == "pg_to_pg" else 1]
            m.notes.append(f"{totals.batches} batches ({totals.upserted:,} upserted, {totals.deleted:,} deleted): "
                           + pieces_text({k: sum(v) for k, v in pieces.items()}))
            return int(totals.changes)
        return run

    methods = [ReplayMethod("ours: replay PG->PG (another database)", ours("pg_to_pg")),
               ReplayMethod("ours: replay into the same database", ours("same_db")),
               ReplayMethod("psql \\copy pipe + upsert + delete (PG->PG)", lambda: psql_replay_pipe(server, src, tgt)),
               ReplayMethod("upsert + delete by SQL (same database)", lambda: sql_replay_same_db(server, src))]
    rng = random.Random(11)
    old_keys = rng.sample(range(1, n + 1), args.repeat * (c - c // 5))
    change_tables = [change_table_of(*ctxs[name]) for name in ("pg_to_pg", "same_db")]
    for r in range(args.repeat):
        per_round = c - c // 5
        made = make_changes(server, src, "r_orders", old_keys[r * per_round:(r + 1) * per_round],
                            range(n * 10 + r * (c // 5) + 1, n * 10 + (r + 1) * (c // 5) + 1))
        pending = [int(server.query(src, f"SELECT count(*) FROM {t}")[0]) for t in change_tables]
        if pending != [made, made]:
            raise SystemExit(f"captured {pending} changes, expected {made} in each change table")
        server.run(src, "DROP TABLE IF EXISTS bench_changed", f"CREATE TABLE bench_changed AS SELECT DISTINCT k_id "
                   f"AS id FROM {change_tables[0]}", "ANALYZE bench_changed")
        for m in methods if r % 2 == 0 else reversed(methods):
            server.admin("CHECKPOINT")
            t0 = time.perf_counter()
            replayed = m.run()
            m.runs.append(time.perf_counter() - t0)
            m.changes.append(made)
            if replayed is not None and replayed != made:
                raise SystemExit(f"{m.method} replayed {replayed:,} changes, {made:,} were captured")
            bench.log(f"replay round {r + 1}: {m.method}: {m.runs[-1]:.2f} s")
        if r in (0, args.repeat - 1):
            expected = fingerprint(server, src, "r_orders")
            for db, table in ((tgt, "r_orders"), (tgt, "r_orders_ref"), (src, "r_orders_v2"), (src, "r_orders_v2_ref")):
                if fingerprint(server, db, table) != expected:
                    raise SystemExit(f"CORRECTNESS FAILURE: {table} differs from the source after round {r + 1}")
            bench.log(f"verified after round {r + 1}: all four tables equal r_orders ({expected[0]:,} rows)")
    old.dispose()
    new.dispose()
    server.run(src, "DROP TABLE r_orders, r_orders_v2, r_orders_v2_ref, bench_changed CASCADE")
    server.run(tgt, "DROP TABLE r_orders, r_orders_ref CASCADE")
    return methods


def print_replay(methods: list[ReplayMethod], args: argparse.Namespace) -> dict[str, float]:
    header = (f"{'method':<46} {'changes':>9} {'seconds':>8} {'changes/s':>10} {'vs by hand':>11}  runs (s)")
    refs = {0: methods[2], 1: methods[3], 2: methods[2], 3: methods[3]}
    lines = []
    for i, m in enumerate(methods):
        runs = "[" + ", ".join(f"{s:.2f}" for s in m.runs) + "]"
        lines.append(f"{m.method:<46} {statistics.median(m.changes):>9,.0f} {statistics.median(m.runs):>8.2f} "
                     f"{m.rate:>10,.0f} {m.rate / refs[i].rate:>10.2f}x  {runs}")
    print(f"2. replay throughput: {args.changes:,} changes per round (60% updates, 20% inserts, 20% deletes) on a "
          f"{args.replay_rows:,}-row table, {args.batch_changes:,} changes per batch, median of {args.repeat}")
    print()
    bench.print_table(header, lines)
    print("'by hand' is given the changed keys (a table of them, not timed); ours reads the change table, "
          "checkpoints every batch and deletes the replayed change rows")
    for m in methods[:2]:
        median_run = sorted(range(len(m.runs)), key=m.runs.__getitem__)[len(m.runs) // 2]
        print(f"{m.method.split(': ', 1)[1]}, median run: {m.notes[median_run]}")
    return {"pg_to_pg": methods[0].rate / methods[2].rate, "same_db": methods[1].rate / methods[3].rate}


# ------------------------------------------------------------------------------------------------------
# part 3: cutover lock hold
# ------------------------------------------------------------------------------------------------------
class DictVariables:
    """Airflow Variables stand-in for a ``variable`` switch: a dict."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def set(self, key: str, value: str) -> None:
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


class Writer(threading.Thread):
    """An application session: single-row UPDATEs (one transaction each) at ``rate`` per second on the table
    ``route()`` names now. A write refused by the old table's read-only guard is retried where ``route()`` says
    then; its latency runs from the first try."""

    def __init__(self, route: Callable[[], tuple[str, str]], max_id: int, rate: float):
        super().__init__(daemon=True)
        self.route, self.max_id, self.rate = route, max_id, rate
        self.stop = threading.Event()
        self.samples: list[tuple[float, float]] = []  # (start, seconds) per write
        self.refused: list[str] = []
        self.error: str | None = None

    def run(self) -> None:
        import psycopg

        conns: dict[str, Any] = {}
        rng, next_at = random.Random(3), time.perf_counter()
        try:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                while True:
                    url, table = self.route()
                    conn = conns.get(url) or conns.setdefault(url, psycopg.connect(url))
                    try:
                        conn.execute(f"UPDATE {table} SET amount = amount + 0.01, updated_at = clock_timestamp() "
                                     f"WHERE id = %s", (rng.randint(1, self.max_id),))
                        conn.commit()
                        break
                    except psycopg.errors.RaiseException as exc:  # the guard of a table switched away from
                        conn.rollback()
                        self.refused.append(str(exc).splitlines()[0])
                        if len(self.refused) > 50:
                            raise
                self.samples.append((t0, time.perf_counter() - t0))
                next_at = max(next_at + 1 / self.rate, time.perf_counter())
                time.sleep(max(0.0, next_at - time.perf_counter()))
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        finally:
            for conn in conns.values():
                conn.close()


@dataclass
class Scenario:
    """One cutover: where the old and new tables are, how reads switch, what the tables are called after."""

    switch: str  # rename | variable
    old_db: str
    new_db: str
    old: str
    new: str
    old_after: str
    new_after: str
    switch_yaml: str


def cutover_scenarios(src: str, tgt: str, which: str) -> list[Scenario]:
    found = [Scenario("rename", src, src, "c_orders", "c_orders_v2", "c_orders_old", "c_orders",
                      "{rename: {old_table_becomes: c_orders_old}}"),
             Scenario("variable", src, tgt, "v_orders", "v_orders", "v_orders", "v_orders",
                      "{variable: {key: orders_table, value: new}}")]
    return [s for s in found if which in ("both", s.switch)]


def load_history(server: bench.Server, sc: Scenario, kind: Any, ctx: Any, step: Any, how: str) -> str:
    """Fill the new table: by the engine (capture, history copy, replay) or by SQL after capture is installed."""
    rows = int(server.query(sc.old_db, f"SELECT count(*) FROM {sc.old}")[0])
    t0 = time.perf_counter()
    if how == "engine":
        kind.apply(ctx, step)
        what = "by the engine (DualWriteKind.apply: capture, history copy in checkpointed batches, replay)"
    else:
        kind.capture(ctx, step)
        if sc.old_db == sc.new_db:
            server.run(sc.new_db, f"INSERT INTO {sc.new} SELECT * FROM {sc.old}")
        else:
            base = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d"]
            out = subprocess.Popen([*base, server.libpq(sc.old_db), "-c", f"\\copy {sc.old} to stdout"],
                                   stdout=subprocess.PIPE)
            rc = subprocess.run([*base, server.libpq(sc.new_db), "-c", f"\\copy {sc.new} from stdin"],
                                stdin=out.stdout).returncode
            if out.wait() or rc:
                raise SystemExit("the psql history copy failed")
        kind.finish(ctx, step, kind.replay(ctx, step))
        what = "by SQL after installing capture (INSERT ... SELECT, or a psql \\copy pipe), then a replay"
    seconds = time.perf_counter() - t0
    server.run(sc.new_db, f"ANALYZE {sc.new}")
    return f"{rows:,} rows copied {what} in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)"


def measure_cutover(server: bench.Server, sc: Scenario, args: argparse.Namespace) -> dict[str, Any]:
    from airflow_migrate_provider.core.capture.cutover import Cutover, SwitchReport
    from airflow_migrate_provider.core.kinds import kind_named
    from airflow_migrate_provider.errors import CutoverFailed

    n = args.cutover_rows
    made = make_table(server, sc.old_db, sc.old, n)
    make_table(server, sc.new_db, sc.new, 0)
    setup = [f"{sc.old}: {n:,} rows generated by INSERT ... SELECT generate_series in {made:.1f} s "
             f"({server.table_size(sc.old_db, sc.old)})"]
    bench.log(f"cutover ({sc.switch}): {setup[0]}")
    old, new = pg_engine(server, sc.old_db), pg_engine(server, sc.new_db)
    variables = DictVariables()
    plan = plan_for(f"bench_cutover_{sc.switch}", sc.old, sc.new, separate=sc.old_db != sc.new_db,
                    batch_changes=args.batch_changes, switch=sc.switch_yaml)
    ctx, dual_write, cutover = run_context(plan, new, old, variables), plan.steps[0], plan.steps[1]
    setup.append(load_history(server, sc, kind_named("dual_write"), ctx, dual_write, args.history))
    bench.log(f"cutover ({sc.switch}): {setup[1]}")

    def route() -> tuple[str, str]:
        if sc.switch == "variable" and variables.get("orders_table") == "new":
            return server.libpq(sc.new_db), sc.new_after
        return server.libpq(sc.old_db), sc.old  # by rename, the new table takes this name at the switch

    rng = random.Random(5)
    keys = rng.sample(range(n // 2, n + 1), args.pending - args.pending // 5)
    pending_ids = range(n * 10 + 1, n * 10 + args.pending // 5 + 1)
    made_pending: list[int] = []

    class BenchCutover(Cutover):
        """The engine's Cutover; right after its catch-up, the ``--pending`` changes are made (left for the
        final replay under the lock)."""

        def catch_up(self, *args: Any, **kwargs: Any) -> Any:
            totals = super().catch_up(*args, **kwargs)
            made_pending.append(make_changes(server, sc.old_db, sc.old, keys, pending_ids))
            return totals

    writer = Writer(route, n // 10, args.writer_rate)
    server.admin("CHECKPOINT")
    writer.start()
    time.sleep(2.0)
    durations = timings()
    failed = None
    t0 = time.perf_counter()
    try:
        report = BenchCutover(ctx, cutover, dual_write, variables).switch()
    except CutoverFailed as exc:  # e.g. the lock held past max_lock_seconds: a result too
        report, failed = SwitchReport(), str(exc)
        bench.log(f"cutover ({sc.switch}) FAILED: {failed}")
    t1 = time.perf_counter()
    time.sleep(1.0)
    writer.stop.set()
    writer.join()
    if writer.error:
        raise SystemExit(f"the writer failed: {writer.error}")
    counts: dict[str, list[float]] = {"old": [], "new": []}
    after = sc if failed is None else replace(sc, old_after=sc.old, new_after=sc.new)  # not switched
    for _ in range(3):
        for side, db, table in (("old", after.old_db, after.old_after), ("new", after.new_db, after.new_after)):
            c0 = time.perf_counter()
            server.query(db, f"SELECT count(*) FROM {table}")
            counts[side].append(time.perf_counter() - c0)
    before = [s for t, s in writer.samples if t < t0]
    during = [s for t, s in writer.samples if t0 <= t <= t1]
    old.dispose()
    new.dispose()
    server.run(after.old_db, f"DROP TABLE {after.old_after} CASCADE")
    server.run(after.new_db, f"DROP TABLE {after.new_after} CASCADE")
    return {"switch": sc.switch, "report": report, "failed": failed, "switch_seconds": t1 - t0, "setup": setup,
            "pending": made_pending[0] if made_pending else 0, "durations": {k: sum(v) for k, v in durations.items()},
            "count_old": statistics.median(counts["old"]), "count_new": statistics.median(counts["new"]),
            "writer_before_p50": statistics.median(before) if before else 0.0,
            "writer_during": during, "writer_writes": len(writer.samples), "refused": writer.refused,
            "rows": n}


def print_cutover(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"3. cutover lock hold: a {args.cutover_rows:,}-row table under dual write; {args.pending:,} changes made "
          f"right after the cutover's catch-up; one session writing {args.writer_rate:g} single-row UPDATEs/s "
          f"throughout")
    print()
    header = (f"{'switch':<26} {'lock s':>7} {'final replay':>13} {'count both s':>13} {'lock+count s':>13} "
              f"{'switch() s':>11} {'writer max wait s':>18}")
    lines = []
    for r in results:
        rep, both = r["report"], r["count_old"] + r["count_new"]
        wait = max(r["writer_during"], default=0.0)
        label = {"rename": "rename (same database)", "variable": "Variable (dict), PG->PG"}[r["switch"]]
        lock, final, total = ((f"{rep.lock_seconds:.3f}", f"{rep.final_changes:,}", f"{rep.lock_seconds + both:.3f}")
                              if not r["failed"] else ("FAILED", "-", "-"))
        lines.append(f"{label:<26} {lock:>7} {final:>13} {both:>13.3f} {total:>13} {r['switch_seconds']:>11.2f} "
                     f"{wait:>18.3f}")
    bench.print_table(header, lines)
    for r in results:
        rep, d = r["report"], r["durations"]
        print(f"{r['switch']}: setup: {'; '.join(r['setup'])}")
        if r["failed"]:
            print(f"  FAILED: {r['failed']}")
        else:
            print(f"  switch(): catch-up {d.get('catch_up', 0):.2f} s (then {r['pending']:,} changes made), lock "
                  f"{rep.lock_seconds:.3f} s (final replay of {rep.final_changes:,} changes: those and the writer's "
                  f"meanwhile), counts after the lock {d.get('finish', 0):.2f} s, stragglers replayed after the "
                  f"switch {rep.stragglers:,} ({d.get('_after_switch', 0):.2f} s)")
            print(f"  replay during switch(): {pieces_text(d)}")
            print(f"  rows at the lock: old {rep.old_rows:,}, new {rep.new_rows:,} ({rep.counted}); {rep.switched}")
        print(f"  reference: SELECT count(*) old {r['count_old']:.3f} s + new {r['count_new']:.3f} s (median of 3, "
              f"warm cache): what counting both under the lock would add")
        print(f"  writer: {r['writer_writes']:,} writes, median {ms(r['writer_before_p50'])} ms before the switch; "
              f"{len(r['writer_during'])} started during switch(), the longest waited "
              f"{max(r['writer_during'], default=0.0):.3f} s; refused by the old table's read-only "
              f"guard and retried on the new one: {len(r['refused'])}")


# ------------------------------------------------------------------------------------------------------
# command line
# ------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--pg-url", default=bench.DEFAULT_PG_URL, help="server/admin URL; two scratch databases are made and dropped")
    add("--parts", default="overhead,replay,cutover", help="which parts to run (comma-separated; default all)")
    add("--writes", type=int, default=5_000, help="single-row writes per table in part 1 (default 5,000)")
    add("--write-rows", type=int, default=100_000, help="rows of the part 1 tables (default 100,000)")
    add("--multi", type=int, default=10, help=f"{MULTI_ROWS:,}-row statements per kind and table (default 10)")
    add("--replay-rows", type=int, default=1_000_000, help="rows of the part 2 table (default 1,000,000)")
    add("--changes", type=int, default=100_000, help="changes per replay round (default 100,000)")
    add("--batch-changes", type=int, default=5_000, help="replay.batch_changes (default 5,000, the plan default)")
    add("--repeat", type=int, default=3, help="replay rounds; medians are reported (default 3)")
    add("--cutover-rows", type=int, default=5_000_000, help="rows of the part 3 table (default 5,000,000)")
    add("--pending", type=int, default=1_000, help="changes left for the final replay (default 1,000)")
    add("--switch", choices=("both", "rename", "variable"), default="both", help="part 3's switch (default both)")
    add("--writer-rate", type=float, default=50.0, help="part 3 writer's UPDATEs per second (default 50)")
    add("--history", choices=("engine", "sql"), default="engine",
        help="part 3: copy the history by the engine (default) or by SQL after installing capture")
    args = parser.parse_args(argv)
    args.parts = {p.strip() for p in args.parts.split(",") if p.strip()}
    if args.parts - {"overhead", "replay", "cutover"}:
        parser.error("--parts takes overhead, replay, cutover")
    if args.write_rows < 4 * max(args.writes // 5, args.multi * MULTI_ROWS, 100):
        parser.error("--write-rows must be at least 4 x max(writes/5, multi x 1,000)")
    if args.replay_rows < args.repeat * args.changes or args.changes < 1_000 or args.repeat < 1:
        parser.error("--replay-rows must be at least --repeat x --changes; --changes at least 1,000")
    if args.pending < 5 or args.cutover_rows < 4 * args.pending:
        parser.error("--pending must be at least 5 and --cutover-rows at least 4 x --pending")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    bench.exit_on_sigterm()
    clock = bench.BenchmarkClock()
    server = bench.Server(args.pg_url)
    overhead: dict[str, Any] | None = None
    replay: list[ReplayMethod] = []
    cutovers: list[dict[str, Any]] = []
    with bench.scratch_databases(server, "dual_write") as (src, tgt):
        bench.log(f"scratch databases {src}, {tgt}")
        if "overhead" in args.parts:
            overhead = measure_overhead(server, src, args)
            bench.log("capture overhead measured")
        if "replay" in args.parts:
            replay = measure_replay(server, src, tgt, args)
        if "cutover" in args.parts:
            cutovers = [measure_cutover(server, sc, args) for sc in cutover_scenarios(src, tgt, args.switch)]

    print()
    print(f"dual write benchmark, PostgreSQL on {args.pg_url.split('@')[-1]}")
    last = ["dual_write"]
    if overhead is not None:
        print()
        ratios = print_overhead(overhead, args)
        last += [f"writes={args.writes}", f"write_p50_ratio={ratios['p50']:.2f}",
                 f"write_p95_ratio={ratios['p95']:.2f}", f"multi_row_ratio={ratios['multi']:.2f}"]
    if replay:
        print()
        rates = print_replay(replay, args)
        last += [f"replay_changes={args.changes}", f"replay_ratio_pg_to_pg={rates['pg_to_pg']:.2f}",
                 f"replay_ratio_same_db={rates['same_db']:.2f}"]
    if cutovers:
        print()
        print_cutover(cutovers, args)
        last.append(f"cutover_rows={args.cutover_rows}")
        for r in cutovers:
            lock = "failed" if r["failed"] else f"{r['report'].lock_seconds:.3f}"
            last += [f"lock_seconds_{r['switch']}={lock}",
                     f"final_changes_{r['switch']}={r['report'].final_changes}",
                     f"count_both_seconds_{r['switch']}={r['count_old'] + r['count_new']:.3f}"]
    print()
    print(f"{clock.summary()} (other work on the machine adds noise)")
    print()
    print(" ".join(last))


if __name__ == "__main__":
    main()
