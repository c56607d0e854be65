"""MySQL/MariaDB restore specifics: foreign key checks off for the restore's session (checked by query instead),
AUTO_INCREMENT counters that continue past restored rows and past what was handed out before, the differing keys
found without FULL JOIN, join-style DELETE/UPDATE, one atomic RENAME TABLE for the swap of staged tables, and other
tables' foreign keys moved back from a parked table to the restored one (InnoDB's keys follow a renamed table)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.dialects.mysql_catalog import (
    auto_increment,
    definition_foreign_keys,
    show_create,
    unquote,
)
from airflow_migrate_provider.core.dialects.types import RawForeignKey, TableDefinition, split_name

Quote = Callable[[str], str]
_FOREIGN_KEYS = (
    "SELECT k.table_name, k.constraint_name, k.column_name, k.referenced_table_name, k.referenced_column_name, "
    "r.delete_rule, r.update_rule FROM information_schema.key_column_usage k "
    "JOIN information_schema.referential_constraints r ON r.constraint_schema = k.constraint_schema "
    "AND r.constraint_name = k.constraint_name AND r.table_name = k.table_name "
    "WHERE k.table_schema = DATABASE() AND k.referenced_table_name IS NOT NULL "
    "ORDER BY k.table_name, k.constraint_name, k.ordinal_position")
_INDEX = re.compile(r"^(?:UNIQUE |FULLTEXT |SPATIAL )?KEY (`(?:[^`]|``)+`) (\(.*\))")


def _cols(quote: Quote, names: list[str] | tuple[str, ...], prefix: str = "") -> str:
    return ", ".join(f"{prefix}{quote(n)}" for n in names)


def _key_match(quote: Quote, keys: list[str], left: str, right: str) -> str:
    return " AND ".join(f"{left}.{quote(k)} = {right}.{quote(k)}" for k in keys)


def handed_out(conn: Connection, qt: str, exists: bool) -> dict[str, Any]:
    """Before a rebuild: the AUTO_INCREMENT value the live table would hand out next."""
    state: dict[str, Any] = {"external_fks": [], "handed_out": {}, "sequences": []}
    if exists:
        state["handed_out"] = {"next": auto_increment(conn, qt)}
    return state


def continue_auto_increment(conn: Connection, qt: str, state: dict[str, Any]) -> None:
    """After the rows are back: the counter goes on past them (InnoDB does that by itself) and past what the
    old table handed out (an ALTER below the highest key is raised to it by InnoDB)."""
    following = state.get("handed_out", {}).get("next")
    if following:
        conn.exec_driver_sql(f"ALTER TABLE {qt} AUTO_INCREMENT = {int(following)}")


def diff_keys(conn: Connection, qt: str, definition: TableDefinition, source: str, index: int,
              quote: Quote) -> str | None:
    """A temporary table of the keys whose rows differ (``extra``: only in the table, ``missing``: only in the
    backup), in three anti/inner joins (no FULL JOIN here); values compared byte for byte, not by collation."""
    keys = definition.primary_key
    if not keys:
        return None
    name = f"airflow_migrate_diff_{index}"
    first, match = quote(keys[0]), _key_match(quote, keys, "l", "b")
    values = [c for c in definition.insertable if c not in keys]
    conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {name}")
    conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {name} AS SELECT {_cols(quote, keys, 'l.')}, TRUE AS extra, "
                         f"FALSE AS missing FROM {qt} AS l LEFT JOIN {source} AS b ON {match} WHERE b.{first} IS NULL")
    conn.exec_driver_sql(f"INSERT INTO {name} SELECT {_cols(quote, keys, 'b.')}, FALSE, TRUE FROM {source} AS b "
                         f"LEFT JOIN {qt} AS l ON {match} WHERE l.{first} IS NULL")
    if values:
        same = " AND ".join(f"CAST(l.{quote(c)} AS BINARY) <=> CAST(b.{quote(c)} AS BINARY)" for c in values)
        conn.exec_driver_sql(f"INSERT INTO {name} SELECT {_cols(quote, keys, 'l.')}, FALSE, FALSE FROM {qt} AS l "
                             f"JOIN {source} AS b ON {match} WHERE NOT ({same})")
    return name


def delete_diff_sql(qt: str, diff: str, match: str) -> str:
    return f"DELETE {qt} FROM {qt} JOIN {diff} AS d ON {match} WHERE d.extra"


def update_diff_sql(qt: str, columns: list[str], source: str, diff: str, target_match: str,
                    source_match: str) -> str:
    sets = ", ".join(f"{qt}.{c} = b.{c}" for c in columns)
    return (f"UPDATE {qt} JOIN {diff} AS d ON {target_match} JOIN {source} AS b ON {source_match} SET {sets} "
            f"WHERE NOT d.extra AND NOT d.missing")


def foreign_key_links(conn: Connection, restoring: set[str], dropping: set[str],
                      rebuilt: dict[str, TableDefinition]) -> list[tuple[str, RawForeignKey]]:
    """(child table, key) of every foreign key a restore must hold afterwards: those of the rebuilt tables as their
    backed-up definitions say, and the live ones from or to another restored table (not to or from one that is
    dropped). Table names are bare (the database of the connection)."""
    bare_rebuilt = {split_name(t)[1]: d for t, d in rebuilt.items()}
    links = [(child, fk) for child, d in bare_rebuilt.items() for fk in definition_foreign_keys(d)]
    grouped: dict[tuple[str, str], list[Any]] = {}
    for row in conn.exec_driver_sql(_FOREIGN_KEYS).all():
        grouped.setdefault((row[0], row[1]), []).append(row)
    bare_restoring = {split_name(t)[1] for t in restoring}
    bare_dropping = {split_name(t)[1] for t in dropping}
    for (child, _), rows in grouped.items():
        parent = rows[0][3]
        if child in bare_rebuilt or child in bare_dropping or parent in bare_dropping:
            continue
        if child in bare_restoring or parent in bare_restoring:
            links.append((child, RawForeignKey(tuple(r[2] for r in rows), parent, tuple(r[4] for r in rows),
                                               str(rows[0][5]).lower(), str(rows[0][6]).lower())))
    return links


def rename_tables(conn: Connection, renames: list[tuple[str, str]]) -> None:
    """All renames in one RENAME TABLE statement: atomic (all or none), also for a crash."""
    if renames:
        conn.exec_driver_sql("RENAME TABLE " + ", ".join(f"{old} TO {new}" for old, new in renames))


def move_foreign_keys(conn: Connection, parked: str, live: str, skip: set[str], quote: Quote) -> None:
    """Point other tables' foreign keys that followed ``live`` to ``parked`` (a rename) back at ``live``
    (foreign key checks are off, so this checks no rows: the restore checked them by query)."""
    rows = conn.exec_driver_sql(
        "SELECT DISTINCT table_name, constraint_name FROM information_schema.referential_constraints "
        "WHERE constraint_schema = DATABASE() AND referenced_table_name = %(t)s AND table_name <> %(t)s",
        {"t": split_name(unquote(parked) or parked)[1]}).all()
    for child, name in rows:
        if child in skip:
            continue
        line = next(ln.strip().rstrip(",") for ln in show_create(conn, quote(child)).split("\n")
                    if ln.strip().startswith(f"CONSTRAINT {quote(name)} FOREIGN KEY"))
        moved = re.sub(r"REFERENCES `(?:[^`]|``)+`(?:\.`(?:[^`]|``)+`)?", lambda _: f"REFERENCES {live}", line,
                       count=1)
        before = _indexes(conn, quote(child))
        conn.exec_driver_sql(f"ALTER TABLE {quote(child)} DROP FOREIGN KEY {quote(name)}")
        conn.exec_driver_sql(f"ALTER TABLE {quote(child)} ADD {moved}")
        _keep_index_names(conn, quote(child), before, quote)


def _indexes(conn: Connection, qt: str) -> dict[str, str]:
    """Index name → its columns, from SHOW CREATE TABLE."""
    found = (_INDEX.match(ln.strip()) for ln in show_create(conn, qt).split("\n"))
    return {unquote(m.group(1)): m.group(2) for m in found if m}


def _keep_index_names(conn: Connection, qt: str, before: dict[str, str], quote: Quote) -> None:
    """MariaDB replaces an index it made for a foreign key by one named after a foreign key added later: give it
    its old name back."""
    after = _indexes(conn, qt)
    for name, columns in after.items():
        old = next((n for n, c in before.items() if c == columns and n not in after), None)
        if name not in before and old is not None:
            conn.exec_driver_sql(f"ALTER TABLE {qt} RENAME INDEX {quote(name)} TO {quote(old)}")
