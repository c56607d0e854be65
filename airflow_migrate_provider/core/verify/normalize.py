"""Types, defaults and SQL expressions made comparable across dialects: PostgreSQL ``character varying(50)``
and SQLite ``VARCHAR(50)`` are both ``text(50)``; casts, quotes and redundant parentheses are stripped from
defaults, index predicates and check expressions (``(amount >= (0)::numeric)`` reads ``amount >= 0``)."""

from __future__ import annotations

import re
from typing import Any

from airflow_migrate_provider.core.backfill.spec import category_of_sa_type

_TYPE_NAMES = {
    "int2": "smallint", "smallint": "smallint", "tinyint": "smallint", "smallserial": "smallint",
    "int": "integer", "int4": "integer", "integer": "integer", "mediumint": "integer", "serial": "integer",
    "int8": "bigint", "bigint": "bigint", "bigserial": "bigint",
    "numeric": "numeric", "decimal": "numeric",
    "real": "real", "float4": "real", "double precision": "double", "double": "double", "float8": "double",
    "varchar": "text", "character varying": "text", "nvarchar": "text", "varying character": "text",
    "text": "text", "clob": "text", "string": "text", "tinytext": "text", "mediumtext": "text", "longtext": "text",
    "char": "char", "character": "char", "nchar": "char", "bpchar": "char", "native character": "char",
    "timestamp": "timestamp", "timestamp without time zone": "timestamp", "datetime": "timestamp",
    "timestamptz": "timestamp with time zone", "timestamp with time zone": "timestamp with time zone",
    "date": "date", "time": "time", "time without time zone": "time",
    "timetz": "time with time zone", "time with time zone": "time with time zone", "interval": "interval",
    "bool": "boolean", "boolean": "boolean", "json": "json", "jsonb": "json", "uuid": "uuid",
    "bytea": "binary", "blob": "binary", "binary": "binary", "varbinary": "binary", "tinyblob": "binary",
    "mediumblob": "binary", "longblob": "binary",
}
_KEEP_ARGS = {"numeric", "text", "char", "timestamp", "timestamp with time zone", "time", "time with time zone"}
_CATEGORIES = {
    "smallint": "integer", "integer": "integer", "bigint": "integer", "numeric": "number", "real": "number",
    "double": "number", "text": "text", "char": "text", "uuid": "text", "timestamp": "datetime", "date": "datetime",
    "time": "datetime", "interval": "datetime", "boolean": "bool", "json": "json", "binary": "binary",
}


def normalize_type(declared: str) -> str:
    """A declared type as one name across dialects: ``character varying(50)``/``VARCHAR(50)`` → ``text(50)``,
    ``int4``/``INTEGER`` → ``integer``, ``timestamp(3) with time zone``, ``jsonb`` → ``json``."""
    spelled = " ".join(declared.lower().replace('"', "").split())
    array = ""
    while spelled.endswith("[]"):
        array, spelled = array + "[]", spelled[:-2].rstrip()
    found = re.search(r"\(([^)]*)\)", spelled)
    args = re.sub(r"\s+", "", found.group(1)) if found else ""
    base = " ".join(re.sub(r"\([^)]*\)", " ", spelled).split())
    if base == "float":
        base, args = ("real" if args.isdigit() and int(args) <= 24 else "double"), ""
    name = _TYPE_NAMES.get(base, base) or "any"
    if name not in _KEEP_ARGS and name in _CATEGORIES:
        args = ""
    if name == "numeric" and args.endswith(",0"):
        args = args[:-2]
    if name.startswith(("timestamp", "time")) and args == "6":
        args = ""  # the default precision
    if args:
        head, _, rest = name.partition(" ")
        name = f"{head}({args})" + (f" {rest}" if rest else "")
    return name + array


def type_category(type_name: str, sa_type: Any = None) -> str:
    """The coarse category of a normalized type name (falls back to the reflected SQLAlchemy type)."""
    if type_name.endswith("[]"):
        return "other"
    head = re.sub(r"\(.*?\)", "", type_name).split(" ")[0]
    return _CATEGORIES.get(head) or (category_of_sa_type(sa_type) if sa_type is not None else "other")


_LITERAL = re.compile(r"'(?:[^']|'')*'")
_CAST = re.compile(r"::\s*(?:\"[^\"]+\"|[a-z_][\w.]*)(?:\s+(?:varying|precision|with(?:out)?\s+time\s+zone))*"
                   r"(?:\s*\(\s*\d+(?:\s*,\s*\d+)?\s*\))?(?:\s*\[\])*")
_TOKEN_IN_PARENS = re.compile(r"(?<![\w)\]])\(([\w.\x01\x02]+)\)")
_OPERATORS = [(re.compile(r"\s*!~~\*\s*"), " not ilike "), (re.compile(r"\s*~~\*\s*"), " ilike "),
              (re.compile(r"\s*!~~\s*"), " not like "), (re.compile(r"\s*~~\s*"), " like "),
              (re.compile(r"\s*(<>|!=|<=|>=|=|<|>)\s*"), r" \1 ")]
_ANY_ARRAY = re.compile(r" = any \(array\[(.*?)\]\)")


def normalize_sql(sql: str) -> str:
    """SQL text made comparable across dialects, loosely: lowercase outside string literals, no casts or
    identifier quotes, no redundant parentheses, ``x = any (array[a, b])`` read as ``x in (a, b)``."""
    literals: list[str] = []

    def keep(match: re.Match[str]) -> str:
        literals.append(match.group())
        return f"\x01{len(literals) - 1}\x02"

    code = _CAST.sub("", _LITERAL.sub(keep, sql).lower()).replace('"', "").replace("`", "").replace("!=", "<>")
    for pattern, replacement in _OPERATORS:
        code = pattern.sub(replacement, code)
    code = re.sub(r"\s*,\s*", ", ", " ".join(code.split()))
    code = re.sub(r"\(\s+", "(", re.sub(r"\s+\)", ")", code))
    code = _ANY_ARRAY.sub(r" in (\1)", code)
    previous = None
    while previous != code:
        previous, code = code, _TOKEN_IN_PARENS.sub(r"\1", code)
    while code.startswith("(") and code.endswith(")") and _wraps(code):
        code = code[1:-1].strip()
    return re.sub(r"\x01(\d+)\x02", lambda m: literals[int(m.group(1))], code)


def _wraps(code: str) -> bool:
    """True when the first parenthesis closes at the very end (``(a) and (b)`` is not wrapped)."""
    depth = 0
    for i, char in enumerate(code):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            return i == len(code) - 1
    return False


def normalize_default(default: str | None, category: str | None = None) -> str | None:
    """A column default made comparable: ``0.00`` and ``'0'`` are ``0``; a boolean's ``0``/``1`` (MySQL's
    tinyint(1)) are ``false``/``true``; ``now()`` is ``current_timestamp``."""
    if default is None:
        return None
    if "nextval(" in default.lower():
        return "sequence"
    value = normalize_sql(default)
    if value in ("now()", "current_timestamp()", "transaction_timestamp()"):
        return "current_timestamp"
    if re.fullmatch(r"'-?\d+(\.\d+)?'", value):
        value = value[1:-1]
    if re.fullmatch(r"-?\d+\.\d+", value):
        value = value.rstrip("0").rstrip(".")
    if category == "bool" and value in ("0", "1"):
        return "true" if value == "1" else "false"
    return value
