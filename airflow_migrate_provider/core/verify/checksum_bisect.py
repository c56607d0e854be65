"""Bisection for the checksums check: differing segments split k ways until small, then the rows of the
differing ranges streamed from both sides in key order and merged, value by value."""


from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

from airflow_migrate_provider.core.verify.base import (
    Difference,
    VerifySpecError,  # raised here for input that does not fit the tables (re-exported)
)
from airflow_migrate_provider.core.verify.checksum_job import FANOUT, RANGES_PER_QUERY, Found, Job, KeyRange, Sums
from airflow_migrate_provider.core.verify.checksum_segments import _both, _bucket_case, _quantiles, _rows, _sql_sums
from airflow_migrate_provider.core.verify.values import values_equal


# ------------------------------------------------------------------------------------------------------
# drill-down and row comparison
# ------------------------------------------------------------------------------------------------------
def _drill(job: Job, ranges: list[KeyRange], bisect_rows: int) -> list[KeyRange]:
    """Split differing ranges until each holds at most ``bisect_rows`` rows; returns the differing leaves."""
    leaves: list[KeyRange] = []
    while ranges:
        parts: list[KeyRange] = []
        for r in ranges:
            split = _split(job, r, bisect_rows)
            leaves += [r] if split is None else []
            parts += split or []
        ranges = []
        for start in range(0, len(parts), RANGES_PER_QUERY):
            chunk = parts[start:start + RANGES_PER_QUERY]
            bounds = [part.lo for part in chunk[1:]]  # every part but the first starts at a key

            def level(i: int, chunk: list[KeyRange] = chunk, bounds: list[Any] = bounds) -> Sums:
                return _sql_sums(job, i, lambda j, side, ps: _bucket_case(j, side, bounds, ps, "d"), chunk)

            sums = _both(job, level)
            for n, part in enumerate(chunk):
                pair = sums[0].get(n, (0, 0)), sums[1].get(n, (0, 0))
                if pair[0] != pair[1]:
                    ranges.append(replace(part, counts=(pair[0][0], pair[1][0])))
    return sorted(leaves, key=lambda r: (r.lo is not None, r.lo or ()))


def _split(job: Job, r: KeyRange, bisect_rows: int) -> list[KeyRange] | None:
    """Parts of about ``bisect_rows`` rows each (at most FANOUT), or None for a leaf."""
    most = max(r.counts)
    if most <= bisect_rows or 0 in r.counts:
        return None
    parts = min(FANOUT, math.ceil(most / bisect_rows))
    if job.integer_key:
        assert r.lo is not None and r.hi is not None
        width = math.ceil((r.hi[0] - r.lo[0]) / parts)
        bounds = [(v,) for v in range(r.lo[0] + width, r.hi[0], width)]
    else:
        side = 0 if r.counts[0] >= r.counts[1] else 1
        bounds = _quantiles(job, side, r, math.ceil(r.counts[side] / parts))
    edges = [r.lo, *bounds, r.hi]
    return [KeyRange(a, b) for a, b in itertools.pairwise(edges)] if bounds else None


def _compare(job: Job, leaves: list[KeyRange], found: Found) -> None:
    """One-sided leaves are counted (the first keys listed); the others are merged row by row."""
    two_sided = []
    for r in leaves:
        if r.counts[0] and r.counts[1]:
            two_sided.append(r)
            continue
        i = 0 if r.counts[0] else 1
        found.missing += r.counts[0]
        found.extra += r.counts[1]
        if len(found.listed) < found.cap:
            for _, row in _rows(job, i, [r], limit=found.cap - len(found.listed)):
                found.add(Difference(("missing_in_target", "extra_in_target")[i], key=_shown_key(job, row)))
    for start in range(0, len(two_sided), RANGES_PER_QUERY):
        _merge(job, two_sided[start:start + RANGES_PER_QUERY], found)


def _merge(job: Job, ranges: list[KeyRange], found: Found) -> None:
    streams = [_ordered(job, i, ranges) for i in (0, 1)]
    s, t = next(streams[0], None), next(streams[1], None)
    nk = len(job.keys)
    try:
        while s is not None or t is not None:
            if t is None or (s is not None and s[0] < t[0]):
                found.missing += 1
                found.add(Difference("missing_in_target", key=_shown_key(job, s[1])))  # type: ignore[index]
                s = next(streams[0], None)
            elif s is None or t[0] < s[0]:
                found.extra += 1
                found.add(Difference("extra_in_target", key=_shown_key(job, t[1])))
                t = next(streams[1], None)
            else:
                changed = [(c, a, b) for c, a, b in zip(job.columns, s[1][nk:], t[1][nk:], strict=True)
                           if not _same(a, b) and not values_equal(a, b, c.rule, c.kind)]
                found.changed_rows += 1 if changed else 0
                found.changed_values += len(changed)
                for col, a, b in changed:
                    found.add(Difference("changed", key=_shown_key(job, s[1]), column=col.name, source=a, target=b))
                s, t = next(streams[0], None), next(streams[1], None)
    finally:
        for stream in streams:
            stream.close()


def _ordered(job: Job, i: int, ranges: list[KeyRange]) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """Rows of side ``i`` in key order; refuses to go on when the database's order is not Python's."""
    last = None
    for key, row in _rows(job, i, ranges):
        if last is not None and key < last:
            raise VerifySpecError(f"key: {job.sides[i].label} rows do not come in key order ({last!r} before "
                                  f"{key!r}); the key must sort alike on both databases")
        last = key
        yield key, row


def _same(a: Any, b: Any) -> bool:
    """Equal scalars of one type have one canonical text, under any rule (a shortcut past values_equal).
    Not containers: Python finds [True] == [1], JSON does not."""
    return a is b or (type(a) is type(b) and not isinstance(a, (dict, list, tuple)) and a == b)


def _shown_key(job: Job, row: tuple[Any, ...]) -> Any:
    return row[0] if len(job.keys) == 1 else tuple(row[:len(job.keys)])

