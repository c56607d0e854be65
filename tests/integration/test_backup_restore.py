"""Backup, then damage the live tables, then restore_backup: the tables are as they were (schema and data of
every application table, by the `fingerprint` fixture, and every manifest table by compare_backup), for every
strategy on every dialect it supports.

Damage covered: changed, deleted and inserted rows (NULLs, unicode, numeric, timestamps, JSON, binary), a
dropped or added column, a dropped or added index, a dropped table, a table the manifest says is absent.
Also: tables without a primary key, foreign keys from tables outside the backup (and ON DELETE CASCADE),
PostgreSQL serial sequences, identity and generated columns, restoring when nothing differs, and restoring
from a copy that was pruned or deleted.
"""

from __future__ import annotations

import os

import pytest
from backup_it_support import (
    STRATEGY_CASES,
    open_target,
    seed_customers_orders,
    seed_other,
    seed_users,
    target_of,
)
from sqlalchemy import exc as sa_exc

from airflow_migrate_provider.core.backup.catalog import BackupCatalog
from airflow_migrate_provider.core.backup.restore import compare_backup, restore_backup
from airflow_migrate_provider.core.backup.strategies import strategy_named
from airflow_migrate_provider.errors import RestoreFailed

CREATES_AUDIT = "UPDATE users SET theme = 'light'; CREATE TABLE audit (id INTEGER PRIMARY KEY)"


@pytest.fixture(params=STRATEGY_CASES)
def target(request, tmp_path):
    with target_of(request, tmp_path) as t:
        yield t


@pytest.fixture(params=["snapshot", "pg_dump"])
def pg_target(request, pg_database, tmp_path):
    t = open_target(pg_database, request.param, tmp_path / "backups")
    yield t
    t.engine.dispose()


def blob(t, hex_digits: str) -> str:
    return f"'\\x{hex_digits}'::bytea" if t.pg else f"x'{hex_digits}'"


def actions(report) -> dict[str, str]:
    return {s.table: s.action for s in report.tables}


def assert_as_backed_up(t, backup, fingerprint, before) -> None:
    assert fingerprint(t.db) == before
    states = compare_backup(t.engine, backup)
    assert [s.table for s in states if not s.equal] == []


def test_restore_puts_back_changed_deleted_and_inserted_rows(target, fingerprint):
    t = target
    seed_users(t)
    seed_other(t)
    before = fingerprint(t.db)
    b = t.backup(CREATES_AUDIT)

    t.sql(f"UPDATE users SET prefs = '{{\"a\": 2, \"b\": [1, 2]}}', avatar = {blob(t, '00ff11')}, balance = 1.51, "
          "email = 'ann@y' WHERE id = 1",
          "UPDATE users SET theme = 'was null' WHERE id = 2",  # NULL → a value
          "UPDATE users SET theme = NULL, seen = NULL WHERE id = 3",  # values → NULL
          "INSERT INTO users (id, email, theme) VALUES (4, 'new@x', 'ünï')",
          "DELETE FROM users WHERE id = 2",
          "CREATE TABLE audit (id INTEGER PRIMARY KEY)",
          "INSERT INTO audit VALUES (1)")
    damaged = {s.table: s for s in compare_backup(t.engine, b)}
    assert (damaged["users"].equal, damaged["users"].structure_equal) == (False, True)
    assert (damaged["audit"].equal, damaged["audit"].actual) == (False, "exists")

    report = restore_backup(t.engine, b)

    assert actions(report) == {"users": "synchronised", "audit": "dropped"}
    assert report.all_equal and sorted(report.restored) == ["audit", "users"]
    assert_as_backed_up(t, b, fingerprint, before)
    assert t.rows("SELECT email, theme FROM users WHERE id = 3") == [("zoë@x", "ünïcødé ✓ 漢字")]


