"""MySQL/MariaDB row-hash SQL: per-column text forms that are never coarser than ``values_equal``, the summable
64-bit row digest used per key segment, a whole-table content hash for backups, and what result type codes and
declared column types mean to the verification checks.

Every compared value becomes a string in SQL whose equality implies equality by ``values_equal`` (finer is
allowed: it only costs a drill-down): integers and decimals as their canonical decimal text (no trailing zeros),
doubles as the server's shortest round-trip text, timestamps with all six fractional digits, strings and bytes as
their bytes (``CAST(... AS BINARY)``: a case-insensitive collation never makes 'a' equal 'A' here). A row is the
MD5 of its fields' hex texts joined with commas (NULL is ``N``: no separator can be forged), cut to 64 bits.
Float epsilons, JSON rules and floats mixed with decimals are left to Python (None).

Zero dates ('0000-00-00', kept by non-strict SQL modes) are not dates: the driver returns them as text and they
are compared, and hashed, as that text, so one differs from NULL and from every real date.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.dialects.types import TypeInfo, split_name

SESSION = "SET SESSION time_zone = '+00:00'"
_MOD = 1 << 64
# result type codes (PyMySQL/MySQL protocol FIELD_TYPE) → (type name, PostgreSQL-style category letter)
_CODES: dict[int, tuple[str, str]] = {
    0: ("decimal", "N"), 246: ("decimal", "N"), 1: ("tinyint", "N"), 2: ("smallint", "N"), 3: ("integer", "N"),
    8: ("bigint", "N"), 9: ("mediumint", "N"), 13: ("year", "N"), 4: ("float", "N"), 5: ("double", "N"),
    7: ("timestamp", "D"), 12: ("datetime", "D"), 10: ("date", "D"), 14: ("date", "D"), 11: ("time", "D"),
    15: ("varchar", "S"), 253: ("varchar", "S"), 254: ("char", "S"), 247: ("enum", "S"), 248: ("set", "S"),
    249: ("blob", "S"), 250: ("blob", "S"), 251: ("blob", "S"), 252: ("blob", "S"), 245: ("json", "U"),
    16: ("bit", "V"), 255: ("geometry", "G"), 6: ("null", "X"),
}
GROUP = {"tinyint": "int", "smallint": "int", "mediumint": "int", "integer": "int", "bigint": "int", "year": "int",
         "decimal": "decimal", "float": "float", "double": "float", "timestamp": "ts", "datetime": "ts",
         "date": "date", "time": "time"}
_CATEGORY = {"int": "integer", "decimal": "number", "float": "number", "ts": "datetime", "date": "datetime",
             "time": "datetime"}
_FULL = "'%%Y-%%m-%%d %%H:%%i:%%s.%%f'"  # pyformat drivers: % doubled
_SECONDS = "'%%Y-%%m-%%d %%H:%%i:%%s'"


# ------------------------------------------------------------------------------------------------------
# what types mean
# ------------------------------------------------------------------------------------------------------
def describe_type_codes(codes: list[Any]) -> dict[int, TypeInfo]:
    out = {}
    for code in codes:
        if code is not None and int(code) in _CODES:
            name, letter = _CODES[int(code)]
            out[int(code)] = TypeInfo(name, letter, name)
    return out


def result_category(info: TypeInfo) -> str | None:
    """None where the code does not say: tinyint may be a boolean (tinyint(1)), a string code may hold text,
    bytes or JSON (MariaDB's JSON is LONGTEXT); the table's catalog tells those apart."""
    return _CATEGORY.get(GROUP.get(info.typname, ""))


def declared_types(engine: Engine, table: str) -> dict[str, str]:
    """Column → declared type, as the other databases would spell it: tinyint(1) is MySQL's BOOLEAN, and a
    MariaDB LONGTEXT checked by json_valid() is its JSON."""
    schema, name = split_name(table)
    with engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT c.column_name, c.column_type, EXISTS (SELECT 1 FROM information_schema.check_constraints k "
            "WHERE k.constraint_schema = c.table_schema AND k.table_name = c.table_name "
            "AND k.check_clause LIKE CONCAT('%%json_valid(`', c.column_name, '`)%%')) "
            "FROM information_schema.columns c WHERE c.table_schema = COALESCE(%(schema)s, DATABASE()) "
            "AND c.table_name = %(name)s ORDER BY c.ordinal_position", {"schema": schema, "name": name}).all()
        conn.rollback()
    return {str(col): _spelled(str(declared), bool(is_json)) for col, declared, is_json in rows}


def _spelled(declared: str, is_json: bool) -> str:
    lowered = declared.lower()
    if is_json:
        return "json"
    if lowered == "tinyint(1)":
        return "boolean"
    return re.sub(r"\b(tiny|small|medium|big)?int\(\d+\)", lambda m: f"{m.group(1) or ''}int", lowered)


# ------------------------------------------------------------------------------------------------------
# per-column SQL
# ------------------------------------------------------------------------------------------------------
def column_hash_sql(exprs: tuple[str, str], typnames: tuple[str | None, str | None], rule: Any,
                    params: dict[str, Any], prefix: str) -> tuple[str, str] | None:
    """(source SQL, target SQL) of one column as text to hash, or None where SQL cannot normalize it exactly."""
    groups = [GROUP.get(t or "", "bytes") for t in typnames]
    kinds = set(groups)
    numeric_rule = rule.numeric_scale is not None or rule.float_epsilon is not None
    if kinds <= {"int", "decimal", "float"}:
        return _numbers(exprs, kinds, rule)
    if numeric_rule or rule.json:
        return None
    if kinds == {"ts"}:
        return _timestamp(exprs[0], rule), _timestamp(exprs[1], rule)
    if kinds in ({"date"}, {"time"}):
        return f"CAST(({exprs[0]}) AS CHAR)", f"CAST(({exprs[1]}) AS CHAR)"
    if kinds == {"bytes"}:
        return _bytes(exprs[0], rule), _bytes(exprs[1], rule)
    return None


def _numbers(exprs: tuple[str, str], kinds: set[str], rule: Any) -> tuple[str, str] | None:
    if rule.float_epsilon is not None or ("float" in kinds and (kinds != {"float"} or rule.numeric_scale is not None)):
        return None  # an epsilon grid, or doubles next to decimals: Python reads them as values_equal does
    if kinds == {"float"}:  # the server prints doubles shortest round-trip: equal text, equal double
        return f"CAST(({exprs[0]}) AS CHAR)", f"CAST(({exprs[1]}) AS CHAR)"
    values = [f"ROUND(({e}), {int(rule.numeric_scale)})" if rule.numeric_scale is not None else f"({e})"
              for e in exprs]  # ROUND of an exact value: half away from zero, as values.canonical rounds
    return _decimal_text(values[0]), _decimal_text(values[1])


def _decimal_text(value: str) -> str:
    """1.50, 1.5 and 1.500 → '1.5'; 100 → '100'; any zero → '0'."""
    text = f"CAST({value} AS CHAR)"
    stripped = f"TRIM(TRAILING '.' FROM TRIM(TRAILING '0' FROM {text}))"
    return f"CASE WHEN {value} = 0 THEN '0' WHEN INSTR({text}, '.') > 0 THEN {stripped} ELSE {text} END"


def _timestamp(expr: str, rule: Any) -> str:
    """All six fractional digits (or cut to the rule's precision); a zero date as its own text. Time zone rules
    are not applied: both sides' values are naive wall times read the same way, so equal text is equal."""
    value = f"({expr})"
    formatted = {"s": f"DATE_FORMAT({value}, {_SECONDS})",
                 "ms": f"LEFT(DATE_FORMAT({value}, {_FULL}), 23)"}.get(rule.timestamp_precision or "",
                                                                         f"DATE_FORMAT({value}, {_FULL})")
    return f"CASE WHEN MONTH({value}) = 0 OR DAYOFMONTH({value}) = 0 THEN CAST({value} AS CHAR) ELSE {formatted} END"


def _bytes(expr: str, rule: Any) -> str:
    value = f"({expr})"
    if rule.trim:
        value = f"TRIM(TRAILING ' ' FROM {value})"
    if rule.case_insensitive:
        value = f"LOWER(CONVERT({value} USING utf8mb4))"
    return f"CAST({value} AS BINARY)"


# ------------------------------------------------------------------------------------------------------
# rows, segments, tables
# ------------------------------------------------------------------------------------------------------
def _digest(row_text: str, start: int = 1) -> str:
    """64 bits of the MD5 of ``row_text`` as an unsigned integer (summed per segment into an exact DECIMAL)."""
    return f"CAST(CONV(SUBSTRING(MD5({row_text}), {start}, 16), 16, 10) AS UNSIGNED)"


def _row_text(fields: list[str]) -> str:
    return "CONCAT_WS(','" + "".join(f", COALESCE(HEX({f}), 'N')" for f in fields) + ")"


def segment_hash_sql(fields: list[str]) -> str:
    """A 64-bit hash of one row from its fields (column_hash_sql's strings). NULL is 'N', any value is hex, so
    NULLs need no separate masks."""
    return _digest(_row_text(fields))


def segment_bucket(key: str, lo: str, width: str, wide: bool) -> str:
    """The segment of an integer key: integer division (``/`` is decimal division here); a range of 2^62 or more
    in DECIMAL (BIGINT arithmetic raises on overflow instead of wrapping)."""
    if wide:
        return f"FLOOR((CAST(({key}) AS DECIMAL(65, 0)) - {lo}) / {width})"
    return f"((({key}) - {lo}) DIV {width})"


def split_columns(quoted_columns: str) -> list[str]:
    """```a``b`, c`` → ['`a``b`', 'c']: a comma-separated list of (backtick-quoted) column names."""
    return re.findall(r"`(?:[^`]|``)*`|[^,\s]+", quoted_columns)


def table_hash(conn: Connection, relation: str, quoted_columns: str) -> tuple[int, int, int]:
    """Rows and two 64-bit sums of a hash of each row's exact text (every column as its bytes, in UTC)."""
    conn.exec_driver_sql(SESSION)
    fields = [f"CAST({c} AS BINARY)" for c in split_columns(quoted_columns)]
    row = _row_text(fields)
    rows, lo, hi = conn.exec_driver_sql(
        f"SELECT COUNT(*), COALESCE(SUM({_digest('r')}), 0), COALESCE(SUM({_digest('r', 17)}), 0) "
        f"FROM (SELECT {row} AS r FROM {relation}) AS rows_of", {}).one()
    return int(rows), int(lo) % _MOD, int(hi) % _MOD
