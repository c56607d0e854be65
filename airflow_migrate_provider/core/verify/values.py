"""Values of two databases made comparable: one canonical text per value, after the column's rules.

Used where SQL cannot agree across dialects (SQLite vs PostgreSQL) and for the row-by-row comparison at
the bottom of a checksum drill-down. ``kind`` is the column's coarse category (see
``core.backfill.spec.category_of_sa_type``): it says how to read a value that arrives as text, e.g. a
SQLite timestamp or JSON column.
"""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from airflow_migrate_provider.core.verify.base import ColumnRule

NULL = "\\N"
_DEFAULT = ColumnRule()
_PRECISION = {"s": 0, "ms": 3, "us": 6}


def canonical(value: Any, rule: ColumnRule = _DEFAULT, kind: str | None = None) -> str:
    """The text two equal values share after normalization (NULL is ``\\N``)."""
    if value is None:
        return NULL
    if isinstance(value, bool):
        return "t" if value else "f"
    if kind == "bool" and isinstance(value, int):
        return "t" if value else "f"
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return _number(value, rule)
    if isinstance(value, (datetime, date, time)):
        return _temporal(value, rule)
    if isinstance(value, timedelta):
        return str(value.total_seconds())
    if isinstance(value, (dict, list)):
        return _json_text(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, UUID):
        return str(value)
    text = str(value)
    if kind == "json" or rule.json:
        try:
            return _json_text(json.loads(text, parse_float=Decimal))
        except ValueError:
            pass
    if kind == "datetime":
        parsed = _parse_temporal(text)
        if parsed is not None:
            return _temporal(parsed, rule)
    if kind in ("number", "integer"):
        try:
            return _number(Decimal(text), rule)
        except InvalidOperation:
            pass
    if rule.trim:
        text = text.rstrip(" ")
    if rule.case_insensitive:
        text = text.casefold()
    return text


def values_equal(source: Any, target: Any, rule: ColumnRule = _DEFAULT, kind: str | None = None) -> bool:
    """Equal after the column's rules; ``float_epsilon`` compares numbers by distance."""
    if rule.float_epsilon is not None and source is not None and target is not None:
        try:
            return abs(Decimal(str(source)) - Decimal(str(target))) <= Decimal(str(rule.float_epsilon))
        except InvalidOperation:
            pass
    return canonical(source, rule, kind) == canonical(target, rule, kind)


def row_text(values: tuple[Any, ...] | list[Any], rules: list[ColumnRule], kinds: list[str | None]) -> str:
    """One row as unambiguous canonical text (NULL is not the text backslash-N; separators cannot collide)."""
    return repr(tuple(None if v is None else canonical(v, r, k) for v, r, k in zip(values, rules, kinds,
                                                                                      strict=True)))


def _number(value: int | float | Decimal, rule: ColumnRule) -> str:
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return str(value)
        number = Decimal(repr(value))
    else:
        number = Decimal(value)
    if rule.numeric_scale is not None and rule.float_epsilon is None:
        number = number.quantize(Decimal(1).scaleb(-rule.numeric_scale), rounding=ROUND_HALF_UP)  # as SQL rounds
    elif rule.float_epsilon is not None:
        # a grid as wide as epsilon: values close to each other share a text (a prefilter; the row-level
        # comparison uses the exact distance)
        step = Decimal(str(rule.float_epsilon))
        number = (number / step).to_integral_value() * step
    normalized = number.normalize()
    text = format(normalized, "f")
    return "0" if text in ("-0", "0") else text


def _parse_temporal(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        return None


def _temporal(value: datetime | date | time, rule: ColumnRule) -> str:
    if isinstance(value, datetime):
        if rule.time_zone is not None:
            zone = timezone.utc if rule.time_zone.upper() == "UTC" else ZoneInfo(rule.time_zone)
            value = (value if value.tzinfo else value.replace(tzinfo=zone)).astimezone(timezone.utc)
        elif value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        if rule.timestamp_precision is not None:
            digits = _PRECISION[rule.timestamp_precision]
            micro = value.microsecond - value.microsecond % (10 ** (6 - digits))
            value = value.replace(microsecond=micro)
        return value.isoformat(sep=" ")
    return value.isoformat()


def _json_text(value: Any) -> str:
    """JSON with sorted keys and numbers by value (1.50 = 1.5 = 1.5e0; big integers exact)."""
    return json.dumps(_json_numbers(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _json_numbers(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _json_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_numbers(v) for v in value]
    if isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        return "#" + _number(value, _DEFAULT)
    return value
