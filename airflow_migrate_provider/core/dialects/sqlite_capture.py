"""Change capture on SQLite: one row trigger per write event, read-only guards by RAISE(ABORT)."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.dialects.capture_base import CaptureNames, CaptureSql

_NOW = "((julianday('now') - 2440587.5) * 86400.0)"  # unix seconds, fractional


class SqliteCaptureSql(CaptureSql):
    def _insert(self, names: CaptureNames, op: str, row: str) -> str:
        kcols = ", ".join(self.change_columns(names))
        values = ", ".join(f"{row}.{self.d.ident(k)}" for k in names.key)
        return f"INSERT INTO {self.d.ident(names.change_table)} (op, {kcols}) VALUES ('{op}', {values});"

    def install(self, conn: Connection, names: CaptureNames) -> None:
        d, table = self.d, self.d.ident(names.table)
        kcols = self.change_columns(names)
        typed = ", ".join(f"{c} {t}" for c, t in zip(kcols, self.key_types(conn, names), strict=True))
        conn.exec_driver_sql(f"CREATE TABLE {d.ident(names.change_table)} (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                             f"op TEXT NOT NULL, captured_at REAL NOT NULL DEFAULT {_NOW}, {typed})")
        key_moved = " OR ".join(f"NEW.{d.ident(k)} IS NOT OLD.{d.ident(k)}" for k in names.key)
        new_values = ", ".join(f"NEW.{d.ident(k)}" for k in names.key)
        bodies = {
            "i": ("INSERT", self._insert(names, "I", "NEW")),
            "u": ("UPDATE", self._insert(names, "U", "OLD") +
                  f" INSERT INTO {d.ident(names.change_table)} (op, {', '.join(kcols)}) SELECT 'U', {new_values} "
                  f"WHERE {key_moved};"),
            "d": ("DELETE", self._insert(names, "D", "OLD")),
        }
        for suffix, (event, body) in bodies.items():
            conn.exec_driver_sql(f"CREATE TRIGGER {d.ident(f'{names.trigger}_{suffix}')} AFTER {event} ON {table} "
                                 f"BEGIN {body} END")

    def drop(self, conn: Connection, names: CaptureNames) -> None:
        for suffix in ("i", "u", "d"):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {self.d.ident(f'{names.trigger}_{suffix}')}")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self.d.ident(names.change_table)}")

    def triggers_exist(self, conn: Connection, names: CaptureNames) -> bool:
        found = conn.exec_driver_sql("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name LIKE ?",
                                     (names.trigger + "%",)).scalar()
        return bool(found)

    def lag(self, conn: Connection, names: CaptureNames) -> tuple[int, float]:
        count, age = conn.exec_driver_sql(f"SELECT count(*), coalesce({_NOW} - min(captured_at), 0) "
                                          f"FROM {self.d.ident(names.change_table)}").one()
        return int(count), max(float(age), 0.0)

    def guard_writes(self, conn: Connection, names: CaptureNames, on: bool, message: str | None = None) -> None:
        for event in ("insert", "update", "delete"):
            trigger = self.d.ident(f"{names.guard}_{event[0]}")
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger}")
            if on:
                message = self.guard_message(names, message)
                conn.exec_driver_sql(f"CREATE TRIGGER {trigger} BEFORE {event.upper()} ON "
                                     f"{self.d.ident(names.table)} BEGIN SELECT RAISE(ABORT, '{message}'); END")

    def view_sql(self, conn: Connection, view: str) -> str:
        sql = conn.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'view' AND name = ?",
                                   (view,)).scalar()
        if sql is None:
            raise LookupError(f"view '{view}' does not exist")
        return str(sql)
