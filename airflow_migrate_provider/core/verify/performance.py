"""Query performance on the target compared with the source: the same workload timed on both sides.

Each query runs ``warmup`` times untimed, then ``runs`` times timed, fetching every row, on one connection
per side. Runs alternate between the sides (source, target, source, ...), never concurrently, so that a
background load slows both sides alike instead of the one that happened to run during it. The median
wall time per side is compared: ``change % = (target / source - 1) * 100``.
"""

from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import dataclass

from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.dialects import is_transient
from airflow_migrate_provider.core.verify.base import MAX_REPORTED, CheckResult, Difference
from airflow_migrate_provider.errors import BenchmarkError, db_error_line
from airflow_migrate_provider.masking import mask_text


@dataclass
class BenchmarkQuery:
    """One query of the workload. ``target_sql`` None: the same SQL runs on both sides."""

    name: str
    source_sql: str
    target_sql: str | None = None


@dataclass
class QueryTiming:
    """Median wall times of one query, in milliseconds."""

    name: str
    source_ms: float
    target_ms: float

    @property
    def change_pct(self) -> float:
        if self.source_ms <= 0:
            return 0.0 if self.target_ms <= 0 else float("inf")
        return (self.target_ms / self.source_ms - 1.0) * 100.0


def compare_performance(source: Engine, target: Engine, queries: list[BenchmarkQuery], runs: int = 5,
                        warmup: int = 1, tolerance_pct: float = 10.0, fail_on_degradation: bool = True, *,
                        min_delta_ms: float = 0.0) -> CheckResult:
    """Time every query on both sides; a query whose target median is more than ``tolerance_pct`` slower
    than its source median is a degradation (one ``Difference`` each). Degradations fail the check, or
    only warn (``passed`` True, ``warning`` True) when ``fail_on_degradation`` is False.

    ``min_delta_ms``: a slowdown smaller than this many milliseconds is never a degradation (timer noise
    on sub-millisecond queries). Raises ``BenchmarkError`` naming the query that failed.
    """
    _validate(queries, runs, warmup, tolerance_pct)
    started = time.monotonic()
    timings: list[QueryTiming] = []
    with source.connect() as src, target.connect() as tgt:
        for query in queries:
            timings.append(_time_query(query, src, tgt, runs, warmup))

    degraded = [t for t in timings
                if t.change_pct > tolerance_pct and t.target_ms - t.source_ms > min_delta_ms]
    differences = [
        Difference(kind="performance", key=t.name, source=round(t.source_ms, 3), target=round(t.target_ms, 3),
                   detail=f"median {t.change_pct:+.1f} % (tolerance {tolerance_pct:g} %)")
        for t in degraded
    ]
    warning = bool(degraded) and not fail_on_degradation
    summary = (f"{len(degraded)} of {len(timings)} queries slower than the source by more than {tolerance_pct:g} %"
               + (" (warning only)" if warning else "") if degraded
               else f"all {len(timings)} queries within {tolerance_pct:g} % of the source")
    return CheckResult(
        check="performance",
        passed=not degraded or not fail_on_degradation,
        source=f"{sum(t.source_ms for t in timings):.1f} ms total median",
        target=f"{sum(t.target_ms for t in timings):.1f} ms total median",
        detail=f"{summary}; median of {runs} runs after {warmup} warm-up\n{timing_table(timings)}",
        seconds=round(time.monotonic() - started, 3),
        differences=differences[:MAX_REPORTED],
        total_differences=len(differences),
        warning=warning,
    )


def timing_table(timings: list[QueryTiming]) -> str:
    """A fixed-width text table: query, source ms, target ms, change %."""
    width = max([len("query"), *(len(t.name) for t in timings)])
    lines = [f"{'query':<{width}}  {'source ms':>10}  {'target ms':>10}  {'change %':>9}"]
    for t in timings:
        change = f"{t.change_pct:+.1f}" if t.change_pct != float("inf") else "inf"
        lines.append(f"{t.name:<{width}}  {t.source_ms:>10.2f}  {t.target_ms:>10.2f}  {change:>9}")
    return "\n".join(lines)


def _validate(queries: list[BenchmarkQuery], runs: int, warmup: int, tolerance_pct: float) -> None:
    problems = []
    if not queries:
        problems.append("performance.queries: no queries to run")
    if runs < 1:
        problems.append(f"performance.runs: must be at least 1, got {runs}")
    if warmup < 0:
        problems.append(f"performance.warmup: must be 0 or more, got {warmup}")
    if tolerance_pct < 0:
        problems.append(f"performance.tolerance_pct: must be 0 or more, got {tolerance_pct}")
    names = [q.name for q in queries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        problems.append(f"performance.queries: duplicate names {', '.join(map(repr, duplicates))}")
    for i, q in enumerate(queries):
        if not (q.source_sql or "").strip():
            problems.append(f"performance.queries[{i}] ('{q.name}').source_sql: empty")
        if q.target_sql is not None and not q.target_sql.strip():
            problems.append(f"performance.queries[{i}] ('{q.name}').target_sql: empty")
    if problems:
        raise BenchmarkError("performance check cannot run:\n" + "\n".join(f"  - {p}" for p in problems))


def _time_query(query: BenchmarkQuery, src: Connection, tgt: Connection, runs: int, warmup: int) -> QueryTiming:
    sides = (("source", src, query.source_sql), ("target", tgt, query.target_sql or query.source_sql))
    for _ in range(warmup):
        for side, conn, sql in sides:
            _run_once(query.name, side, conn, sql)
    times: dict[str, list[float]] = {"source": [], "target": []}
    for run in range(runs):
        # each side goes first every other run: whatever favours the first (or second) run of a pair (caches,
        # another process's bursts in step with the loop) favours both sides alike
        for side, conn, sql in sides if run % 2 == 0 else sides[::-1]:
            times[side].append(_run_once(query.name, side, conn, sql))
    return QueryTiming(query.name, statistics.median(times["source"]) * 1000, statistics.median(times["target"]) * 1000)


def _run_once(name: str, side: str, conn: Connection, sql: str) -> float:
    """Seconds to run ``sql`` and fetch every row; read-only, so the transaction is rolled back."""
    begun = time.perf_counter()
    try:
        # plan SQL as written: no parameter parsing, so a literal % or ? stays literal
        result = conn.exec_driver_sql(sql, execution_options={"no_parameters": True})
        if result.returns_rows:
            result.fetchall()
        elapsed = time.perf_counter() - begun
    except Exception as exc:
        with contextlib.suppress(Exception):
            _rollback(conn)
        raise BenchmarkError(f"benchmark query '{name}' failed on the {side}: {mask_text(db_error_line(exc))}\n"
                             f"  query: {sql.strip()[:500]}", query=name, transient=is_transient(conn, exc)) from exc
    _rollback(conn)
    return elapsed


def _rollback(conn: Connection) -> None:
    if conn.in_transaction():
        conn.rollback()

