"""Change capture on PostgreSQL: statement-level triggers with transition tables (one INSERT per statement,
however many rows it writes), a TRUNCATE guard, and read-only guards."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.dialects.capture_base import CaptureNames, CaptureSql

_EVENTS = {"I": ("INSERT", "NEW TABLE AS am_new", ["am_new"]),
           "U": ("UPDATE", "OLD TABLE AS am_old NEW TABLE AS am_new", ["am_old", "am_new"]),
           "D": ("DELETE", "OLD TABLE AS am_old", ["am_old"])}


class PgCaptureSql(CaptureSql):
    def _function(self, names: CaptureNames, suffix: str) -> str:
        prefix = f"{names.schema}." if names.schema else ""
        return self.d.ident(f"{prefix}{names.trigger}_{suffix}")

    def install(self, conn: Connection, names: CaptureNames) -> None:
        d, chg, table = self.d, self.d.ident(names.change_table), self.d.ident(names.table)
        kcols = self.change_columns(names)
        typed = ", ".join(f"{c} {t}" for c, t in zip(kcols, self.key_types(conn, names), strict=True))
        conn.exec_driver_sql(f"CREATE TABLE {chg} (seq bigserial PRIMARY KEY, op char(1) NOT NULL, "
                             f"captured_at timestamptz NOT NULL DEFAULT clock_timestamp(), {typed})")
        keys = ", ".join(d.ident(k) for k in names.key)
        for op, (event, referencing, sources) in _EVENTS.items():
            rows = " UNION ".join(f"SELECT {keys} FROM {s}" for s in sources)
            fn = self._function(names, op.lower())
            conn.exec_driver_sql(
                f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $am$ BEGIN "
                f"INSERT INTO {chg} (op, {', '.join(kcols)}) SELECT '{op}', {keys} FROM ({rows}) AS changed; "
                f"RETURN NULL; END $am$")
            conn.exec_driver_sql(f"CREATE TRIGGER {d.ident(f'{names.trigger}_{op.lower()}')} AFTER {event} ON {table} "
                                 f"REFERENCING {referencing} FOR EACH STATEMENT EXECUTE FUNCTION {fn}()")
        fn = self._function(names, "t")
        message = (f"{names.table} is under change capture (dual_write): TRUNCATE would lose the capture of its "
                   f"deletes; DELETE the rows instead, or roll the migration back first").replace("'", "''")
        conn.exec_driver_sql(f"CREATE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $am$ BEGIN "
                             f"RAISE EXCEPTION '{message}'; END $am$")
        conn.exec_driver_sql(f"CREATE TRIGGER {d.ident(f'{names.trigger}_t')} BEFORE TRUNCATE ON {table} "
                             f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()")

    def drop(self, conn: Connection, names: CaptureNames) -> None:
        for suffix in ("i", "u", "d", "t"):
            conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {self._function(names, suffix)}() CASCADE")
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {self.d.ident(names.change_table)}")

    def triggers_exist(self, conn: Connection, names: CaptureNames) -> bool:
        found = conn.exec_driver_sql(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = to_regclass(%(t)s) AND tgname LIKE %(n)s",
            {"t": self.d.ident(names.table), "n": names.trigger + "%%"}).scalar()
        return bool(found)

    def lag(self, conn: Connection, names: CaptureNames) -> tuple[int, float]:
        count, age = conn.exec_driver_sql(
            f"SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(captured_at)), 0) "
            f"FROM {self.d.ident(names.change_table)}").one()
        return int(count), float(age)

    def guard_writes(self, conn: Connection, names: CaptureNames, on: bool, message: str | None = None) -> None:
        fn, trigger = self._function(names, "ro"), self.d.ident(names.guard)
        if not on:
            conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {fn}() CASCADE")
            return
        message = self.guard_message(names, message)
        conn.exec_driver_sql(f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $am$ BEGIN "
                             f"RAISE EXCEPTION '{message}'; END $am$")
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger} ON {self.d.ident(names.table)}")
        conn.exec_driver_sql(f"CREATE TRIGGER {trigger} BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON "
                             f"{self.d.ident(names.table)} FOR EACH STATEMENT EXECUTE FUNCTION {fn}()")

    def view_sql(self, conn: Connection, view: str) -> str:
        definition = conn.exec_driver_sql("SELECT pg_get_viewdef(to_regclass(%(v)s), true)",
                                          {"v": self.d.ident(view)}).scalar()
        if definition is None:
            raise LookupError(f"view '{view}' does not exist")
        return f"CREATE VIEW {self.d.ident(view)} AS {definition.strip().rstrip(';')}"

    def revoke_writes(self, conn: Connection, table: str, roles: list[str], grant_back: bool) -> None:
        verb, word = ("GRANT", "TO") if grant_back else ("REVOKE", "FROM")
        for role in roles:
            conn.exec_driver_sql(f"{verb} INSERT, UPDATE, DELETE ON {self.d.ident(table)} {word} "
                                 f"{self.d.ident(role)}")
