"""Structure checks: the columns (schemas), indexes and constraints of two tables, compared across dialects.

Each side's table is introspected into dialect-neutral descriptions: PostgreSQL ``character varying(50)``
and SQLite ``VARCHAR(50)`` are both ``text(50)``; casts, quotes and redundant parentheses are stripped from
defaults, index predicates and check expressions (``(amount >= (0)::numeric)`` reads ``amount >= 0``).
Every difference gets a stable id, e.g. ``column amount: type numeric(12,2) -> numeric(14,2)``; ids listed
in ``expected`` are intended changes and do not fail the check, and expected ids that did not occur are
noted in the detail as a warning. Index and constraint names are not compared.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.dialects import Dialect, dialect_of
from airflow_migrate_provider.core.verify.base import MAX_REPORTED, CheckResult, Difference, Side
from airflow_migrate_provider.core.verify.normalize import (
    normalize_default,
    normalize_sql,
    normalize_type,
    type_category,
)
from airflow_migrate_provider.errors import VerifyInputError

T = TypeVar("T")


@dataclass(frozen=True)
class ColumnInfo:
    """One column, described the same way on every dialect."""

    name: str
    type: str  # normalized: text(50), numeric(12,2), bigint, timestamp with time zone, json, ...
    category: str  # integer | number | text | datetime | bool | json | binary | other
    nullable: bool
    default: str | None  # normalized; "sequence" for serial/identity/SQLite rowid columns


@dataclass(frozen=True)
class IndexInfo:
    name: str | None
    elements: tuple[str, ...]  # column names, or normalized expressions; " desc" where descending
    unique: bool
    where: str | None  # normalized partial-index predicate

    @property
    def id(self) -> str:
        return (f"index on ({', '.join(self.elements)})" + (" unique" if self.unique else "")
                + (f" where {self.where}" if self.where else ""))


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    referred: str  # table(columns)
    on_delete: str
    on_update: str

    @property
    def id(self) -> str:
        return f"foreign key ({', '.join(self.columns)}) -> {self.referred}"


def _loose(ident: str) -> str:
    """How ids are matched against ``expected``: case, whitespace and arrow spelling do not matter."""
    return re.sub(r"\s+", "", ident.replace("→", "->")).casefold()


def _check_key(expression: str) -> str:
    """Check expressions match when equal without case, spaces and parentheses."""
    return re.sub(r"[\s()]", "", expression.casefold())


def _split(table: str) -> tuple[str | None, str]:
    schema, _, name = table.rpartition(".")
    return (schema or None), name


def require_table(side: Side, role: str, check: str | None = None) -> str:
    """The side's table name; an input error when it is a query (for ``check``) or does not exist."""
    if side.table is None:
        if check is None:
            return ""
        raise VerifyInputError(f"{role}.query", f"the {check} check compares tables, but the {role} is a query; "
                                                f"name a table in {role}.table instead")
    schema, name = _split(side.table)
    if not inspect(side.engine).has_table(name, schema=schema):
        raise VerifyInputError(f"{role}.table", f"table '{side.table}' does not exist in the {role} database")
    return side.table


def _dialect(engine: Engine) -> Dialect:
    return dialect_of(engine)


def describe_columns(engine: Engine, table: str) -> list[ColumnInfo] | None:
    """The table's columns in order, normalized (None when there is no such table)."""
    schema, name = _split(table)
    insp = inspect(engine)
    try:
        reflected = insp.get_columns(name, schema=schema)
    except sa_exc.NoSuchTableError:
        return None
    pk = insp.get_pk_constraint(name, schema=schema).get("constrained_columns") or []
    dialect = _dialect(engine)
    declared = dialect.declared_types(engine, table)
    columns = []
    for col in reflected:
        spelled = declared.get(col["name"])
        if spelled is None:
            spelled = str(col["type"].compile(dialect=engine.dialect))
        type_name = normalize_type(spelled)
        category = type_category(type_name, col["type"])
        default = normalize_default(col.get("default"), category)
        rowid_alias = dialect.is_rowid_alias(pk, col["name"], spelled)
        if col.get("identity") or rowid_alias or col.get("autoincrement") is True:  # MySQL: AUTO_INCREMENT
            default = "sequence"
        columns.append(ColumnInfo(col["name"], type_name, category, bool(col["nullable"]) and col["name"] not in pk,
                                  default))
    return columns


