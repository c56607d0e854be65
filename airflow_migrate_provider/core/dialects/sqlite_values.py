"""Python values as sqlite3 binds them: it takes only int, float, str, bytes and None, and SQLite keeps
timestamps as text, so a bound value must be the text that compares (and sorts) like the stored one."""

from __future__ import annotations

import hashlib
import json
from datetime import date, datetime, time, timezone
from decimal import Decimal
from typing import Any
from uuid import UUID


def write_value(value: Any) -> Any:
    """A value to INSERT (its datetime adapters are deprecated): timestamps as UTC text."""
    if value is None or isinstance(value, (int, float, str, bytes)):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc)
        return value.isoformat(sep=" ")
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, (Decimal, UUID)):
        return str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    if isinstance(value, memoryview):
        return bytes(value)
    return str(value)


def key_value(value: Any) -> Any:
    """A key read from another database, bound to match SQLite's stored key."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else str(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (date, UUID)):
        return str(value)
    return value


def bound_value(value: Any) -> Any:
    """A range bound: the shortest text of a timestamp, so that equal instants sort alike as text; no
    Decimal; integers beyond 64 bits as floats."""
    if isinstance(value, datetime):
        value = (value.date().isoformat() if value == datetime.combine(value.date(), datetime.min.time())
                 else str(value))
    if isinstance(value, Decimal):
        value = int(value) if value == value.to_integral_value() else float(value)
    return float(value) if isinstance(value, int) and abs(value) >= 2**63 else value


def rank(seed: int, *key: Any) -> int:
    """A seeded hash of a key: the order a reproducible random sample takes."""
    return int.from_bytes(hashlib.blake2b(repr((seed, *key)).encode(), digest_size=7).digest(), "big")
