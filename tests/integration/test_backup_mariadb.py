"""MariaDB specifics of backups and restores: AUTO_INCREMENT goes on past restored rows and past values handed out
before; DDL commits on its own there, so a restore that fails at any point before its swap leaves every table as it
was (and no staging table behind); mariadb_dump round trips awkward values; the password reaches mariadb-dump only
through a private option file, never its command line or environment."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from pathlib import Path

import pytest
from backup_it_support import open_target
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from airflow_migrate_provider.core.backup import staged_restore, strategy
from airflow_migrate_provider.core.backup.restore import compare_backup, restore_backup
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.errors import RestoreFailed

pytestmark = pytest.mark.timeout(180)
STRATEGIES = [pytest.param("snapshot", id="mariadb-snapshot"), pytest.param("mariadb_dump", id="mariadb-mariadb_dump")]


@pytest.fixture(params=STRATEGIES)
def target(request, mariadb_database, tmp_path):
    t = open_target(mariadb_database, request.param, tmp_path / "backups")
    yield t
    t.engine.dispose()


def next_id(t, table: str = "tickets") -> int:
    with t.engine.begin() as conn:
        return conn.exec_driver_sql(f"INSERT INTO {table} (title) VALUES ('next') RETURNING id").scalar()


def leftovers(t) -> list[str]:
    """Staging and parked tables a restore left behind."""
    return [n for n in t.tables() if n.startswith((staged_restore.STAGE_PREFIX, staged_restore.PARK_PREFIX))]


def seed_tickets(t) -> None:
    """tickets 1..3 kept, 4..10 handed out and deleted: the counter is at 11, the highest key 3."""
    t.sql("CREATE TABLE tickets (id INT AUTO_INCREMENT PRIMARY KEY, title VARCHAR(40) NOT NULL, "
          "KEY tickets_title (title))",
          *(f"INSERT INTO tickets (title) VALUES ('ticket {n}')" for n in range(1, 11)),
          "DELETE FROM tickets WHERE id > 3")


# -- AUTO_INCREMENT ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("change", ["sync", "rebuild"])
def test_auto_increment_continues_past_restored_rows_and_handed_out_values(target, fingerprint, change):
    t = target
    seed_tickets(t)
    before = fingerprint(t.db)
    b = t.backup("UPDATE tickets SET title = upper(title)")
    assert "AUTO_INCREMENT=" not in b.tables[0].table_definition.create[0]  # not part of the definition
    assert next_id(t) == 11 and next_id(t) == 12  # the run hands out 11 and 12; the restore removes them
    if change == "rebuild":
        t.sql("ALTER TABLE tickets ADD COLUMN done BOOLEAN")

    report = restore_backup(t.engine, b)

    assert [s.action for s in report.tables] == ["synchronised" if change == "sync" else "rebuilt"]
    assert fingerprint(t.db) == before
    assert next_id(t) == 13  # neither a restored key nor one handed out before


def test_auto_increment_of_a_dropped_table_continues_past_the_restored_rows(target, fingerprint):
    t = target
    seed_tickets(t)
    before = fingerprint(t.db)
    b = t.backup("UPDATE tickets SET title = upper(title)")
    t.sql("DROP TABLE tickets")

    assert [s.action for s in restore_backup(t.engine, b).tables] == ["rebuilt"]

    assert fingerprint(t.db) == before
    assert next_id(t) == 4


def test_generated_columns_and_triggers_survive_a_rebuild(target, fingerprint):
    t = target
    t.sql("CREATE TABLE items (id INT AUTO_INCREMENT PRIMARY KEY, price DECIMAL(10,2) NOT NULL, qty INT NOT NULL, "
          "total DECIMAL(12,2) AS (price * qty) STORED, label VARCHAR(20) AS (CONCAT('x', qty)) VIRTUAL, "
          "stamp VARCHAR(10))",
          "CREATE TRIGGER items_stamp BEFORE INSERT ON items FOR EACH ROW SET NEW.stamp = 'trg'",
          "INSERT INTO items (price, qty) VALUES (1.25, 2), (10.00, 1)")
    before = fingerprint(t.db)
    b = t.backup("UPDATE items SET qty = qty + 1")
    assert [c.name for c in b.tables[0].table_definition.columns if c.generated] == ["total", "label"]

    t.sql("DROP TRIGGER items_stamp", "ALTER TABLE items DROP COLUMN label", "UPDATE items SET qty = 7")
    assert [s.action for s in restore_backup(t.engine, b).tables] == ["rebuilt"]

    assert fingerprint(t.db) == before
    assert all(s.equal for s in compare_backup(t.engine, b))
    with t.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO items (price, qty) VALUES (2, 3)")
    assert t.rows("SELECT id, total, label, stamp FROM items WHERE id = 3") == [(3, 6, "x3", "trg")]


# -- a restore that fails midway ------------------------------------------------------------------------
def seed_parent_child(t) -> None:
    """customers and its orders, both backed up; audit created by the run."""
    t.sql("CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(40) NOT NULL)",
          "INSERT INTO customers VALUES (1, 'ann'), (2, 'bob'), (3, 'cy')",
          "CREATE TABLE orders (id INT PRIMARY KEY, customer_id INT NOT NULL, amount INT, "
          "CONSTRAINT orders_customer FOREIGN KEY (customer_id) REFERENCES customers (id))",
          "INSERT INTO orders VALUES (10, 1, 100), (11, 2, 110), (12, 3, 120)")


def damage(t) -> None:
    """customers rebuilt (a column added), orders synchronised, audit dropped."""
    t.sql("ALTER TABLE customers ADD COLUMN vip INT", "UPDATE customers SET name = 'ANN' WHERE id = 1",
          "UPDATE orders SET amount = 0", "CREATE TABLE audit (id INT PRIMARY KEY)")


def fail_at(monkeypatch, where: str) -> None:
    def boom(*args, **kwargs):
        raise RestoreFailed(f"injected failure in {where}")

    if where == "staging the second table":  # customers is staged (a table made), then orders fails
        real = staged_restore._retarget

        def second(ddl, qt, other):
            if qt != other and "orders" in qt:
                boom()
            return real(ddl, qt, other)

        monkeypatch.setattr(staged_restore, "_retarget", second)
    else:
        monkeypatch.setattr(staged_restore, where, boom)


@pytest.mark.parametrize("where", ["staging the second table", "_check_foreign_keys", "_check_staged",
                                   "_check_synchronised"])
def test_a_restore_failing_before_its_swap_leaves_every_table_as_it_was(target, fingerprint, monkeypatch, where):
    t = target
    seed_parent_child(t)
    b = t.backup("UPDATE customers SET name = upper(name); UPDATE orders SET amount = 1; "
                 "CREATE TABLE audit (id INT PRIMARY KEY)")
    damage(t)
    if where == "staging the second table":
        t.sql("ALTER TABLE orders ADD COLUMN note TEXT")  # orders is rebuilt too, after customers
    damaged = fingerprint(t.db)
    fail_at(monkeypatch, where)

    with pytest.raises(RestoreFailed, match="injected failure"):
        restore_backup(t.engine, b)

    assert fingerprint(t.db) == damaged
    assert leftovers(t) == []
    monkeypatch.undo()  # and the next restore completes
    restore_backup(t.engine, b)
    assert all(s.equal for s in compare_backup(t.engine, b))
    assert leftovers(t) == []


def test_a_swap_that_fails_changes_no_table_definition(target, fingerprint, monkeypatch):
    """The rename is one statement: it happens for every table or for none."""
    t = target
    seed_parent_child(t)
    b = t.backup("UPDATE customers SET name = upper(name); CREATE TABLE audit (id INT PRIMARY KEY)")
    t.sql("ALTER TABLE customers ADD COLUMN vip INT", "CREATE TABLE audit (id INT PRIMARY KEY)")
    damaged = fingerprint(t.db)

    def rename_then_fail(self, conn, renames):  # the last rename of the statement fails: none happens
        conn.exec_driver_sql("RENAME TABLE " + ", ".join(f"{o} TO {n}" for o, n in renames)
                             + ", no_such_table TO still_none")

    monkeypatch.setattr(type(t.dialect), "rename_tables", rename_then_fail)
    with pytest.raises(RestoreFailed, match="swapping the restored tables in failed"):
        restore_backup(t.engine, b)

    assert fingerprint(t.db) == damaged
    assert leftovers(t) == []


def test_restore_left_behind_by_a_dead_restore_is_cleaned_up(target, fingerprint):
    """A restore killed after staging leaves its staging table; the next restore replaces it."""
    t = target
    seed_tickets(t)
    before = fingerprint(t.db)
    b = t.backup("UPDATE tickets SET title = upper(title)")
    t.sql(f"CREATE TABLE {staged_restore.STAGE_PREFIX}0 (junk INT)", f"CREATE TABLE {staged_restore.PARK_PREFIX}0 "
          "(junk INT)", "ALTER TABLE tickets ADD COLUMN done BOOLEAN")

    assert [s.action for s in restore_backup(t.engine, b).tables] == ["rebuilt"]

    assert fingerprint(t.db) == before
    assert leftovers(t) == []


# -- mariadb_dump ------------------------------------------------------------------------------------------
AWKWARD = ["plain", "semi;colon\nnew line", "quote ' and \" and \\ backslash", "ünïcødé ✓ 漢字 🎉", "", "),(", ";"]


def test_mariadb_dump_round_trips_awkward_values_over_many_statements(mariadb_database, tmp_path, fingerprint):
    t = open_target(mariadb_database, "mariadb_dump", tmp_path / "backups")
    try:
        t.sql("CREATE TABLE docs (id INT PRIMARY KEY, body TEXT, raw BLOB, at DATETIME(6), ts TIMESTAMP(3) NULL, "
              "amount DECIMAL(30,10), ratio DOUBLE, flag BOOLEAN, doc JSON, "
              "size INT AS (LENGTH(body)) VIRTUAL, KEY docs_at (at))")
        with t.engine.begin() as conn:
            rows = [{"id": i, "body": AWKWARD[i % len(AWKWARD)] * (1 + i % 50), "raw": bytes([i % 256, 0, 10, 59, 39]),
                     "at": f"2024-01-01 00:00:00.{i:06d}", "amount": f"{i}.0123456789", "ratio": i / 7,
                     "flag": i % 2, "doc": '{"k": [1, "a;b"], "n": null}'} for i in range(3000)]
            conn.exec_driver_sql("INSERT INTO docs (id, body, raw, at, ts, amount, ratio, flag, doc) VALUES "
                                 "(%(id)s, %(body)s, %(raw)s, %(at)s, NULL, %(amount)s, %(ratio)s, %(flag)s, %(doc)s)",
                                 rows)
            conn.exec_driver_sql("INSERT INTO docs (id, body, ts) VALUES (5000, NULL, '2024-03-01 12:00:00.5')")
        before = fingerprint(t.db)
        b = t.backup("UPDATE docs SET body = 'x'")
        statements = [x for x in Path(b.location).read_text().split("\n") if x.startswith("INSERT INTO")]
        assert len(statements) > 1 and b.table("docs").rows == 3001

        t.sql("UPDATE docs SET body = 'x' WHERE id < 100", "DELETE FROM docs WHERE id > 2900",
              "UPDATE docs SET raw = NULL WHERE id = 7")
        assert [s.action for s in restore_backup(t.engine, b).tables] == ["synchronised"]
        assert fingerprint(t.db) == before
        t.sql("ALTER TABLE docs DROP COLUMN ratio")
        assert [s.action for s in restore_backup(t.engine, b).tables] == ["rebuilt"]
        assert fingerprint(t.db) == before
    finally:
        t.engine.dispose()


def test_mariadb_dump_restore_compares_text_case_and_trailing_spaces(mariadb_database, tmp_path, fingerprint):
    """The table's collation says 'Ann' = 'ANN ' but the restore puts back the exact value."""
    t = open_target(mariadb_database, "mariadb_dump", tmp_path / "backups")
    try:
        t.sql("CREATE TABLE names (id INT PRIMARY KEY, name VARCHAR(20))", "INSERT INTO names VALUES (1, 'Ann')")
        before = fingerprint(t.db)
        b = t.backup("UPDATE names SET name = 'x'")
        t.sql("UPDATE names SET name = 'ANN ' WHERE id = 1")
        assert [s.action for s in restore_backup(t.engine, b).tables] == ["synchronised"]
        assert fingerprint(t.db) == before
        assert t.rows("SELECT CONCAT('[', name, ']') FROM names") == [("[Ann]",)]
    finally:
        t.engine.dispose()