def test_restore_puts_back_a_single_changed_value_of_each_type(target, fingerprint):
    """Each column on its own: a restore that compared rows loosely would miss one of these."""
    t = target
    seed_users(t)
    before = fingerprint(t.db)
    b = t.backup("UPDATE users SET theme = 'light'")
    changes = [
        "UPDATE users SET balance = 1.49 WHERE id = 1",
        f"UPDATE users SET avatar = {blob(t, '00ff1000')} WHERE id = 1",
        "UPDATE users SET prefs = '{\"nested\": {\"k\": 0}}' WHERE id = 3",
        "UPDATE users SET theme = 'ünïcødé ✓ 漢' WHERE id = 3",
        "UPDATE users SET seen = '2024-12-31 23:59:59.123457' WHERE id = 3",
        f"UPDATE users SET avatar = {blob(t, '')} WHERE id = 2",  # NULL → empty
    ]
    for change in changes:
        t.sql(change)
        assert [s.equal for s in compare_backup(t.engine, b)] == [False], change
        assert actions(restore_backup(t.engine, b)) == {"users": "synchronised"}, change
        assert_as_backed_up(t, b, fingerprint, before)


DEFINITION_CHANGES = {
    "drop_column": ["ALTER TABLE users DROP COLUMN theme"],
    "add_column": ["ALTER TABLE users ADD COLUMN extra INTEGER DEFAULT 7"],
    "drop_index": ["DROP INDEX users_seen"],
    "add_index": ["CREATE INDEX users_theme ON users (theme)"],
    "drop_table": ["DROP TABLE users"],
    "drop_and_recreate_differently": ["DROP TABLE users", "CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)",
                                      "INSERT INTO users VALUES (1, 'other')"],
}


@pytest.mark.parametrize("change", list(DEFINITION_CHANGES))
def test_restore_rebuilds_a_table_whose_definition_changed(target, fingerprint, change):
    t = target
    seed_users(t)
    seed_other(t)
    before = fingerprint(t.db)
    b = t.backup("UPDATE users SET theme = 'light'")
    changes = DEFINITION_CHANGES[change]
    if t.mariadb:  # MariaDB names the table of the index it drops
        changes = [f"{c} ON users" if c.startswith("DROP INDEX") else c for c in changes]
    t.sql("UPDATE users SET email = 'changed@x' WHERE id = 1", *changes)
    assert [s.structure_equal for s in compare_backup(t.engine, b)] == [False]

    report = restore_backup(t.engine, b)

    assert actions(report) == {"users": "rebuilt"}
    assert_as_backed_up(t, b, fingerprint, before)
    # the rebuilt table works like the old one: keys go on from the restored rows, the unique email holds
    with t.engine.begin() as conn:
        new_id = conn.exec_driver_sql("INSERT INTO users (email) VALUES ('next@x') RETURNING id").scalar()
    assert new_id == 4
    with pytest.raises(sa_exc.IntegrityError), t.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO users (email) VALUES ('ann@x')")
    if t.pg:  # the serial sequence belongs to the column again: dropping the table drops it
        assert t.scalar("SELECT pg_get_serial_sequence('users', 'id')") == "public.users_id_seq"


def test_restore_table_without_primary_key_keeps_duplicate_rows(target, fingerprint):
    t = target
    t.sql("CREATE TABLE events (kind VARCHAR(10), n INTEGER)",
          "INSERT INTO events VALUES ('a', 1), ('a', 1), ('b', NULL), ('c', 3)")
    before = fingerprint(t.db)
    b = t.backup("INSERT INTO events VALUES ('d', 4)")

    t.sql("DELETE FROM events WHERE kind = 'b'", "UPDATE events SET n = 2 WHERE kind = 'a'",
          "INSERT INTO events VALUES ('c', 3), ('e', 5)")
    assert actions(restore_backup(t.engine, b)) == {"events": "synchronised"}
    assert_as_backed_up(t, b, fingerprint, before)
    assert t.scalar("SELECT count(*) FROM events WHERE kind = 'a' AND n = 1") == 2

    t.sql("ALTER TABLE events ADD COLUMN z INTEGER", "DELETE FROM events WHERE kind = 'c'")
    assert actions(restore_backup(t.engine, b)) == {"events": "rebuilt"}
    assert_as_backed_up(t, b, fingerprint, before)


