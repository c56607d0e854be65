"""The ``checksums`` check: every row of the source compared with the target, at about the cost of two scans.

1. The key space is cut into segments: arithmetic on min/max for a single integer key, quantile keys
   otherwise. Each side reports ``count(*)`` and an order-independent sum of row hashes per segment, in ONE
   grouped query per side, both sides at once (two threads).
2. PostgreSQL ↔ PostgreSQL and MySQL/MariaDB ↔ MySQL/MariaDB hash in SQL: the sum of a 64-bit hash per row
   (``hash_record_extended`` of the normalized columns, hashed again; MD5 of their hex texts on MySQL/MariaDB);
   each column is normalized per its ColumnRule, in a form whose hash covers all of the value and which both
   sides share. A normalization is used only where it never makes equal two
   values that ``values_equal`` tells apart (a finer one only costs a drill-down). Other pairs of databases,
   and columns SQL cannot normalize so, hash in Python (``values.canonical`` per value, rows streamed).
3. Differing segments are split k ways (one grouped query per side and level; index range scans) until a
   range holds at most ``bisect_rows`` rows. Python-hashed segments skip this: splitting would re-read them.
4. The rows of those ranges are streamed from both sides in key order and merged: a key on one side only is
   missing/extra; a matched row is compared per column with ``values_equal`` (exact, e.g. a float epsilon).

Keys sort alike everywhere: text in byte order (``COLLATE "C"`` on PostgreSQL, ``BINARY`` on SQLite, as bytes on
MySQL/MariaDB whatever the collation, Python's ``str`` order), timestamps as UTC instants. Memory stays flat.
Tables should not change meanwhile.
"""


from __future__ import annotations

import time
from dataclasses import replace

from sqlalchemy import exc as sa_exc

from airflow_migrate_provider.core.verify.base import (
    MAX_REPORTED,
    CheckResult,
    ColumnRule,
    Side,
    VerifySpecError,  # raised here for input that does not fit the tables (re-exported)
)
from airflow_migrate_provider.core.verify.checksum_bisect import _compare, _drill
from airflow_migrate_provider.core.verify.checksum_job import Found, Sums, _resolve
from airflow_migrate_provider.core.verify.checksum_segments import Segments, _both, _py_sums, _sql_sums
from airflow_migrate_provider.errors import db_error_line


def checksums(source: Side, target: Side, key: list[str], columns: dict[str, str] | None = None,
              rules: dict[str, ColumnRule] | None = None, segments: int = 64, bisect_rows: int = 2_000,
              max_reported: int = MAX_REPORTED) -> CheckResult:
    """Compare every row of ``source`` with ``target`` by ``key`` (see the module docstring).

    ``columns`` maps target columns to the source column or SQL expression they must equal; every other
    column both sides share by name is compared too. ``rules`` normalize values per target column.
    Raises VerifySpecError when the input does not fit the tables.
    """
    t0 = time.monotonic()
    limits = (("segments", segments, 1), ("bisect_rows", bisect_rows, 1), ("max_reported", max_reported, 0))
    for name, value, least in limits:
        if value < least:
            raise VerifySpecError(f"{name}: must be at least {least}, got {value}")
    job = _resolve(replace(source, label=source.label or "source"), replace(target, label=target.label or "target"),
                   list(key), dict(columns or {}), dict(rules or {}))
    plan = Segments.plan(job, segments)
    sums: tuple[Sums, Sums] | None = None
    if job.sql_hash:
        try:
            sums = _both(job, lambda i: _sql_sums(job, i, plan.sql_bucket, None))
        except sa_exc.DataError as exc:  # e.g. text that is not JSON: Python compares it as text then
            job.sql_hash, job.python_reason = None, f"SQL normalization failed: {db_error_line(exc)}"
    if sums is None:
        sums = _both(job, lambda i: _py_sums(job, i, plan.py_bucket))
    differing = []
    for b in sorted(set(sums[0]) | set(sums[1])):
        pair = sums[0].get(b, (0, 0)), sums[1].get(b, (0, 0))
        if pair[0] != pair[1]:
            differing.append(replace(plan.range(b), counts=(pair[0][0], pair[1][0])))
    found = Found(max_reported)
    _compare(job, _drill(job, differing, bisect_rows) if job.sql_hash else differing, found)
    rows = [sum(n for n, _ in s.values()) for s in sums]
    how = f"hashed in {job.sides[0].dialect.label}" if job.sql_hash else f"hashed in Python: {job.python_reason}"
    detail = (f"{len(differing)} of {plan.count} segments differed; {found.summary()} ({how})" if found.total
              else f"{plan.count} segments, all equal ({how})" if not differing else
              f"{len(differing)} of {plan.count} segments differed by hash only, rows equal by the rules ({how})")
    return CheckResult(check="checksums", passed=found.total == 0, detail=detail,
                       source=f"{rows[0]:,} rows, {plan.count} segments",
                       target=f"{rows[1]:,} rows, {plan.count} segments", seconds=time.monotonic() - t0,
                       differences=found.listed, total_differences=found.total)



__all__ = ["VerifySpecError", "checksums"]
