"""The MariaDB -> MariaDB part of ``backfill.py``: our backfill step against a ``mariadb-dump | mariadb`` pipe.

Both copy the same table (``bench_support``'s benchmark table, in MariaDB types: bigint key, ints, text, JSON with
numbers above 2**53, decimal(12,2), datetime(3)) into the same empty table of a second scratch database, alternating
``repeat`` times; the first run of ours is checked (count and a CRC32 sum of every row equal to the source).
The reference is what a user would type: ``mariadb-dump --no-create-info <db> <table> | mariadb <db>`` (extended
INSERTs, unique and foreign-key checks off, the table locked; no checkpoints).
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import bench_support as bench

DEFAULT_URL = "mysql://root@127.0.0.1:3306/"
TABLE_DDL = """CREATE TABLE orders (
    id bigint PRIMARY KEY, customer_id int, status text, note text, payload json, amount decimal(12,2),
    created_at datetime(3), updated_at datetime(3)
)"""
FILL = """INSERT INTO orders
SELECT seq, 1 + (seq * 7919) % 250000,
       ELT(1 + (seq * 31) % 7, 'new', 'paid', 'packed', 'shipped', 'delivered', 'cancelled', 'refunded'),
       LEFT(CONCAT('Order ', seq, ' for customer ', 1 + (seq * 7919) % 250000, ': ', MD5(seq), ' ', MD5(seq * 3)),
            40 + (seq * 13) % 41),
       JSON_OBJECT('sku', CONCAT('SKU-', LPAD((seq * 17) % 50000, 5, '0')), 'qty', 1 + seq % 9,
                   'ext_ref', 9007199254740993 + seq * 1000003, 'gift', seq % 11 = 0,
                   'channel', ELT(1 + seq % 4, 'web', 'app', 'store', 'phone')),
       ((seq * 104729) % 10000000) / 100.0,
       TIMESTAMP'2021-01-01 00:00:00' + INTERVAL seq * 15 SECOND + INTERVAL (seq * 7) % 1000 * 1000 MICROSECOND,
       TIMESTAMP'2021-01-01 00:00:00' + INTERVAL seq * 15 SECOND + INTERVAL (seq * 97) % 172800 SECOND
