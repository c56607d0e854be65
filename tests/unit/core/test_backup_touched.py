"""touched_tables: which tables a plan writes (what ``backup.tables: auto`` backs up), read from each schema
step's ``up`` SQL and each backfill's target; anything it cannot analyse is refused, never skipped."""

from __future__ import annotations

import pytest

from airflow_migrate_provider.core.backup.make import backup_tables
from airflow_migrate_provider.core.backup.touched import touched_tables
from airflow_migrate_provider.errors import BackupFailed
from airflow_migrate_provider.plan.model import Plan


def schema_step(step_id: str, up: str | list[str]) -> dict:
    return {"id": step_id, "up": up, "down": "SELECT 1", "verify": "SELECT 1"}


def plan_of(*steps: dict, backup: dict | None = None) -> Plan:
    doc = {"id": "p", "connections": {"target": "app_db", "source": "src_db"}, "steps": list(steps)}
    if backup is not None:
        doc["backup"] = backup
    return Plan.model_validate(doc)


def written(up: str | list[str], dialect: str = "postgresql") -> dict[str, str]:
    return touched_tables(plan_of(schema_step("s1", up)), dialect).tables


@pytest.mark.parametrize(("up", "tables"), [
    ("CREATE TABLE audit (id INTEGER PRIMARY KEY)", ["audit"]),
    ("CREATE TABLE IF NOT EXISTS audit AS SELECT * FROM users", ["audit"]),
    ("CREATE INDEX ix_users_email ON users (email)", ["users"]),
    ("CREATE UNIQUE INDEX CONCURRENTLY ix ON app.users (email)", ["app.users"]),
    ("INSERT INTO users (id) VALUES (1)", ["users"]),
    ("INSERT INTO users (id) SELECT id FROM old_users", ["users"]),
    ("UPDATE users SET theme = 'x' WHERE id IN (SELECT user_id FROM orders)", ["users"]),
    ("DELETE FROM users WHERE id = 1", ["users"]),
    ("WITH gone AS (SELECT 1) DELETE FROM users", ["users"]),
    ("MERGE INTO users u USING staged s ON u.id = s.id WHEN MATCHED THEN UPDATE SET theme = s.theme",
     ["users"]),
    ("ALTER TABLE users ADD COLUMN theme TEXT", ["users"]),
    ("ALTER TABLE users RENAME COLUMN theme TO colour", ["users"]),
    ("ALTER TABLE users RENAME TO customers", ["users", "customers"]),
    ("ALTER TABLE app.users RENAME TO customers", ["app.users", "app.customers"]),
    ("TRUNCATE users", ["users"]),
    ("TRUNCATE TABLE users, orders", ["users", "orders"]),
    ("DROP TABLE legacy", ["legacy"]),
    ("DROP TABLE IF EXISTS legacy, app.older CASCADE", ["legacy", "app.older"]),
    ("UPDATE Users SET theme = 'x'", ["users"]),  # unquoted names are lower case on PostgreSQL
    ('UPDATE "Users" SET theme = \'x\'', ["Users"]),
])
def test_statements_that_write_a_table(up, tables):
    assert list(written(up)) == tables


@pytest.mark.parametrize("up", [
    "SELECT count(*) FROM users",
    "CREATE VIEW active_users AS SELECT * FROM users",
    "DROP VIEW active_users",
    "DROP INDEX ix_users_email",
    "CREATE SEQUENCE ticket_no",
    "ALTER INDEX ix_users_email RENAME TO ix_users_mail",
    "ALTER VIEW active_users RENAME TO current_users",
    "COMMENT ON TABLE users IS 'people'",
    "GRANT SELECT ON users TO reporting",
])
def test_statements_that_write_no_table_data(up):
    assert written(up) == {}


