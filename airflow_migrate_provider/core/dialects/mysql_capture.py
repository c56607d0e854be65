"""Change capture on MariaDB and MySQL: one ``AFTER … FOR EACH ROW`` trigger per write event, a TRUNCATE refusal,
and read-only guards that can be switched on inside a transaction.

DDL commits on its own there (a ``CREATE TRIGGER`` ends the transaction it runs in, lock included), so:

- **the guard** is prepared outside the lock (:meth:`MysqlCaptureSql.prepare_guard`): a one-row table
  ``am_ro_<hash>`` holding the refusal message (NULL: writes pass) and triggers that read it with a locking read
  (the latest committed value, whatever the writer's snapshot) after each row written. Under the lock, switching
  it on is then an ``UPDATE`` of that row, which commits with the lock's transaction: a write that waited for the
  lock is refused, never lands in the old table after the switch. Switching it off is an ``UPDATE`` too (it commits
  with the ``DELETE`` that empties the new table on rollback); the objects of a guard that is off are dropped with
  the capture of the same name (:meth:`MysqlCaptureSql.drop`).
- **TRUNCATE** fires no trigger. The capture creates an empty table ``am_chg_<hash>_no_truncate`` with a foreign key
  to the captured table's key: InnoDB refuses to TRUNCATE a table referenced by a foreign key (error 1701, which
  names the constraint ``dual_write_capture_refuses_truncate_<hash>``). A session with ``foreign_key_checks = 0``
  gets past it; the cutover's ``verify`` then reports the rows it lost as divergent, and nothing is switched.
- **a rename switch** is one ``RENAME TABLE a TO b, c TO d`` (atomic: the application never finds the name
  missing), a **view switch** one ``CREATE OR REPLACE VIEW``.
"""

from __future__ import annotations

import logging

from sqlalchemy import exc as sa_exc
from sqlalchemy import inspect
from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.dialects.capture_base import CaptureNames, CaptureSql

log = logging.getLogger(__name__)

_SUFFIXES = ("i", "u", "d")
_EVENTS = {"i": "INSERT", "u": "UPDATE", "d": "DELETE"}
_MESSAGE_LENGTH = 1000