def test_rebuild_keeps_the_foreign_keys_of_tables_outside_the_backup(target, fingerprint):
    """orders (not backed up) references customers (rebuilt): the key is there again afterwards, still with
    its ON DELETE CASCADE, and the rebuild deleted none of the orders."""
    t = target
    seed_customers_orders(t)
    before = fingerprint(t.db)
    b = t.backup("UPDATE customers SET name = upper(name)")
    assert [m.table for m in b.tables] == ["customers"]

    t.sql("UPDATE customers SET name = upper(name)", "ALTER TABLE customers ADD COLUMN vip INTEGER")
    assert actions(restore_backup(t.engine, b)) == {"customers": "rebuilt"}

    assert_as_backed_up(t, b, fingerprint, before)  # the orders and their foreign key included
    with pytest.raises(sa_exc.IntegrityError), t.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO orders VALUES (99, 42, 1)")  # no customer 42: the key is enforced
    t.sql("DELETE FROM customers WHERE id = 1")
    assert t.rows("SELECT id FROM orders ORDER BY id") == [(12,), (13,)]  # and cascades


def test_synchronising_rows_leaves_the_children_of_kept_rows_alone(target, fingerprint):
    """Rows the backup has are updated in place, never deleted and re-inserted: the ON DELETE CASCADE of
    orders (not backed up) must not fire for them."""
    t = target
    seed_customers_orders(t)
    before = fingerprint(t.db)
    b = t.backup("UPDATE customers SET name = upper(name)")

    t.sql("UPDATE customers SET name = upper(name)", "INSERT INTO customers VALUES (4, 'dan')")
    assert actions(restore_backup(t.engine, b)) == {"customers": "synchronised"}

    assert_as_backed_up(t, b, fingerprint, before)
    assert t.scalar("SELECT count(*) FROM orders") == 4


def test_restore_that_would_break_a_foreign_key_is_rolled_back(target, fingerprint):
    """An order (not backed up) placed for a customer the backup does not have: the restore cannot drop that
    customer without breaking the order's key, so it fails and changes nothing."""
    t = target
    seed_customers_orders(t, on_delete="NO ACTION")
    b = t.backup("UPDATE customers SET name = upper(name)")
    t.sql("ALTER TABLE customers ADD COLUMN vip INTEGER", "INSERT INTO customers (id, name) VALUES (4, 'dan')",
          "INSERT INTO orders VALUES (14, 4, 140)", "UPDATE customers SET name = 'ANN' WHERE id = 1")
    damaged = fingerprint(t.db)

    with pytest.raises(RestoreFailed, match="rolled back"):
        restore_backup(t.engine, b)

    assert fingerprint(t.db) == damaged
    assert t.snapshot_tables() == ([b.tables[0].stored_as] if t.strategy == "snapshot" else [])


def test_restore_never_cascades_into_a_table_outside_the_backup(target, fingerprint):
    """A customer the backup lacks has an order (not backed up): deleting the customer would delete or
    change that order through ON DELETE, data no backup covers. The restore refuses and changes nothing."""
    t = target
    seed_customers_orders(t, on_delete="CASCADE")
    b = t.backup("UPDATE customers SET name = upper(name)")
    t.sql("INSERT INTO customers (id, name) VALUES (4, 'dan')", "INSERT INTO orders VALUES (14, 4, 140)",
          "UPDATE customers SET name = 'ANN' WHERE id = 1")
    damaged = fingerprint(t.db)

    with pytest.raises(RestoreFailed, match=r"nothing changed|rolled back"):
        restore_backup(t.engine, b)

    assert fingerprint(t.db) == damaged
    assert t.scalar("SELECT count(*) FROM orders WHERE id = 14") == 1


