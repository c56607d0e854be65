"""Introspection through SQLAlchemy's inspector: the default every dialect adapter starts from and overrides
where its own catalog knows more (SQLite's pragmas, PostgreSQL's pg_catalog)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.dialects.types import RawForeignKey, RawIndex, TypeInfo, split_name


class InspectorCatalog:
    """Catalog reads that SQLAlchemy's reflection answers well enough on any database."""

    def table_exists(self, conn: Connection, table: str) -> bool:
        """True when ``table`` (``schema.name`` or ``name``) exists, as the database resolves the name."""
        schema, name = split_name(table)
        return bool(inspect(conn).has_table(name, schema=schema))

    def declared_types(self, engine: Engine, table: str) -> dict[str, str]:
        """Column name → the type as declared/spelled by the database ({} when reflection must do)."""
        return {}

    def cast_types(self, conn: Connection, table: str) -> dict[str, str]:
        """Column name → the exact type to CAST a value to for this column ({}: compile the reflected type)."""
        return {}

    def describe_type_codes(self, conn: Connection, codes: list[Any]) -> dict[int, TypeInfo]:
        """Result-column type codes (``cursor.description[i][1]``) → what they are ({}: the driver gives none)."""
        return {}

    def is_rowid_alias(self, primary_key: list[str], column: str, declared: str) -> bool:
        """True when ``column`` is an alias of an implicit row id (its values come from a sequence)."""
        return False

    def indexes(self, engine: Engine, table: str) -> list[RawIndex]:
        """Indexes that do not merely back a primary key or unique constraint."""
        schema, name = split_name(table)
        found = []
        for index in inspect(engine).get_indexes(name, schema=schema):
            if index.get("duplicates_constraint"):
                continue
            expressions = index.get("expressions") or index["column_names"]
            sorting = index.get("column_sorting") or {}
            where = next((v for k, v in (index.get("dialect_options") or {}).items() if k.endswith("_where")), None)
            found.append(RawIndex(index["name"], tuple((str(e), tuple(sorting.get(e, ()))) for e in expressions),
                                  bool(index["unique"]), str(where) if where is not None else None))
        return found

    def foreign_keys(self, engine: Engine, table: str) -> list[RawForeignKey]:
        schema, name = split_name(table)
        keys = []
        for fk in inspect(engine).get_foreign_keys(name, schema=schema):
            referred = (f"{fk['referred_schema']}." if fk.get("referred_schema") else "") + fk["referred_table"]
            options = fk.get("options") or {}
            keys.append(RawForeignKey(tuple(fk["constrained_columns"]), referred, tuple(fk["referred_columns"]),
                                      (options.get("ondelete") or "no action").lower(),
                                      (options.get("onupdate") or "no action").lower()))
        return keys

    def unique_constraints(self, engine: Engine, table: str) -> list[tuple[str, ...]]:
        schema, name = split_name(table)
        return [tuple(u["column_names"]) for u in inspect(engine).get_unique_constraints(name, schema=schema)]

    def relation_size(self, conn: Connection, table: str) -> int | None:
        """Bytes the table takes on disk (with its indexes), or None when the database does not say."""
        return None