class MysqlCaptureSql(CaptureSql):
    # -- names ------------------------------------------------------------------------------------------
    def _prefix(self, names: CaptureNames) -> str:
        return f"{names.schema}." if names.schema else ""

    def _trigger(self, names: CaptureNames, base: str, suffix: str) -> str:
        return self.d.ident(f"{self._prefix(names)}{base}_{suffix}")

    def _no_truncate_table(self, names: CaptureNames) -> str:
        return self.d.ident(f"{names.change_table}_no_truncate")

    def _guard_table(self, names: CaptureNames) -> str:
        return self.d.ident(f"{self._prefix(names)}{names.guard}")

    def _qualified(self, table: str, new_name: str) -> str:
        """``new_name`` in ``table``'s schema (MySQL's RENAME can move a table between schemas)."""
        schema = table.rpartition(".")[0]
        return self.d.ident(f"{schema}.{new_name.split('.')[-1]}" if schema else new_name.split(".")[-1])

    # -- capture ----------------------------------------------------------------------------------------
    def install(self, conn: Connection, names: CaptureNames) -> None:
        """Change table, TRUNCATE refusal, then the three triggers (each statement commits on its own: a retry
        drops what a dead try left, see :meth:`drop`)."""
        d, chg, table = self.d, self.d.ident(names.change_table), self.d.ident(names.table)
        kcols = self.change_columns(names)
        typed = ", ".join(f"{c} {t}" for c, t in zip(kcols, self.key_types(conn, names), strict=True))
        # TIMESTAMP is stored in UTC and read in the session's zone: writers' sessions may be in any zone
        conn.exec_driver_sql(f"CREATE TABLE {chg} (seq BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, "
                             f"op CHAR(1) NOT NULL, captured_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), "
                             f"{typed}) ENGINE=InnoDB")
        self._refuse_truncate(conn, names)
        key_moved = " OR ".join(f"NOT (NEW.{d.ident(k)} <=> OLD.{d.ident(k)})" for k in names.key)
        bodies = {"i": self._insert(names, "I", "NEW"),
                  "u": f"{self._insert(names, 'U', 'OLD')} IF {key_moved} THEN {self._insert(names, 'U', 'NEW')} "
                       f"END IF;",
                  "d": self._insert(names, "D", "OLD")}
        for suffix, body in bodies.items():
            conn.exec_driver_sql(f"CREATE TRIGGER {self._trigger(names, names.trigger, suffix)} AFTER "
                                 f"{_EVENTS[suffix]} ON {table} FOR EACH ROW BEGIN {body} END")

    def _insert(self, names: CaptureNames, op: str, row: str) -> str:
        kcols = ", ".join(self.change_columns(names))
        values = ", ".join(f"{row}.{self.d.ident(k)}" for k in names.key)
        return f"INSERT INTO {self.d.ident(names.change_table)} (op, {kcols}) VALUES ('{op}', {values});"

    def _refuse_truncate(self, conn: Connection, names: CaptureNames) -> None:
        """An empty table referencing the captured table's key: InnoDB then refuses TRUNCATE (error 1701)."""
        schema, _, table = names.table.rpartition(".")
        pk = inspect(conn).get_pk_constraint(table, schema=schema or None).get("constrained_columns") or []
        referenced = list(pk) or list(names.key)
        types = self._column_types(conn, names, referenced)
        cols = [self.d.ident(names.change_column(c)) for c in referenced]
        typed = ", ".join(f"{c} {types[k]} NOT NULL" for c, k in zip(cols, referenced, strict=True))
        constraint = self.d.ident(f"dual_write_capture_refuses_truncate_{names.trigger.removeprefix('am_cap_')}")
        try:
            conn.exec_driver_sql(
                f"CREATE TABLE {self._no_truncate_table(names)} ({typed}, CONSTRAINT {constraint} FOREIGN KEY "
                f"({', '.join(cols)}) REFERENCES {self.d.ident(names.table)} "
                f"({', '.join(self.d.ident(c) for c in referenced)})) ENGINE=InnoDB")
        except sa_exc.DBAPIError as exc:  # not InnoDB, partitioned, ...: capture works, TRUNCATE is not refused
            log.warning("%s: TRUNCATE cannot be refused while capture is on (no foreign key can reference it: %s). "
                        "Do not TRUNCATE it until the migration is done or rolled back: the deletes would not be "
                        "captured (the cutover's verify would report the rows as divergent)", names.table,
                        str(exc.orig).splitlines()[0][:200])

    def _column_types(self, conn: Connection, names: CaptureNames, columns: list[str]) -> dict[str, str]:
        schema, _, table = names.table.rpartition(".")
        found = {c["name"]: c["type"] for c in inspect(conn).get_columns(table, schema=schema or None)}
        return {c: found[c].compile(dialect=conn.dialect) for c in columns}

    def drop(self, conn: Connection, names: CaptureNames) -> None:
        """The capture, and its guard if that is off (a guard that is on stays: the table keeps refusing writes)."""
        for suffix in _SUFFIXES:
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {self._trigger(names, names.trigger, suffix)}")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self._no_truncate_table(names)}")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self.d.ident(names.change_table)}")
        if self._guard_state(conn, names) != "on":
            self._drop_guard(conn, names)

    def _count_triggers(self, conn: Connection, names: CaptureNames, base: str) -> int:
        wanted = {f"{base}_{s}": f"t{i}" for i, s in enumerate(_SUFFIXES)}
        marks = ", ".join(self.d.param(p) for p in wanted.values())
        return int(conn.exec_driver_sql(
            f"SELECT count(*) FROM information_schema.triggers WHERE trigger_schema = "
            f"COALESCE({self.d.param('schema')}, DATABASE()) AND trigger_name IN ({marks})",
            {"schema": names.schema, **{p: n for n, p in wanted.items()}}).scalar() or 0)

    def triggers_exist(self, conn: Connection, names: CaptureNames) -> bool:
        """All three capture triggers (they are created one by one: a dead install may have left some)."""
        return self._count_triggers(conn, names, names.trigger) == len(_SUFFIXES)

    def lag(self, conn: Connection, names: CaptureNames) -> tuple[int, float]:
        count, age = conn.exec_driver_sql(
            f"SELECT count(*), COALESCE(TIMESTAMPDIFF(MICROSECOND, min(captured_at), CURRENT_TIMESTAMP(6)), 0) "
            f"FROM {self.d.ident(names.change_table)}").one()
        return int(count), max(float(age) / 1e6, 0.0)

    # -- read-only guard -------------------------------------------------------------------------------
    def prepare_guard(self, conn: Connection, names: CaptureNames) -> None:
        if self._count_triggers(conn, names, names.guard) == len(_SUFFIXES):
            return
        self._drop_guard(conn, names)
        self._create_guard(conn, names, None)

    def guard_writes(self, conn: Connection, names: CaptureNames, on: bool, message: str | None = None) -> None:
        """On: a row change where prepared (else the guard is created, which commits conn's transaction). Off: a
        row change that commits with conn's transaction; :meth:`drop` removes the guard's objects later."""
        if not on:
            if self._guard_state(conn, names) != "absent":
                conn.exec_driver_sql(f"UPDATE {self._guard_table(names)} SET message = NULL")
        elif self._count_triggers(conn, names, names.guard) == len(_SUFFIXES):
            # prepared: a row change, committed with conn's transaction (the lock's)
            conn.exec_driver_sql(f"UPDATE {self._guard_table(names)} SET message = {self.d.param('m')}",
                                 {"m": self._message(names, message)})
        else:
            self._drop_guard(conn, names)
            self._create_guard(conn, names, self._message(names, message))

    def _guard_state(self, conn: Connection, names: CaptureNames) -> str:
        """absent, off (no message) or on."""
        schema, _, name = f"{self._prefix(names)}{names.guard}".rpartition(".")
        exists = conn.exec_driver_sql(
            f"SELECT count(*) FROM information_schema.tables WHERE table_schema = COALESCE("
            f"{self.d.param('schema')}, DATABASE()) AND table_name = {self.d.param('name')}",
            {"schema": schema or None, "name": name}).scalar()
        if not exists:
            return "absent"
        message = conn.exec_driver_sql(f"SELECT message FROM {self._guard_table(names)} WHERE id = 1").scalar()
        return "off" if message is None else "on"

    def _message(self, names: CaptureNames, message: str | None) -> str:
        return (message or self.guard_message(names, None).replace("''", "'"))[:_MESSAGE_LENGTH]

    def _create_guard(self, conn: Connection, names: CaptureNames, message: str | None) -> None:
        table = self._guard_table(names)
        conn.exec_driver_sql(f"CREATE TABLE {table} (id TINYINT NOT NULL PRIMARY KEY, message "
                             f"VARCHAR({_MESSAGE_LENGTH})) ENGINE=InnoDB")
        # committed by the next statement (DDL commits what came before it)
        conn.exec_driver_sql(f"INSERT INTO {table} (id, message) VALUES (1, {self.d.param('m')})", {"m": message})
        # a locking read sees the latest committed message, not the writer's snapshot from before the lock
        body = (f"BEGIN DECLARE am_m VARCHAR({_MESSAGE_LENGTH}) DEFAULT NULL; SELECT message INTO am_m FROM {table} "
                f"WHERE id = 1 LOCK IN SHARE MODE; IF am_m IS NOT NULL THEN SIGNAL SQLSTATE '45000' SET "
                f"MESSAGE_TEXT = am_m; END IF; END")
        for suffix in _SUFFIXES:
            conn.exec_driver_sql(f"CREATE TRIGGER {self._trigger(names, names.guard, suffix)} AFTER "
                                 f"{_EVENTS[suffix]} ON {self.d.ident(names.table)} FOR EACH ROW {body}")

    def _drop_guard(self, conn: Connection, names: CaptureNames) -> None:
        for suffix in _SUFFIXES:
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {self._trigger(names, names.guard, suffix)}")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self._guard_table(names)}")

    # -- switches ---------------------------------------------------------------------------------------
    def view_sql(self, conn: Connection, view: str) -> str:
        schema, _, name = view.rpartition(".")
        definition = conn.exec_driver_sql(
            f"SELECT view_definition FROM information_schema.views WHERE table_schema = "
            f"COALESCE({self.d.param('schema')}, DATABASE()) AND table_name = {self.d.param('name')}",
            {"schema": schema or None, "name": name}).scalar()
        if definition is None:
            raise LookupError(f"view '{view}' does not exist")
        return self.create_view_sql(view, str(definition))

    def create_view_sql(self, view: str, select: str) -> str:
        return f"CREATE OR REPLACE VIEW {self.d.ident(view)} AS {select}"

    def replace_view(self, conn: Connection, view: str, create_sql: str) -> None:
        conn.exec_driver_sql(self.d.fragment(create_sql))  # one statement: the view is never missing

    def rename_table(self, conn: Connection, table: str, new_name: str) -> None:
        self.rename_tables(conn, [(table, new_name)])

    def rename_tables(self, conn: Connection, pairs: list[tuple[str, str]]) -> None:
        renames = ", ".join(f"{self.d.ident(old)} TO {self._qualified(old, new)}" for old, new in pairs)
        conn.exec_driver_sql(f"RENAME TABLE {renames}")