def test_restore_when_nothing_differs_changes_nothing(target, fingerprint):
    t = target
    seed_users(t)
    seed_customers_orders(t)
    before = fingerprint(t.db)
    b = t.backup("UPDATE users SET theme = 'x'; UPDATE customers SET name = 'x'; CREATE TABLE audit (id INTEGER)")
    row_versions = t.rows("SELECT id, xmin::text FROM users ORDER BY id") if t.pg else None

    for _ in range(2):
        report = restore_backup(t.engine, b)
        assert actions(report) == {"users": "unchanged", "customers": "unchanged", "audit": "unchanged"}
        assert report.restored == [] and report.all_equal

    assert_as_backed_up(t, b, fingerprint, before)
    if t.pg:  # not even rewritten with the same values
        assert t.rows("SELECT id, xmin::text FROM users ORDER BY id") == row_versions


def test_restore_only_the_tables_asked_for(target, fingerprint):
    t = target
    seed_users(t)
    b = t.backup(CREATES_AUDIT)
    t.sql("UPDATE users SET theme = 'light'", "CREATE TABLE audit (id INTEGER PRIMARY KEY)")

    with pytest.raises(RestoreFailed, match="audit"):  # audit was left as it is, so it still differs
        restore_backup(t.engine, b, only=["users"])

    assert "audit" in t.tables()
    assert t.scalar("SELECT count(*) FROM users WHERE theme = 'light'") == 0  # users was restored
    assert actions(restore_backup(t.engine, b, only=["audit"])) == {"users": "unchanged", "audit": "dropped"}


def remove_copy(t, backup) -> None:
    if t.strategy == "snapshot":
        t.sql(*(f"DROP TABLE {m.stored_as}" for m in backup.tables if m.present))
    else:
        os.remove(backup.location)


def test_restore_from_a_pruned_backup_fails_clearly(target, fingerprint):
    t = target
    seed_users(t)
    b = t.backup(CREATES_AUDIT)
    strategy_named(b.strategy, None).drop(t.engine, b)
    catalog = BackupCatalog(t.engine, b.plan_id)
    catalog.mark_pruned(b.id)
    t.sql("DELETE FROM users")
    damaged = fingerprint(t.db)

    with pytest.raises(RestoreFailed, match=rf"backup {b.id} is pruned, not verified: it cannot be restored"):
        restore_backup(t.engine, catalog.get(b.id))

    assert fingerprint(t.db) == damaged
    assert t.snapshot_tables() == [] and t.files() == []


def test_restore_when_the_copy_is_gone_fails_clearly(target, fingerprint):
    t = target
    seed_users(t)
    b = t.backup(CREATES_AUDIT)
    remove_copy(t, b)
    t.sql("DELETE FROM users WHERE id = 1", "CREATE TABLE audit (id INTEGER PRIMARY KEY)")
    damaged = fingerprint(t.db)

    with pytest.raises(RestoreFailed) as failed:
        restore_backup(t.engine, b)

    message = str(failed.value)
    assert f"the copy of backup {b.id} is gone" in message
    assert "pruned or deleted" in message and b.location in message
    assert fingerprint(t.db) == damaged  # not even the table the manifest says is absent was dropped


