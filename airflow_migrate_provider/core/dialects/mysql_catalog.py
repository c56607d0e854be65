"""MySQL/MariaDB catalog for backups: the DDL that rebuilds a table, read from ``SHOW CREATE TABLE`` (foreign keys
split off into ``ALTER TABLE … ADD CONSTRAINT`` statements, the ``AUTO_INCREMENT=N`` counter left out), its
triggers, columns, primary key and a structure fingerprint that ignores column order and the counter."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.dialects.types import (
    Column,
    RawForeignKey,
    TableDefinition,
    split_name,
    structure_hash,
)

Quote = Callable[[str], str]
_AUTO_INCREMENT = re.compile(r"\s+AUTO_INCREMENT=\d+")
_NAME = r"`(?:[^`]|``)+`"
_FOREIGN_KEY = re.compile(rf"^\s*CONSTRAINT\s+{_NAME}\s+FOREIGN KEY\s", re.I)
_FK_PARTS = re.compile(rf"FOREIGN KEY \((?P<cols>[^)]*)\) REFERENCES (?P<table>{_NAME}(?:\.{_NAME})?) "
                       rf"\((?P<refcols>[^)]*)\)(?P<rules>.*)$", re.I)
_DEFINER = re.compile(rf"\s+DEFINER\s*=\s*(?:{_NAME}|'[^']*'|\w+)(?:@(?:{_NAME}|'[^']*'|[\w.%]+))?", re.I)
_COLUMNS = ("SELECT column_name, column_type, extra, character_set_name, collation_name "
            "FROM information_schema.columns WHERE table_schema = "
            "COALESCE(%(schema)s, DATABASE()) AND table_name = %(name)s ORDER BY ordinal_position")
_PRIMARY_KEY = ("SELECT column_name FROM information_schema.statistics WHERE table_schema = "
                "COALESCE(%(schema)s, DATABASE()) AND table_name = %(name)s AND index_name = 'PRIMARY' "
                "ORDER BY seq_in_index")
_TRIGGERS = ("SELECT trigger_name FROM information_schema.triggers WHERE event_object_schema = "
             "COALESCE(%(schema)s, DATABASE()) AND event_object_table = %(name)s ORDER BY action_order, trigger_name")
_SECONDARY_KEY = re.compile(r"^(?:KEY|INDEX|FULLTEXT|SPATIAL)\b", re.I)
_INCREMENT = re.compile(r"\sAUTO_INCREMENT=(\d+)")


def unquote(name: str) -> str:
    """```a``b``` → a`b; ```s`.`t``` → s.t"""
    return ".".join(part[1:-1].replace("``", "`") for part in re.findall(_NAME, name))


def _names(text_: str) -> tuple[str, ...]:
    return tuple(unquote(n) for n in re.findall(_NAME, text_))


def show_create(conn: Connection, qt: str) -> str:
    return str(conn.exec_driver_sql(f"SHOW CREATE TABLE {qt}").one()[1])


def split_create(ddl: str) -> tuple[list[str], list[str], str]:
    """``SHOW CREATE TABLE`` → (its element lines without foreign keys, the foreign key lines, table options)."""
    _, _, rest = ddl.partition("(\n")
    body, _, options = rest.rpartition("\n)")
    lines = [line.strip().rstrip(",") for line in body.split("\n") if line.strip()]
    elements = [line for line in lines if not _FOREIGN_KEY.match(line)]
    foreign = [line for line in lines if _FOREIGN_KEY.match(line)]
    return elements, foreign, _AUTO_INCREMENT.sub("", options).strip()


def auto_increment(conn: Connection, qt: str) -> int | None:
    """The next AUTO_INCREMENT value the table would hand out (None: no such column)."""
    found = _INCREMENT.search(show_create(conn, qt).rpartition("\n)")[2])
    return int(found.group(1)) if found else None


def triggers(conn: Connection, schema: str | None, name: str, quote: Quote) -> list[str]:
    """``CREATE TRIGGER`` of each trigger on the table, without its DEFINER (the restoring user defines it)."""
    prefix = f"{quote(schema)}." if schema else ""
    found = []
    for (trigger,) in conn.exec_driver_sql(_TRIGGERS, {"schema": schema, "name": name}).all():
        row = conn.exec_driver_sql(f"SHOW CREATE TRIGGER {prefix}{quote(trigger)}").one()
        found.append(_DEFINER.sub("", str(row[2]), count=1))
    return found


def _column_type(row: Any) -> str:
    """The type with its character set and collation (a staging table of the rows compares keys like the table)."""
    return f"{row[1]} CHARACTER SET {row[3]} COLLATE {row[4]}" if row[3] and row[4] else str(row[1])


def table_definition(conn: Connection, table: str, qt: str, quote: Quote) -> TableDefinition:
    """``qt``: the quoted table; ``quote``: quotes one identifier."""
    schema, name = split_name(table)
    params = {"schema": schema, "name": name}
    elements, foreign, options = split_create(show_create(conn, qt))
    cols = conn.exec_driver_sql(_COLUMNS, params).all()
    pk = [r[0] for r in conn.exec_driver_sql(_PRIMARY_KEY, params).all()]
    trigger_ddl = triggers(conn, schema, name, quote)
    columns = [Column(c[0], _column_type(c), "VIRTUAL GENERATED" in str(c[2]).upper()
                      or "STORED GENERATED" in str(c[2]).upper()) for c in cols]
    column_lines = [e for e in elements if e.startswith("`")]
    other_lines = [e for e in elements if not e.startswith("`")]
    keys = [e for e in other_lines if _SECONDARY_KEY.match(e)]  # built after the rows are in
    structure = structure_hash({"columns": sorted(column_lines), "keys": sorted(other_lines),
                                "foreign_keys": sorted(foreign), "options": options, "triggers": sorted(trigger_ddl)})
    references = sorted({unquote(m.group("table")) for line in foreign if (m := _FK_PARTS.search(line))})
    return TableDefinition(
        columns=columns,
        create=[f"CREATE TABLE {qt} (\n  " + ",\n  ".join(e for e in elements if e not in keys) + f"\n) {options}"],
        foreign_keys=[f"ALTER TABLE {qt} ADD {line}" for line in foreign],
        indexes=[*(f"ALTER TABLE {qt} ADD {line}" for line in keys), *trigger_ddl],
        primary_key=pk, references=[r for r in references if r != name], structure=structure,
    )


def definition_foreign_keys(definition: TableDefinition) -> list[RawForeignKey]:
    """The foreign keys in a definition's ``ALTER TABLE … ADD CONSTRAINT`` statements, as descriptions."""
    keys = []
    for ddl in definition.foreign_keys:
        found = _FK_PARTS.search(ddl)
        if found is None:
            continue
        rules = found.group("rules").upper()
        keys.append(RawForeignKey(_names(found.group("cols")), unquote(found.group("table")),
                                  _names(found.group("refcols")), _rule(rules, "DELETE"), _rule(rules, "UPDATE")))
    return keys


def _rule(rules: str, event: str) -> str:
    found = re.search(rf"ON {event} (CASCADE|SET NULL|SET DEFAULT|RESTRICT|NO ACTION)", rules)
    return found.group(1).lower() if found else "restrict"
