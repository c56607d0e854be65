"""Verification with MariaDB on one or both sides: checksums hashed in MariaDB's SQL and bisected down to exact keys,
and PostgreSQL → MariaDB and SQLite → MariaDB tables compared by canonical values (decimals of another scale,
instants and wall times, booleans stored as tinyint(1), JSON stored as text, text keys in a case-insensitive
collation), zero dates.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.verify.base import ColumnRule, Side
from airflow_migrate_provider.core.verify.checksums import VerifySpecError, checksums
from airflow_migrate_provider.core.verify.rows import data_sample

UTC = timezone.utc


def _fresh(url: str) -> Engine:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.exec_driver_sql("DROP SCHEMA public CASCADE")
            conn.exec_driver_sql("CREATE SCHEMA public")
        if engine.dialect.name == "mysql":
            tables = conn.exec_driver_sql("SELECT table_name FROM information_schema.tables "
                                          "WHERE table_schema = DATABASE()").scalars().all()
            for table in tables:
                conn.exec_driver_sql(f"DROP TABLE `{table}`")
    return engine


@pytest.fixture
def mariadb_pair(mariadb_urls) -> Iterator[tuple[Engine, Engine]]:
    engines = _fresh(mariadb_urls[0]), _fresh(mariadb_urls[1])
    yield engines
    for engine in engines:
        engine.dispose()


def run(engine: Engine, *statements: str, rows: list[tuple[Any, ...]] | None = None) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement, rows) if rows is not None else conn.exec_driver_sql(statement)


def keys_of(result) -> set[tuple[str, Any, str | None]]:
    return {(d.kind, d.key, d.column) for d in result.differences}


# ------------------------------------------------------------------------------------------------------
# MariaDB → MariaDB: hashed in SQL, bisected to exact keys
# ------------------------------------------------------------------------------------------------------
class Statements:
    """The statements an engine runs (a SQLAlchemy event listener)."""

    def __init__(self, *engines: Engine):
        self.seen: list[str] = []
        for engine in engines:
            sa.event.listen(engine, "before_cursor_execute", self._record)

    def _record(self, conn, cursor, statement, parameters, context, executemany) -> None:
        self.seen.append(statement)

    def hashing(self) -> list[str]:
        return [s for s in self.seen if "MD5(" in s and "GROUP BY 1" in s]


def test_mariadb_checksums_hash_in_sql_and_bisect_to_exact_keys(mariadb_pair):
    source, target = mariadb_pair
    ddl = ("CREATE TABLE orders (id bigint PRIMARY KEY, amount decimal(12,2), note varchar(40), at datetime(6), "
           "doc json, paid boolean)")
    fill = ("INSERT INTO orders SELECT seq, seq / 7, CONCAT('note ', seq), '2024-01-01' + INTERVAL seq SECOND, "
            "JSON_OBJECT('n', seq), MOD(seq, 2) FROM seq_1_to_20000")
    run(source, ddl, fill)
    run(target, ddl, fill)
    run(target, "UPDATE orders SET amount = amount + 0.01 WHERE id = 777",
        "UPDATE orders SET note = 'NOTE 5000' WHERE id = 5000",  # case only: utf8mb4_general_ci finds it equal
        "UPDATE orders SET at = at + INTERVAL 1 MICROSECOND WHERE id = 12345",
        "UPDATE orders SET paid = NOT paid WHERE id = 19999",
        "DELETE FROM orders WHERE id IN (1, 15000)", "INSERT INTO orders (id) VALUES (20001)")
    seen = Statements(source, target)
    result = checksums(Side(source, table="orders"), Side(target, table="orders"), ["id"], segments=64,
                       bisect_rows=20)
    assert keys_of(result) == {("changed", 777, "amount"), ("changed", 5000, "note"), ("changed", 12345, "at"),
                               ("changed", 19999, "paid"), ("missing_in_target", 1, None),
                               ("missing_in_target", 15000, None), ("extra_in_target", 20001, None)}, result.detail
    assert "hashed in MariaDB" in result.detail and "4 changed, 2 missing in target, 1 extra in target" in result.detail
    # one grouped hashing query per side for the segments, then per side and drill-down level: bisected in SQL
    hashing = seen.hashing()
    assert len(hashing) >= 4 and len(hashing) % 2 == 0, hashing
    streamed = [s for s in seen.seen if "ORDER BY" in s and "MD5(" not in s and "row_number" not in s]
    assert streamed and all(" WHERE " in s for s in streamed)  # only the differing key ranges are read as rows
    unchanged = checksums(Side(source, table="orders"), Side(source, table="orders"), ["id"])
    assert unchanged.passed and "64 segments, all equal (hashed in MariaDB)" in unchanged.detail


def test_mariadb_sql_hashing_follows_the_column_rules(mariadb_pair):
    source, target = mariadb_pair
    run(source, "CREATE TABLE t (id int PRIMARY KEY, v decimal(12,4), s varchar(20), at datetime(6))")
    run(target, "CREATE TABLE t (id int PRIMARY KEY, v decimal(14,2), s varchar(20), at datetime(3))")
    rows = [(1, Decimal("1.2345"), "abc", datetime(2024, 1, 1, 0, 0, 0, 123456)),
            (2, Decimal("1.2350"), "abc  ", datetime(2024, 1, 1)), (3, Decimal("12.5000"), "AbC", None)]
    run(source, "INSERT INTO t VALUES (%s, %s, %s, %s)", rows=rows)
    run(target, "INSERT INTO t VALUES (%s, %s, %s, %s)", rows=[
        (1, Decimal("1.23"), "abc", datetime(2024, 1, 1, 0, 0, 0, 123000)), (2, Decimal("1.24"), "abc", rows[1][3]),
        (3, Decimal("12.50"), "abc", None)])
    sides = Side(source, table="t"), Side(target, table="t")
    exact = checksums(*sides, ["id"])
    assert keys_of(exact) == {("changed", 1, "v"), ("changed", 2, "v"), ("changed", 1, "at"), ("changed", 2, "s"),
                              ("changed", 3, "s")}, exact.detail
    rules = {"v": ColumnRule(numeric_scale=2), "s": ColumnRule(trim=True, case_insensitive=True),
             "at": ColumnRule(timestamp_precision="ms")}
    loose = checksums(*sides, ["id"], rules=rules)
    assert loose.passed and "all equal (hashed in MariaDB)" in loose.detail, loose.detail


# ------------------------------------------------------------------------------------------------------
# PostgreSQL → MariaDB and SQLite → MariaDB: canonical values
# ------------------------------------------------------------------------------------------------------
HANDLES = ["Alice", "bob", "Émile", "ZOE", "zed", "ärger", "Zebra", "_x", "0day"] + [
    f"{'User' if i % 2 else 'user'}-{i:03d}" for i in range(300)]
MARIADB_ACCOUNTS = ("CREATE TABLE accounts (handle varchar(40) COLLATE utf8mb4_general_ci PRIMARY KEY, "
                    "balance decimal(12,2), opened_at timestamp(6) NULL, seen_at datetime(6), active boolean, "
                    "prefs json)")
SOURCE_ACCOUNTS = {
    "postgresql": "CREATE TABLE accounts (handle text PRIMARY KEY, balance numeric(14,4), opened_at timestamptz, "
                  "seen_at timestamp, active boolean, prefs jsonb)",
    "sqlite": "CREATE TABLE accounts (handle TEXT PRIMARY KEY, balance NUMERIC, opened_at TIMESTAMP, "
              "seen_at TIMESTAMP, active BOOLEAN, prefs JSON)",
}


def account(i: int, handle: str) -> dict[str, Any]:
    return {"handle": handle, "balance": Decimal(f"{i * 37 % 1000}.{i % 100:02d}"),
            "opened_at": datetime(2024, 3, 1, 12, tzinfo=UTC) + timedelta(hours=i, microseconds=i),
            "seen_at": datetime(2024, 6, 1, 8, 30) + timedelta(minutes=i),
            "active": i % 3 != 0, "prefs": {"theme": "dark" if i % 2 else "light", "limits": [i, 1.5, None]}}


def insert_source(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL: typed values, the instant written in +02:00; SQLite: text, the instant with its offset."""
    pg = engine.dialect.name == "postgresql"
    plus2 = timezone(timedelta(hours=2))
    values = []
    for r in rows:
        opened = r["opened_at"].astimezone(plus2)
        values.append({**r, "balance": r["balance"] if pg else str(r["balance"]),
                       "opened_at": opened if pg else opened.isoformat(sep=" "),
                       "seen_at": r["seen_at"] if pg else r["seen_at"].isoformat(sep=" "),
                       "active": r["active"] if pg else int(r["active"]),
                       "prefs": json.dumps(r["prefs"], indent=1 if pg else None)})
    prefs = "CAST(:prefs AS jsonb)" if pg else ":prefs"
    with engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO accounts VALUES (:handle, :balance, :opened_at, :seen_at, :active, "
                             f"{prefs})"), values)