def _element(raw: str, columns: dict[str, str], sorting: tuple[str, ...] = ()) -> str:
    """One index element: a column name as the table spells it, or a normalized expression."""
    descending = "desc" in sorting
    match = re.fullmatch(r"(.*?)\s+(asc|desc)", raw.strip(), re.IGNORECASE | re.DOTALL)
    if match:
        raw, descending = match.group(1), match.group(2).lower() == "desc"
    bare = raw.strip().strip('"`[]')
    shown = columns.get(bare.casefold()) or normalize_sql(raw)
    extras = [s.replace("_", " ") for s in sorting if s.startswith("nulls")]
    return " ".join([shown, *(["desc"] if descending else []), *extras])


def describe_indexes(engine: Engine, table: str) -> list[IndexInfo]:
    """Indexes that are not the backing index of a primary key or unique constraint."""
    schema, name = _split(table)
    columns = {c["name"].casefold(): c["name"] for c in inspect(engine).get_columns(name, schema=schema)}
    return [IndexInfo(raw.name, tuple(_element(e, columns, sorting) for e, sorting in raw.elements), raw.unique,
                      normalize_sql(raw.where) if raw.where is not None else None)
            for raw in _dialect(engine).indexes(engine, table)]


def _foreign_keys(engine: Engine, table: str) -> list[ForeignKey]:
    return [ForeignKey(fk.columns, f"{fk.referred_table}({', '.join(fk.referred_columns)})", fk.on_delete,
                       fk.on_update) for fk in _dialect(engine).foreign_keys(engine, table)]


def describe_constraints(engine: Engine, table: str) -> dict[str, Any]:
    """Primary key, foreign keys, unique constraints and check constraints (normalized), names left out."""
    schema, name = _split(table)
    insp = inspect(engine)
    pk = insp.get_pk_constraint(name, schema=schema).get("constrained_columns") or []
    return {
        "primary_key": tuple(pk),
        "foreign_keys": _foreign_keys(engine, table),
        "uniques": _dialect(engine).unique_constraints(engine, table),
        "checks": [normalize_sql(c["sqltext"]) for c in insp.get_check_constraints(name, schema=schema)],
    }


def on_both_sides(fn: Callable[[Side, str], T], source: Side, target: Side) -> tuple[T, T]:
    """``fn(source, "source")`` and ``fn(target, "target")``, concurrently (in-memory SQLite: one after the
    other, each thread would get its own empty database)."""
    if any(s.dialect.in_memory(s.engine) for s in (source, target)):
        return fn(source, "source"), fn(target, "target")
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="verify") as pool:
        first, second = pool.submit(fn, source, "source"), pool.submit(fn, target, "target")
        return first.result(), second.result()


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}{'' if count == 1 else 'es' if word.endswith('x') else 's'}"


def finish(check: str, found: list[tuple[str, Difference]], expected: list[str] | None, source: str, target: str,
           started: float, notes: list[str] | None = None) -> CheckResult:
    """The result of a structure check: differences whose id is in ``expected`` are accepted."""
    wanted = {_loose(e): e for e in expected or []}
    unexpected = [(i, d) for i, d in found if _loose(i) not in wanted]
    accepted = [i for i, _ in found if _loose(i) in wanted]
    not_found = [e for k, e in wanted.items() if k not in {_loose(i) for i in accepted}]
    parts = []
    if unexpected:
        parts.append(f"{_plural(len(unexpected), 'unexpected difference')}: "
                     + "; ".join(i for i, _ in unexpected[:10]) + ("; …" if len(unexpected) > 10 else ""))
    if accepted:
        parts.append(f"{_plural(len(accepted), 'expected difference')} found: " + "; ".join(accepted))
    if not_found:
        parts.append("warning: expected but not found: " + "; ".join(not_found))
    if not found:
        parts.append("no differences")
    parts += notes or []
    return CheckResult(check=check, passed=not unexpected, source=source, target=target, detail=". ".join(parts),
                       seconds=round(time.monotonic() - started, 3),
                       differences=[d for _, d in unexpected[:MAX_REPORTED]], total_differences=len(unexpected))


def _only(kind: str, ident: str, in_source: bool, **fields: Any) -> tuple[str, Difference]:
    full = f"{ident}: only in {'source' if in_source else 'target'}"
    return full, Difference(kind, detail=full, **fields)


def _changed(kind: str, ident: str, what: str, before: Any, after: Any, **fields: Any) -> tuple[str, Difference]:
    full = f"{ident}: {what}{' ' if what else ''}{before} -> {after}"
    return full, Difference(kind, source=before, target=after, detail=full, **fields)


def _multiset(kind: str, source: list[str], target: list[str]) -> list[tuple[str, Difference]]:
    src, tgt = Counter(source), Counter(target)
    return ([_only(kind, i, True) for i in sorted((src - tgt).elements())]
            + [_only(kind, i, False) for i in sorted((tgt - src).elements())])