# -- PostgreSQL only --------------------------------------------------------------------------------------
def test_pg_identity_and_generated_columns_survive_sync_and_rebuild(pg_target, fingerprint):
    t = pg_target
    t.sql("CREATE TABLE items (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, price numeric(10,2) NOT NULL, "
          "qty integer NOT NULL, total numeric GENERATED ALWAYS AS (price * qty) STORED, "
          "at timestamptz DEFAULT '2024-01-01 00:00:00+00')",
          "INSERT INTO items (price, qty) VALUES (1.25, 2), (10.00, 1), (0.10, 30)")
    before = fingerprint(t.db)
    b = t.backup("UPDATE items SET qty = qty + 1")
    assert [c.name for c in b.tables[0].table_definition.columns if c.generated] == ["total"]

    t.sql("UPDATE items SET qty = qty + 1", "DELETE FROM items WHERE id = 2",
          "INSERT INTO items (price, qty) VALUES (5, 5)")
    assert actions(restore_backup(t.engine, b)) == {"items": "synchronised"}
    assert_as_backed_up(t, b, fingerprint, before)

    t.sql("ALTER TABLE items ADD COLUMN note text", "DELETE FROM items WHERE id = 3")
    assert actions(restore_backup(t.engine, b)) == {"items": "rebuilt"}
    assert_as_backed_up(t, b, fingerprint, before)
    kinds = t.rows("SELECT attname, attidentity, attgenerated FROM pg_attribute WHERE attrelid = 'items'::regclass "
                   "AND attname IN ('id', 'total') ORDER BY attname")
    assert kinds == [("id", "a", ""), ("total", "", "s")]
    assert t.rows("SELECT id, total FROM items ORDER BY id") == t.rows("SELECT id, price * qty FROM items ORDER BY id")
    # the identity goes on after the restored keys instead of colliding with them
    with t.engine.begin() as conn:
        row = conn.exec_driver_sql("INSERT INTO items (price, qty) VALUES (2, 3) RETURNING id, total").one()
    assert tuple(row) == (5, 6)


def test_pg_serial_sequence_keeps_its_value_and_owner(pg_target, fingerprint):
    t = pg_target
    t.sql("CREATE TABLE tickets (id serial PRIMARY KEY, title text)",
          "INSERT INTO tickets (title) SELECT 'ticket ' || n FROM generate_series(1, 10) AS n",
          "DELETE FROM tickets WHERE id > 3")  # the sequence is at 10, the highest key 3
    before = fingerprint(t.db)
    b = t.backup("UPDATE tickets SET title = upper(title)")

    t.sql("ALTER TABLE tickets ADD COLUMN done boolean")
    assert actions(restore_backup(t.engine, b)) == {"tickets": "rebuilt"}
    assert_as_backed_up(t, b, fingerprint, before)
    assert t.scalar("SELECT pg_get_serial_sequence('tickets', 'id')") == "public.tickets_id_seq"
    assert t.scalar("SELECT last_value FROM tickets_id_seq") == 10  # not reset: no key is handed out twice

    t.sql("DROP TABLE tickets")  # drops the sequence it owns, too
    assert actions(restore_backup(t.engine, b)) == {"tickets": "rebuilt"}
    assert_as_backed_up(t, b, fingerprint, before)
    assert t.scalar("SELECT pg_get_serial_sequence('tickets', 'id')") == "public.tickets_id_seq"
    assert t.scalar("SELECT data_type FROM information_schema.sequences WHERE sequence_name = 'tickets_id_seq'") \
        == "integer"
    with t.engine.begin() as conn:
        assert conn.exec_driver_sql("INSERT INTO tickets (title) VALUES ('next') RETURNING id").scalar() == 4


def test_pg_quoted_names_in_another_schema(pg_target):
    t = pg_target
    t.sql('CREATE SCHEMA "App"', 'CREATE TABLE "App"."Accounts" ("Id" integer PRIMARY KEY, "Owner" text, '
          'balance numeric(10,2))',
          'INSERT INTO "App"."Accounts" VALUES (1, \'ann\', 10.50), (2, \'bob\', NULL)')
    rows = 'SELECT * FROM "App"."Accounts" ORDER BY "Id"'
    before = t.rows(rows)
    b = t.backup('UPDATE "App"."Accounts" SET balance = 0')
    assert [(m.table, m.present, m.rows) for m in b.tables] == [("App.Accounts", True, 2)]

    t.sql('UPDATE "App"."Accounts" SET balance = 0', 'INSERT INTO "App"."Accounts" VALUES (3, \'cy\', 1)')
    assert actions(restore_backup(t.engine, b)) == {"App.Accounts": "synchronised"}
    assert t.rows(rows) == before

    t.sql('ALTER TABLE "App"."Accounts" DROP COLUMN "Owner"')
    assert actions(restore_backup(t.engine, b)) == {"App.Accounts": "rebuilt"}
    assert t.rows(rows) == before
    assert all(s.equal for s in compare_backup(t.engine, b))