def insert_mariadb(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """UTC wall times of the instants (the session is in UTC), JSON with its keys in another order."""
    with engine.begin() as conn:
        conn.exec_driver_sql("SET time_zone = '+00:00'")
        conn.execute(sa.text("INSERT INTO accounts VALUES (:handle, :balance, :opened_at, :seen_at, :active, "
                             ":prefs)"),
                     [{**r, "opened_at": r["opened_at"].replace(tzinfo=None),
                       "prefs": json.dumps(dict(reversed(list(r["prefs"].items()))))} for r in rows])


@pytest.fixture(params=["postgresql-mariadb", "sqlite-mariadb"])
def accounts(request, mariadb_urls, tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    kind = request.param.split("-")[0]
    url = request.getfixturevalue("pg_urls")[0] if kind == "postgresql" else f"sqlite:///{tmp_path / 's.sqlite'}"
    source, target = _fresh(url), _fresh(mariadb_urls[1])
    run(source, SOURCE_ACCOUNTS[kind])
    run(target, MARIADB_ACCOUNTS)
    rows = [account(i, h) for i, h in enumerate(HANDLES)]
    insert_source(source, rows)
    insert_mariadb(target, rows)
    yield Side(source, table="accounts", label="source"), Side(target, table="accounts", label="target")
    source.dispose()
    target.dispose()


INSTANTS = {"opened_at": ColumnRule(time_zone="UTC")}  # MariaDB reads TIMESTAMP as UTC wall time (naive)


def test_equal_tables_pass_across_databases(accounts):
    source, target = accounts
    for segments, bisect_rows in ((64, 2000), (4, 5)):
        result = checksums(source, target, ["handle"], rules=INSTANTS, segments=segments, bisect_rows=bisect_rows)
        assert result.passed, (result.detail, [str(d) for d in result.differences])
    sample = data_sample(source, target, ["handle"], rules=INSTANTS, size=len(HANDLES), seed=3)
    assert sample.passed, [str(d) for d in sample.differences]
    # without the rule an instant never equals a wall time: every opened_at is named, nothing else
    naive = checksums(source, target, ["handle"])
    assert {d.column for d in naive.differences} == {"opened_at"} and naive.total_differences == len(HANDLES)


def test_differences_name_the_exact_key_and_column_across_databases(accounts):
    source, target = accounts
    run(target.engine,
        "UPDATE accounts SET balance = balance + 0.01 WHERE handle = 'bob'",
        "UPDATE accounts SET active = NOT active WHERE handle = 'Émile'",
        "UPDATE accounts SET prefs = JSON_SET(prefs, '$.theme', 'blue') WHERE handle = 'user-010'",
        "UPDATE accounts SET opened_at = opened_at + INTERVAL 1 SECOND WHERE handle = 'User-011'",
        "UPDATE accounts SET seen_at = seen_at + INTERVAL 1 MICROSECOND WHERE handle = 'zed'",
        "UPDATE accounts SET handle = 'Zoe' WHERE handle = 'zoe'",  # the collation finds 'ZOE'
        "DELETE FROM accounts WHERE handle = 'ÄRGER'")
    expected = {("changed", "bob", "balance"), ("changed", "Émile", "active"), ("changed", "user-010", "prefs"),
                ("changed", "User-011", "opened_at"), ("changed", "zed", "seen_at"), ("missing_in_target", "ZOE", None),
                ("extra_in_target", "Zoe", None), ("missing_in_target", "ärger", None)}
    for segments, bisect_rows in ((64, 2000), (3, 4)):
        result = checksums(source, target, ["handle"], rules=INSTANTS, segments=segments, bisect_rows=bisect_rows)
        assert keys_of(result) == expected, result.detail
    changed = {d.key: d for d in result.differences if d.kind == "changed"}
    balance = account(1, "bob")["balance"]  # SQLite's NUMERIC keeps 37.01 as a REAL
    assert Decimal(str(changed["bob"].source)) == balance and changed["bob"].target == balance + Decimal("0.01")
    sample = data_sample(source, target, ["handle"], rules=INSTANTS, size=len(HANDLES), seed=5)
    assert keys_of(sample) == {e for e in expected if e[0] != "extra_in_target"}, [str(d) for d in sample.differences]


# ------------------------------------------------------------------------------------------------------
# zero dates
# ------------------------------------------------------------------------------------------------------
def test_zero_dates_are_compared_as_their_text(mariadb_pair, pg_urls):
    source, copy = mariadb_pair
    ddl = "CREATE TABLE events (id int PRIMARY KEY, at datetime, day date)"
    for engine in (source, copy):
        with engine.begin() as conn:
            conn.exec_driver_sql("SET SESSION sql_mode = ''")  # a non-strict mode keeps zero dates
            conn.exec_driver_sql(ddl)
            conn.exec_driver_sql("INSERT INTO events VALUES (1, '0000-00-00 00:00:00', '0000-00-00'), "
                                 "(2, '2024-01-01 10:00:00', '2024-01-01'), (3, NULL, NULL)")
    same = checksums(Side(source, table="events"), Side(copy, table="events"), ["id"])
    assert same.passed and "hashed in MariaDB" in same.detail, same.detail
    run(copy, "UPDATE events SET at = NULL, day = NULL WHERE id = 1")
    nulled = checksums(Side(source, table="events"), Side(copy, table="events"), ["id"])
    assert keys_of(nulled) == {("changed", 1, "at"), ("changed", 1, "day")}, nulled.detail
    assert {(d.source, d.target) for d in nulled.differences} == {("0000-00-00 00:00:00", None), ("0000-00-00", None)}

    pg = _fresh(pg_urls[1])
    try:
        run(pg, "CREATE TABLE events (id int PRIMARY KEY, at timestamp, day date)",
            "INSERT INTO events VALUES (1, NULL, NULL), (2, '2024-01-01 10:00:00', '2024-01-01'), (3, NULL, NULL)")
        crossed = checksums(Side(source, table="events"), Side(pg, table="events"), ["id"])
        assert keys_of(crossed) == {("changed", 1, "at"), ("changed", 1, "day")}, crossed.detail
        sampled = data_sample(Side(source, table="events"), Side(pg, table="events"), ["id"], size=10, seed=1)
        assert keys_of(sampled) == {("changed", 1, "at"), ("changed", 1, "day")}
    finally:
        pg.dispose()


def test_a_zero_date_key_is_refused_with_a_clear_error_when_its_row_differs(mariadb_pair):
    source, target = mariadb_pair
    for engine in (source, target):
        with engine.begin() as conn:
            conn.exec_driver_sql("SET SESSION sql_mode = ''")
            conn.exec_driver_sql("CREATE TABLE days (day date PRIMARY KEY, v int)")
            conn.exec_driver_sql("INSERT INTO days VALUES ('0000-00-00', 1), ('2024-01-01', 2)")
    run(target, "UPDATE days SET v = 3 WHERE day = '2024-01-01'")
    sides = Side(source, table="days"), Side(target, table="days")
    other = checksums(*sides, ["day"], bisect_rows=1)  # equal zero-date rows are hashed, never parsed
    assert keys_of(other) == {("changed", date(2024, 1, 1), "v")}, other.detail
    run(target, "UPDATE days SET v = 5 WHERE v = 1")
    with pytest.raises(VerifySpecError, match=r"key: '0000-00-00' is not a date \(a MySQL/MariaDB zero date"):
        checksums(*sides, ["day"], bisect_rows=1)