# -- the password ------------------------------------------------------------------------------------------
SECRET = "pw-'\"-s3cret;\\x"


@pytest.fixture
def password_user(mariadb_database):
    """A user with a password, allowed on the test database only (dropped afterwards)."""
    user = f"migtest_{uuid.uuid4().hex[:10]}"
    admin = create_engine(mariadb_database.sqlalchemy_url)
    database = make_url(mariadb_database.sqlalchemy_url).database
    with admin.begin() as conn:
        conn.exec_driver_sql("CREATE USER %(u)s@'%%' IDENTIFIED BY %(pw)s", {"u": user, "pw": SECRET})
        conn.exec_driver_sql(f"GRANT ALL ON `{database}`.* TO %(u)s@'%%'", {"u": user})
    url = make_url(mariadb_database.sqlalchemy_url).set(username=user, password=SECRET)
    try:
        yield url
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql("DROP USER IF EXISTS %(u)s@'%%'", {"u": user})
        admin.dispose()


def test_the_password_reaches_mariadb_dump_only_through_a_private_option_file(mariadb_database, password_user,
                                                                           tmp_path, monkeypatch):
    monkeypatch.setenv("MYSQL_PWD", "parent-env-secret")  # nothing of ours leaks to the child either
    launched: list[tuple[list[str], dict[str, str], str]] = []
    real_popen = subprocess.Popen

    def spy(args, **kwargs):
        defaults = next(a.split("=", 1)[1] for a in args if a.startswith("--defaults-file="))
        mode = stat.S_IMODE(os.stat(defaults).st_mode)
        launched.append((list(args), dict(kwargs["env"]), f"{mode:o}:{Path(defaults).read_text()}"))
        return real_popen(args, **kwargs)

    monkeypatch.setattr(strategy.subprocess, "Popen", spy)
    engine = create_engine(password_user.render_as_string(hide_password=False))
    dialect_for(engine)
    t = open_target(mariadb_database, "mariadb_dump", tmp_path / "backups")
    t.engine.dispose()
    t.engine = engine
    try:
        t.sql("CREATE TABLE notes (id INT PRIMARY KEY, body TEXT)", "INSERT INTO notes VALUES (1, 'hi')")
        b = t.backup("UPDATE notes SET body = 'x'")
        t.sql("UPDATE notes SET body = 'x'")
        restore_backup(engine, b)
        assert t.rows("SELECT body FROM notes") == [("hi",)]
    finally:
        engine.dispose()

    [(args, env, option_file)] = launched
    assert args[1].startswith("--defaults-file=")  # the first option, so the only option file read
    assert not any(SECRET in a for a in args) and "--single-transaction" in args
    from airflow_migrate_provider.core.backup.client_env import base_environment

    assert env == base_environment() and env["PATH"] == os.environ["PATH"]  # PATH, HOME, locale, TZ: no secrets
    assert not any(name.startswith(("MYSQL", "AIRFLOW")) for name in env)
    mode, text = option_file.split(":", 1)
    assert mode == "600" and SECRET.replace("\\", "\\\\") in text
    assert not Path(args[1].split("=", 1)[1]).exists()  # removed once the dump is written