@pytest.mark.parametrize(("up", "dialect", "tables"), [
    ("INSERT OR REPLACE INTO users (id) VALUES (1)", "sqlite", ["users"]),
    ("ALTER TABLE users RENAME TO customers", "sqlite", ["users", "customers"]),
    ("DROP TABLE legacy", "sqlite", ["legacy"]),
])
def test_sqlite_statements(up, dialect, tables):
    assert list(written(up, dialect)) == tables


def test_tables_in_the_order_first_written_with_the_step_that_does():
    plan = plan_of(
        schema_step("add_theme", ["ALTER TABLE users ADD COLUMN theme TEXT",
                                  "UPDATE users SET theme = 'dark'; INSERT INTO audit (msg) VALUES ('themed')"]),
        schema_step("check", "SELECT count(*) FROM users"),
        schema_step("more", "UPDATE audit SET msg = upper(msg); CREATE INDEX ix_orders ON orders (user_id)"),
    )
    assert touched_tables(plan, "postgresql").tables == {"users": "add_theme", "audit": "add_theme",
                                                         "orders": "more"}


def test_backfill_target_is_written_and_its_source_is_not():
    plan = plan_of(
        schema_step("create_v2", "CREATE TABLE users_v2 (id INTEGER PRIMARY KEY, name TEXT)"),
        {"kind": "backfill", "id": "copy", "source": {"table": "users"}, "target": "users_v2", "key": "id",
         "append_only": True},
        {"kind": "backfill", "id": "copy_orders", "source": {"table": "orders"}, "target": "app.orders_v2",
         "key": "id", "append_only": True},
    )
    assert touched_tables(plan, "postgresql").tables == {"users_v2": "create_v2", "app.orders_v2": "copy_orders"}


def test_read_only_steps_write_nothing():
    plan = plan_of(
        schema_step("touch", "UPDATE users SET theme = 'x'"),
        {"kind": "verify", "id": "compare", "source": {"table": "users"}, "target": {"table": "users_copy"},
         "checks": ["row_counts"]},
        {"kind": "health_gate", "id": "watch", "metrics": [{"name": "error_rate", "sql": "DELETE FROM users"}]},
    )
    assert touched_tables(plan, "postgresql").tables == {"users": "touch"}


def test_the_engines_own_tables_are_never_backed_up():
    up = ("INSERT INTO airflow_migrate_history (id) VALUES (1); UPDATE AIRFLOW_MIGRATE_LOCK SET x = 1; "
          "DROP TABLE airflow_migrate_bak_20260101t000000_abc123_0; UPDATE app.airflow_migrate_backups SET x = 1; "
          "UPDATE users SET theme = 'x'")
    assert written(up) == {"users": "s1"}


@pytest.mark.parametrize(("up", "shown"), [
    ("DO $$ BEGIN UPDATE users SET theme = 'x'; END $$", "DO $$ BEGIN UPDATE users"),
    ("COPY users FROM STDIN", "COPY users FROM"),
    ("CALL refresh_users()", "CALL refresh_users()"),
    ("CREATE TABLE (", "CREATE TABLE ("),
])
def test_statements_whose_table_cannot_be_told_are_refused(up, shown):
    plan = plan_of(schema_step("s1", "UPDATE users SET theme = 'x'"), schema_step("mystery", up))

    with pytest.raises(BackupFailed) as failed:
        touched_tables(plan, "postgresql")

    message = str(failed.value)
    assert "backup.tables is `auto` but step 'mystery' has a statement whose written table cannot be told" in message
    assert shown in message
    assert "List the tables to back up in the plan's `backup.tables`" in message


def test_explicit_tables_skip_the_analysis():
    up = "DO $$ BEGIN UPDATE users SET theme = 'x'; END $$"
    explicit = plan_of(schema_step("s1", up), backup={"strategy": "snapshot", "tables": ["users", "app.orders"]})
    auto = plan_of(schema_step("s1", up), backup={"strategy": "snapshot"})

    assert backup_tables(explicit, "postgresql") == ["users", "app.orders"]
    with pytest.raises(BackupFailed, match="cannot be told"):
        backup_tables(auto, "postgresql")