FROM seq_1_to_{rows}"""
FINGERPRINT = ("SELECT count(*), COALESCE(SUM(CRC32(CONCAT_WS('|', id, customer_id, status, note, payload, amount, "
               "created_at, updated_at))), 0) FROM orders")
LEDGER_TABLES = ("airflow_migrate_backfill", "airflow_migrate_history", "airflow_migrate_lock")


class MariadbServer:
    """The server of ``--mariadb-url``: statements, queries, client arguments and SQLAlchemy URLs."""

    def __init__(self, url: str):
        from sqlalchemy.engine import make_url

        self.url = make_url(url)

    def connect(self, database: str | None = None) -> Any:
        import pymysql

        return pymysql.connect(host=self.url.host or "127.0.0.1", port=self.url.port or 3306,
                               user=self.url.username or "root", password=self.url.password or "",
                               database=database, charset="utf8mb4", autocommit=True)

    def run(self, database: str | None, *statements: str) -> None:
        with self.connect(database) as conn, conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)

    def query(self, database: str, sql: str) -> tuple[Any, ...]:
        with self.connect(database) as conn, conn.cursor() as cur:
            cur.execute(sql)
            return tuple(cur.fetchone())

    def client_args(self) -> list[str]:
        args = ["-h", self.url.host or "127.0.0.1", "-P", str(self.url.port or 3306), "-u", self.url.username or "root"]
        return args + ([f"-p{self.url.password}"] if self.url.password else [])

    def sqlalchemy(self, database: str) -> str:
        url = self.url.set(drivername="mysql+pymysql", database=database,
                           query={"charset": "utf8mb4", "local_infile": "1"})
        return url.render_as_string(hide_password=False)


@contextmanager
def scratch(server: MariadbServer) -> Iterator[tuple[str, str]]:
    """Two uniquely named databases (source, target), dropped at the end, also on error."""
    tag = f"bench_backfill_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    names = (f"{tag}_src", f"{tag}_tgt")
    try:
        for name in names:
            server.run(None, f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        yield names
    finally:
        for name in names:
            server.run(None, f"DROP DATABASE IF EXISTS `{name}`")
        bench.log(f"dropped MariaDB scratch databases {', '.join(names)}")


def prepare_target(server: MariadbServer, tgt: str) -> None:
    """Empty the target table and forget earlier backfill runs."""
    server.run(tgt, "TRUNCATE orders", *(f"DELETE FROM {t}" for t in LEDGER_TABLES if _exists(server, tgt, t)))


def _exists(server: MariadbServer, database: str, table: str) -> bool:
    with server.connect(database) as conn, conn.cursor() as cur:
        cur.execute("SHOW TABLES LIKE %s", (table,))
        return cur.fetchone() is not None


def run_dump_pipe(server: MariadbServer, src: str, tgt: str) -> tuple[float, float]:
    """Wall seconds and CPU seconds of ``mariadb-dump --no-create-info src orders | mariadb tgt``."""
    dump, client = shutil.which("mariadb-dump") or "mysqldump", shutil.which("mariadb") or "mysql"
    cpu0, t0 = _children_cpu(), time.perf_counter()
    out = subprocess.Popen([dump, *server.client_args(), "--no-create-info", src, "orders"], stdout=subprocess.PIPE)
    try:
        into = subprocess.Popen([client, *server.client_args(), tgt], stdin=out.stdout)
        assert out.stdout is not None
        out.stdout.close()
        rc_in, rc_out = into.wait(), out.wait()
    finally:
        if out.poll() is None:
            out.kill()
    if rc_in or rc_out:
        raise SystemExit(f"the mariadb-dump pipe failed (exit codes {rc_out} | {rc_in})")
    return time.perf_counter() - t0, _children_cpu() - cpu0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def compare(url: str, rows: int, repeat: int, run_ours: Callable[[dict[str, Any]], dict[str, Any]],
            measure: Callable[..., Any], print_copy_table: Callable[..., None]) -> str:
    """Run the comparison (``run_ours``: backfill.py's child run; ``measure``: its CopyMeasure), print its table;
    the machine-readable line."""
    server = MariadbServer(url)
    with scratch(server) as (src, tgt):
        bench.log(f"MariaDB source {src}: generating {rows:,} rows")
        server.run(src, TABLE_DDL, FILL.format(rows=int(rows)), "ANALYZE TABLE orders")
        server.run(tgt, TABLE_DDL)
        source_print = server.query(src, FINGERPRINT)
        pipe = measure(method="mariadb-dump | mariadb (extended INSERTs)", rows=rows)
        ours = measure(method="ours: backfill step MariaDB->MariaDB", rows=rows,
                           note="LOAD DATA LOCAL via a pipe, checkpoint per batch")
        for i in range(repeat):
            _one_round(server, src, tgt, pipe, ours, run_ours, i, source_print)
    print()
    print(f"backfill benchmark: {rows:,} rows, MariaDB -> MariaDB on {server.url.host}:{server.url.port or 3306}, "
          f"median of {repeat}")
    print()
    print_copy_table([pipe, ours], pipe, "dump pipe")
    print(f"ours: client CPU {statistics.median(ours.cpu):.2f} s per run; the dump pipe's two clients "
          f"{statistics.median(pipe.cpu):.2f} s")
    return f"backfill_mariadb rows={rows} ratio_vs_dump_pipe={ours.rate / pipe.rate:.2f}"


def _one_round(server: MariadbServer, src: str, tgt: str, pipe: Any, ours: Any,
               run_ours: Callable[[dict[str, Any]], dict[str, Any]], i: int, source_print: tuple[Any, ...]) -> None:
    prepare_target(server, tgt)
    seconds, cpu = run_dump_pipe(server, src, tgt)
    pipe.runs.append(seconds)
    pipe.cpu.append(cpu)
    if server.query(tgt, FINGERPRINT) != source_print:
        raise SystemExit("the mariadb-dump pipe copied different rows")
    bench.log(f"mariadb-dump pipe run {i + 1}: {seconds:.2f} s")
    prepare_target(server, tgt)
    report = run_ours({"src": server.sqlalchemy(src), "tgt": server.sqlalchemy(tgt), "plan_id": f"bench_my_{i}",
                       "run_id": f"bench_my_{i}_run", "source_table": "orders", "target_table": "orders"})
    ours.runs.append(report["seconds"])
    ours.cpu.append(report["cpu"])
    bench.log(f"ours run {i + 1}: {report['seconds']:.2f} s ({len(report['batches'])} batches)")
    if i == 0:
        copied = server.query(tgt, FINGERPRINT)
        if copied != source_print:
            raise SystemExit(f"CORRECTNESS FAILURE: source (count, crc sum) {source_print} != target {copied}")
        bench.log(f"verified: {copied[0]:,} rows, CRC32 sum {copied[1]} match the source")
