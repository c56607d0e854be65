"""Change capture in SQL, per database: a change table, triggers that fill it, lag, read-only guards, switches.

A change table holds one row per captured write: ``seq`` (increasing), ``op`` (I/U/D), ``captured_at`` and the
row's key (``k_<column>``, typed like the captured table's key). An update that changes the key records the
old and the new key. The replay reads *current* rows by these keys, so a row's many changes replay as one,
in any order, and replaying twice is harmless (see core/capture/replay.py).
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.dialects.base import Dialect


@dataclass(frozen=True)
class CaptureNames:
    """The objects one capture creates, named after the plan, step and direction (short and unique)."""

    table: str  # the captured table, as the plan names it (``schema.name`` or ``name``)
    change_table: str
    trigger: str
    key: tuple[str, ...]  # the captured table's key columns

    @classmethod
    def of(cls, plan_id: str, step_id: str, direction: str, table: str, key: list[str]) -> CaptureNames:
        digest = hashlib.sha1(f"{plan_id}|{step_id}|{direction}".encode()).hexdigest()[:10]
        schema = table.rpartition(".")[0]
        prefix = f"{schema}." if schema else ""
        return cls(table, f"{prefix}am_chg_{digest}", f"am_cap_{digest}", tuple(key))

    def on(self, table: str) -> CaptureNames:
        """The same capture, on ``table`` (the captured table's name after a rename)."""
        return replace(self, table=table)

    def to_json(self) -> dict[str, Any]:
        return {"table": self.table, "change_table": self.change_table, "trigger": self.trigger, "key": list(self.key)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaptureNames:
        """As recorded in a ledger row (:meth:`to_json`)."""
        return cls(data["table"], data["change_table"], data["trigger"], tuple(data["key"]))

    @property
    def schema(self) -> str | None:
        return self.table.rpartition(".")[0] or None

    @property
    def guard(self) -> str:
        return self.trigger.replace("am_cap_", "am_ro_")

    def change_column(self, key_column: str) -> str:
        return f"k_{key_column}"


class CaptureSql(ABC):
    """The SQL of change capture on one kind of database (quoting from its :class:`Dialect`)."""

    def __init__(self, dialect: Dialect):
        self.d = dialect

    def key_types(self, conn: Connection, names: CaptureNames) -> list[str]:
        """The captured table's key column types, as this database spells them."""
        schema, _, table = names.table.rpartition(".")
        columns = {c["name"]: c["type"] for c in inspect(conn).get_columns(table, schema=schema or None)}
        return [columns[k].compile(dialect=conn.dialect) for k in names.key]

    def change_columns(self, names: CaptureNames) -> list[str]:
        return [self.d.ident(names.change_column(k)) for k in names.key]

    @abstractmethod
    def install(self, conn: Connection, names: CaptureNames) -> None:
        """Create the change table and the triggers (in ``conn``'s transaction)."""

    @abstractmethod
    def drop(self, conn: Connection, names: CaptureNames) -> None:
        """Drop the triggers and the change table (missing ones are fine)."""

    @abstractmethod
    def triggers_exist(self, conn: Connection, names: CaptureNames) -> bool:
        """Whether the capture triggers are on the table."""

    @abstractmethod
    def lag(self, conn: Connection, names: CaptureNames) -> tuple[int, float]:
        """(changes not replayed, age in seconds of the oldest of them; 0 when none)."""

    @abstractmethod
    def guard_writes(self, conn: Connection, names: CaptureNames, on: bool, message: str | None = None) -> None:
        """Make the table refuse writes (a trigger that raises ``message``), or lift that."""

    def prepare_guard(self, conn: Connection, names: CaptureNames) -> None:
        """Make a later ``guard_writes(conn, names, True)`` a change that commits with its connection's transaction
        (the lock's), where creating a trigger would end that transaction: call it before taking the lock. The
        guard stays off until then. Nothing to do where DDL is transactional."""
        return None

    @staticmethod
    def guard_message(names: CaptureNames, message: str | None) -> str:
        text = message or (f"{names.table} is read-only: the application was switched to the new table by a "
                           f"migration (cutover); write there")
        return text.replace("'", "''")

    @abstractmethod
    def view_sql(self, conn: Connection, view: str) -> str:
        """The statement that recreates ``view`` as it is now."""

    def replace_view(self, conn: Connection, view: str, create_sql: str) -> None:
        conn.exec_driver_sql(f"DROP VIEW {self.d.ident(view)}")
        conn.exec_driver_sql(self.d.fragment(create_sql))

    def create_view_sql(self, view: str, select: str) -> str:
        return f"CREATE VIEW {self.d.ident(view)} AS {select}"

    def rename_table(self, conn: Connection, table: str, new_name: str) -> None:
        conn.exec_driver_sql(f"ALTER TABLE {self.d.ident(table)} RENAME TO {self.d.ident(new_name.split('.')[-1])}")

    def rename_tables(self, conn: Connection, pairs: list[tuple[str, str]]) -> None:
        """Rename ``(table, new_name)`` pairs in order, at once for the application (in ``conn``'s transaction, or
        in one statement where DDL is not transactional)."""
        for table, new_name in pairs:
            self.rename_table(conn, table, new_name)

    def revoke_writes(self, conn: Connection, table: str, roles: list[str], grant_back: bool) -> None:
        raise self.d.unsupported("revoking writes from roles")