def schemas(source: Side, target: Side, expected: list[str] | None = None) -> CheckResult:
    """Compare the two tables' columns: names, normalized types, nullability and (loosely) defaults."""
    started = time.monotonic()

    def read(side: Side, role: str) -> list[ColumnInfo]:
        return describe_columns(side.engine, require_table(side, role, "schemas")) or []

    src_cols, tgt_cols = on_both_sides(read, source, target)
    src, tgt = {c.name: c for c in src_cols}, {c.name: c for c in tgt_cols}
    found = [_only("schema", f"column {n}", True, column=n) for n in src if n not in tgt]
    found += [_only("schema", f"column {n}", False, column=n) for n in tgt if n not in src]
    for name in (n for n in src if n in tgt):
        a, b = src[name], tgt[name]
        if a.type != b.type:
            found.append(_changed("schema", f"column {name}", "type", a.type, b.type, column=name))
        if a.nullable != b.nullable:
            found.append(_changed("schema", f"column {name}", "", *(("nullable", "not null") if a.nullable
                                                                      else ("not null", "nullable")), column=name))
        if a.default != b.default:
            found.append(_changed("schema", f"column {name}", "default", a.default or "none", b.default or "none",
                                  column=name))
    shared = [n for n in src if n in tgt]
    notes = [] if shared == [n for n in tgt if n in src] else ["column order differs (not compared)"]
    return finish("schemas", found, expected, _plural(len(src), "column"), _plural(len(tgt), "column"), started, notes)


def indexes(source: Side, target: Side, expected: list[str] | None = None) -> CheckResult:
    """Compare indexes by columns/expressions, uniqueness and partial predicate; names are not compared."""
    started = time.monotonic()

    def read(side: Side, role: str) -> list[IndexInfo]:
        return describe_indexes(side.engine, require_table(side, role, "indexes"))

    src, tgt = on_both_sides(read, source, target)
    found = _multiset("index", [i.id for i in src], [i.id for i in tgt])
    notes = []
    tgt_names = {i.id: i.name for i in tgt}
    renamed = [f"{i.name} -> {tgt_names[i.id]}" for i in src if i.id in tgt_names and i.name != tgt_names[i.id]]
    if renamed:
        notes.append("index names differ (not compared): " + ", ".join(renamed))
    return finish("indexes", found, expected, _plural(len(src), "index"), _plural(len(tgt), "index"), started, notes)


def constraints(source: Side, target: Side, expected: list[str] | None = None) -> CheckResult:
    """Compare primary key, foreign keys (with ON DELETE/UPDATE), unique and check constraints."""
    started = time.monotonic()

    def read(side: Side, role: str) -> dict[str, Any]:
        return describe_constraints(side.engine, require_table(side, role, "constraints"))

    src, tgt = on_both_sides(read, source, target)
    found: list[tuple[str, Difference]] = []
    if src["primary_key"] != tgt["primary_key"]:
        found += [_only("constraint", f"primary key ({', '.join(pk)})", role == "source")
                  for role, pk in (("source", src["primary_key"]), ("target", tgt["primary_key"])) if pk]
    src_fks, tgt_fks = {f.id: f for f in src["foreign_keys"]}, {f.id: f for f in tgt["foreign_keys"]}
    found += _multiset("constraint", [i for i in src_fks if i not in tgt_fks], [i for i in tgt_fks if i not in src_fks])
    for ident in (i for i in src_fks if i in tgt_fks):
        for what, attr in (("on delete", "on_delete"), ("on update", "on_update")):
            before, after = getattr(src_fks[ident], attr), getattr(tgt_fks[ident], attr)
            if before != after:
                found.append(_changed("constraint", ident, what, before, after))
    found += _multiset("constraint", [f"unique ({', '.join(u)})" for u in src["uniques"]],
                       [f"unique ({', '.join(u)})" for u in tgt["uniques"]])
    src_checks = {_check_key(c): c for c in src["checks"]}
    tgt_checks = {_check_key(c): c for c in tgt["checks"]}
    found += [_only("constraint", f"check ({c})", True) for k, c in src_checks.items() if k not in tgt_checks]
    found += [_only("constraint", f"check ({c})", False) for k, c in tgt_checks.items() if k not in src_checks]

    def summary(c: dict[str, Any]) -> str:
        return _plural(bool(c["primary_key"]) + len(c["foreign_keys"]) + len(c["uniques"]) + len(c["checks"]),
                       "constraint")

    return finish("constraints", found, expected, summary(src), summary(tgt), started)
