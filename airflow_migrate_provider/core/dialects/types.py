"""Dialect-neutral descriptions that dialects read out of their catalogs (no database knowledge here)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class TypeInfo:
    """What a database says about a result column's type code (PostgreSQL: a ``pg_type`` row)."""

    typname: str
    typcategory: str  # one letter, PostgreSQL's pg_type.typcategory
    formatted: str  # format_type(oid, NULL)


@dataclass(frozen=True)
class ResumeHazard:
    """Why a statement of a step cannot run a second time after a crash (where DDL commits on its own), and how
    to write it so it can (``fix``; None when the database has no such form)."""

    why: str
    fix: str | None


@dataclass(frozen=True)
class RawIndex:
    """An index as the catalog shows it, before normalization: elements are (SQL text, sorting words)."""

    name: str | None
    elements: tuple[tuple[str, tuple[str, ...]], ...]
    unique: bool
    where: str | None


@dataclass(frozen=True)
class RawForeignKey:
    columns: tuple[str, ...]
    referred_table: str  # schema-qualified when the catalog says so
    referred_columns: tuple[str, ...]
    on_delete: str  # lower case: "no action", "cascade", ...
    on_update: str


@dataclass(frozen=True)
class Column:
    """A column of a backed-up table."""

    name: str
    type: str
    generated: bool = False  # computed by the database: never inserted


@dataclass
class TableDefinition:
    """The DDL that rebuilds a table (in order) and a fingerprint of its structure."""

    columns: list[Column]
    create: list[str]  # CREATE TABLE, then constraints other than foreign keys
    foreign_keys: list[str]  # ALTER TABLE … ADD CONSTRAINT … FOREIGN KEY, run after every table has its data
    indexes: list[str]  # CREATE INDEX (and triggers on SQLite)
    primary_key: list[str]
    references: list[str]  # tables this one's foreign keys point at
    owned_sequences: list[list[str]] = field(default_factory=list)  # [sequence, column] (PostgreSQL)
    structure: str = ""  # SHA-256 of the normalized structure

    @property
    def insertable(self) -> list[str]:
        return [c.name for c in self.columns if not c.generated]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TableDefinition:
        return cls(**{**data, "columns": [Column(**c) for c in data["columns"]]})


def split_name(table: str) -> tuple[str | None, str]:
    """``schema.table`` → (schema, table); (None, table) when unqualified."""
    schema, _, name = table.rpartition(".")
    return schema or None, name


def structure_hash(parts: Any) -> str:
    """SHA-256 of a JSON rendering of ``parts`` (keys sorted): a table structure's fingerprint."""
    import hashlib
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
