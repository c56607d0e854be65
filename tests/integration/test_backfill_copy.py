"""Backfill copy correctness on real databases: every value arrives exactly, for every source → target pair.

Pairs: PostgreSQL → PostgreSQL (binary COPY fast path; two databases, and one database), PostgreSQL →
SQLite, SQLite → PostgreSQL (text COPY), SQLite → SQLite (two files, and one file), and with MariaDB: MariaDB →
MariaDB (lines formatted by the source, LOAD DATA LOCAL INFILE; two databases, and one), PostgreSQL and SQLite →
MariaDB (LOAD DATA of Python rows), MariaDB → PostgreSQL. MariaDB keeps instants as UTC DATETIME(6), booleans
as tinyint(1) and JSON as text. The data holds NULLs in
every nullable column, unicode, text that is special to COPY, JSON with numbers no float can hold, numerics
with scale, timestamps with offsets, bytes, booleans, a composite key and a transform in ``columns``.
Contents are compared in Python, normalized per dialect (SQLite keeps timestamps as text, etc.).
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import pytest
from backfill_it_support import (
    MARIADB_PAIRS,
    PAIRS,
    backfill_plan,
    checkpoint_rows,
    count,
    fetch,
    history,
    insert_rows,
    is_mysql,
    open_pair,
    run_sql,
    runner_for,
    server_urls,
)

from airflow_migrate_provider.core.backfill.lock_counts import AT_SNAPSHOT, UNDER_LOCK
from airflow_migrate_provider.core.rollback import rollback_run
from airflow_migrate_provider.errors import BackfillFailed

N_USERS = 3_000
TENANTS, MEMBERS = 3, 500
BIG = 12345678901234567890123
PI = "3.14159265358979323846264338327950288"  # more digits than a float holds
IST = timezone(timedelta(hours=5, minutes=30))
PST = timezone(timedelta(hours=-8))
NAMES = [
    "plain ascii", "🦄 unicorn 🦄", "漢字かな交じり文", "e\u0301 combining acute", "tab\there\nnew line",
    "back\\slash", "\\N", "NULL", "", "quote ' \" 100% %s %(x)s ;", "Ünïcödé ß ﬁ", None,
]
ROLES = ["owner", "märchen 🧚", None, "管理者", ""]


# -- data ---------------------------------------------------------------------------------------------

def user_rows() -> list[dict[str, Any]]:
    """The users, as Python values (None = SQL NULL); every nullable column has NULLs."""
    rows = []
    for i in range(N_USERS):
        uid = -5 if i == 0 else 3 * i + (i % 2)  # a negative key, gaps of 2 and 3
        created = None if i % 8 == 3 else (
            datetime(2024, 3, 1, 10, 0, tzinfo=(IST, PST, timezone.utc)[i % 3]) + timedelta(minutes=i))
        payload = None if i % 11 == 4 else (
            f'{{"big": {BIG}, "neg": -{BIG}, "price": 1.10, "pi": {PI}, "tiny": 1e-30, "huge": 1e400, "i": {i}, '
            f'"s": "\\u00fc🦄\\n", "nested": {{"a": [1, 2.50, null, true]}}}}')
        rows.append({
            "id": uid,
            "name": NAMES[i % len(NAMES)],
            "theme": None if i % 5 == 2 else ("dark", "light", "🌙 nuit")[i % 3],
            "lang": None if i % 7 == 1 else ("de", "zh-漢")[i % 2],
            "balance": None if i % 6 == 5 else (
                Decimal("12.50"), Decimal("-0.01"), Decimal("123456789012.34"), Decimal(f"{i}.10"))[i % 4],
            "created_at": created,
            "local_at": None if i % 9 == 7 else datetime(2023, 12, 31, 23, 59, 59, 123456) + timedelta(seconds=i),
            "active": None if i % 4 == 1 else i % 2 == 0,
            "avatar": None if i % 10 == 9 else bytes([0, 255, i % 256, 10, 92, 13, 9]),
            "payload": payload,
            "updated_at": datetime(2024, 5, 1, tzinfo=timezone.utc) + timedelta(seconds=i),
        })
    return rows


def member_rows() -> list[dict[str, Any]]:
    return [{"tenant_id": t, "id": m, "role": ROLES[(t + m) % len(ROLES)]}
            for t in range(1, TENANTS + 1) for m in range(1, MEMBERS + 1)]


MYSQL_USERS = """CREATE TABLE {table} (
    id bigint PRIMARY KEY, name text, {extra} balance decimal({precision}), created_at datetime(6),
    local_at datetime(6), active boolean, avatar blob, payload json, {prefs} updated_at datetime(6) NOT NULL)"""


def create_source(engine, dialect: str) -> None:
    if is_mysql(dialect):
        run_sql(engine, MYSQL_USERS.format(table="users", extra="theme text, lang text,", precision="14, 2",
                                           prefs=""),
                "CREATE TABLE memberships (tenant_id int NOT NULL, id int NOT NULL, role text, "
                "PRIMARY KEY (tenant_id, id))")
    elif dialect == "postgresql":
        run_sql(engine, """
            CREATE TABLE users (
                id bigint PRIMARY KEY, name text, theme text, lang text, balance numeric(14, 2),
                created_at timestamptz, local_at timestamp, active boolean, avatar bytea, payload jsonb,
                updated_at timestamptz NOT NULL)""",
                "CREATE TABLE memberships (tenant_id int NOT NULL, id int NOT NULL, role text, "
                "PRIMARY KEY (tenant_id, id))")
    else:
        run_sql(engine, """
            CREATE TABLE users (
                id INTEGER PRIMARY KEY, name TEXT, theme TEXT, lang TEXT, balance NUMERIC(14, 2),
                created_at TIMESTAMP, local_at TIMESTAMP, active BOOLEAN, avatar BLOB, payload JSON,
                updated_at TIMESTAMP NOT NULL)""",
                "CREATE TABLE memberships (tenant_id INTEGER NOT NULL, id INTEGER NOT NULL, role TEXT, "
                "PRIMARY KEY (tenant_id, id))")


def create_target(engine, dialect: str) -> None:
    if is_mysql(dialect):  # balance: wide scale (MariaDB has no unconstrained decimal); 12.50 stays 12.5000000000
        run_sql(engine, MYSQL_USERS.format(table="users_v2", extra="", precision="30, 10", prefs="prefs json,"),
                "CREATE TABLE memberships_v2 (tenant_id int NOT NULL, id int NOT NULL, member_role text, "
                "PRIMARY KEY (tenant_id, id))")
    elif dialect == "postgresql":  # balance: unconstrained numeric, so only an exact copy keeps 12.50
        run_sql(engine, """
            CREATE TABLE users_v2 (
                id bigint PRIMARY KEY, name text, balance numeric, created_at timestamptz, local_at timestamp,
                active boolean, avatar bytea, payload jsonb, prefs jsonb, updated_at timestamptz NOT NULL)""",
                "CREATE TABLE memberships_v2 (tenant_id int NOT NULL, id int NOT NULL, member_role text, "
                "PRIMARY KEY (tenant_id, id))")
    else:
        run_sql(engine, """
            CREATE TABLE users_v2 (
                id INTEGER PRIMARY KEY, name TEXT, balance NUMERIC, created_at TIMESTAMP, local_at TIMESTAMP,
                active BOOLEAN, avatar BLOB, payload JSON, prefs JSON, updated_at TIMESTAMP NOT NULL)""",
                "CREATE TABLE memberships_v2 (tenant_id INTEGER NOT NULL, id INTEGER NOT NULL, member_role TEXT, "
                "PRIMARY KEY (tenant_id, id))")


def utc_naive(value: datetime | None) -> datetime | None:
    return None if value is None else value.astimezone(timezone.utc).replace(tzinfo=None)


def seed_source(engine, dialect: str, users: list[dict[str, Any]], members: list[dict[str, Any]]) -> None:
    if is_mysql(dialect):  # instants as UTC DATETIME (the sessions are in UTC)
        insert_rows(engine, "INSERT INTO users VALUES (:id, :name, :theme, :lang, :balance, :created_at, "
                            ":local_at, :active, :avatar, :payload, :updated_at)", [
            {**u, "created_at": utc_naive(u["created_at"]), "updated_at": utc_naive(u["updated_at"])} for u in users])
    elif dialect == "postgresql":
        insert_rows(engine, "INSERT INTO users VALUES (:id, :name, :theme, :lang, :balance, :created_at, "
                            ":local_at, :active, :avatar, CAST(:payload AS jsonb), :updated_at)", users)
    else:  # as an application writing SQLite stores them: timestamps as ISO text, booleans as 0/1
        def iso(v: datetime | None) -> str | None:
            return None if v is None else v.isoformat(sep=" ")

        insert_rows(engine, "INSERT INTO users VALUES (:id, :name, :theme, :lang, :balance, :created_at, "
                            ":local_at, :active, :avatar, :payload, :updated_at)", [
            {**u, "balance": None if u["balance"] is None else str(u["balance"]),
             "created_at": iso(u["created_at"]), "local_at": iso(u["local_at"]), "updated_at": iso(u["updated_at"]),
             "active": None if u["active"] is None else int(u["active"])} for u in users])
    insert_rows(engine, "INSERT INTO memberships VALUES (:tenant_id, :id, :role)", members)


def copy_plan(src_dialect: str, *, users_step: dict[str, Any] | None = None):
    prefs = ("json_build_object('theme', theme, 'lang', lang)" if src_dialect == "postgresql"
             else "json_object('theme', theme, 'lang', lang)")
    users = {"id": "copy_users", "source": {"table": "users"}, "target": "users_v2", "key": "id",
             "watermark": "updated_at", "chunks": 4, "batch": {"rows": 500, "seconds": None},
             "columns": {"prefs": prefs}, **(users_step or {})}
    members = {"id": "copy_memberships", "source": {"table": "memberships"}, "target": "memberships_v2",
               "key": ["tenant_id", "id"], "append_only": True, "chunks": 1,
               "batch": {"rows": 500, "seconds": None}, "columns": {"member_role": "role"}}
    return backfill_plan(users, members)


# -- normalizing what a database hands back ----------------------------------------------------------

def instant(value: Any, zoneless_is_utc: bool = False) -> datetime | None:
    if value is None:
        return None
    parsed = datetime.fromisoformat(value) if isinstance(value, str) else value
    if zoneless_is_utc and parsed.tzinfo is None:  # MariaDB: UTC DATETIME
        parsed = parsed.replace(tzinfo=timezone.utc)
    assert parsed.tzinfo is not None, f"timestamp {value!r} lost its time zone"
    return parsed.astimezone(timezone.utc)


def naive(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def parsed_json(value: Any) -> Any:
    if value is None:
        return None
    assert isinstance(value, str), f"JSON read back as {type(value).__name__}, not text"
    return json.loads(value, parse_float=Decimal)


def boolean(value: Any) -> bool | None:
    return None if value is None else bool(value)


def raw(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


def expected_users(users: list[dict[str, Any]]) -> dict[int, tuple[Any, ...]]:
    return {u["id"]: (u["name"], decimal(u["balance"]), instant(u["created_at"]), naive(u["local_at"]),
                      boolean(u["active"]), raw(u["avatar"]), parsed_json(u["payload"]),
                      {"theme": u["theme"], "lang": u["lang"]}, instant(u["updated_at"]))
            for u in users}


def target_users(engine) -> dict[int, tuple[Any, ...]]:
    pg = engine.dialect.name == "postgresql"
    as_text = "::text" if pg else ""
    utc = is_mysql(engine.dialect.name)
    rows = fetch(engine, f"SELECT id, name, balance{as_text}, created_at, local_at, active, avatar, "
                         f"payload{as_text}, prefs{as_text}, updated_at FROM users_v2 ORDER BY id")
    return {r[0]: (r[1], decimal(r[2]), instant(r[3], utc), naive(r[4]), boolean(r[5]), raw(r[6]),
                   parsed_json(r[7]), parsed_json(r[8]), instant(r[9], utc)) for r in rows}


def target_members(engine) -> dict[tuple[int, int], str | None]:
    return {(t, i): role for t, i, role in fetch(engine, "SELECT tenant_id, id, member_role FROM memberships_v2")}


def assert_same_rows(actual: dict[Any, Any], expected: dict[Any, Any]) -> None:
    assert len(actual) == len(expected)
    assert set(actual) == set(expected), (f"missing keys {sorted(set(expected) - set(actual))[:5]}, "
                                          f"extra keys {sorted(set(actual) - set(expected))[:5]}")
    wrong = [(k, expected[k], actual[k]) for k in sorted(expected) if actual[k] != expected[k]]
    assert not wrong, f"{len(wrong)} rows differ; first: key {wrong[0][0]}\n  expected {wrong[0][1]}\n  " \
                      f"actual   {wrong[0][2]}"


# -- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture
def pg_urls_if(request):
    """``pg_urls_if(kind)``: the module's PostgreSQL databases when the pair kind needs them."""
    return lambda kind: request.getfixturevalue("pg_urls") if "pg" in kind else None


@pytest.fixture
def urls_of(request):
    """``urls_of(kind)``: open_pair's keyword arguments, the module's server databases the pair kind needs."""
    return lambda kind: server_urls(request, kind)


@pytest.fixture(params=PAIRS + MARIADB_PAIRS)
def pair(request, urls_of, tmp_path):
    with open_pair(request.param, tmp_path=tmp_path, **urls_of(request.param)) as p:
        yield p


@pytest.fixture
def seeded(pair):
    """The pair with source tables seeded and empty target tables; (pair, users, members)."""
    users, members = user_rows(), member_rows()
    create_source(pair.source, pair.src_dialect)
    seed_source(pair.source, pair.src_dialect, users, members)
    create_target(pair.target, pair.tgt_dialect)
    return pair, users, members


# -- tests ----------------------------------------------------------------------------------------------

def test_copy_is_exact_verified_idempotent_and_rolled_back(seeded):
    pair, users, members = seeded
    plan = copy_plan(pair.src_dialect)
    ledger, me, runner = runner_for(pair, plan)

    results = runner.apply_through(plan, "copy_memberships")  # applies copy_users first

    assert [(r.step_id, r.outcome) for r in results] == [("copy_users", "applied"), ("copy_memberships", "applied")]
    assert_same_rows(target_users(pair.target), expected_users(users))
    assert target_members(pair.target) == {(m["tenant_id"], m["id"]): m["role"] for m in members}

    # spot checks a user would make by hand
    ist = next(u for u in users if u["created_at"] is not None and u["created_at"].utcoffset() == IST.utcoffset(None))
    got = fetch(pair.target, "SELECT created_at FROM users_v2 WHERE id = :i", {"i": ist["id"]})[0][0]
    # 10:00+05:30 is 04:30 UTC
    assert instant(got, is_mysql(pair.tgt_dialect)) == ist["created_at"].astimezone(timezone.utc)
    if pair.tgt_dialect == "postgresql":
        assert fetch(pair.target, "SELECT payload->>'big', payload->'nested'->'a'->>1 FROM users_v2 "
                                  "WHERE id = :i", {"i": users[1]["id"]}) == [(str(BIG), "2.50")]
    else:  # JSON is stored as the text it was written as: the big integer keeps every digit
        payload = fetch(pair.target, "SELECT payload FROM users_v2 WHERE id = :i", {"i": users[1]["id"]})[0][0]
        assert isinstance(payload, str) and f'"big": {BIG}' in payload
    # numeric scale survives exactly (a SQLite source already holds 12.50 as the REAL 12.5: compared as numbers)
    if pair.src_dialect == pair.tgt_dialect == "postgresql":
        balances = dict(fetch(pair.target, "SELECT id, balance::text FROM users_v2 WHERE balance IS NOT NULL"))
        assert balances == {u["id"]: str(u["balance"]) for u in users if u["balance"] is not None}
        assert "12.50" in balances.values() and "-0.01" in balances.values()

    for step_id, total in (("copy_users", N_USERS), ("copy_memberships", TENANTS * MEMBERS)):
        assert history(ledger, step_id) == [("apply", "applied")]
        chunks = [c for c in checkpoint_rows(pair.target, step_id) if c["chunk"] >= 0]
        assert len(chunks) == (4 if step_id == "copy_users" else 1)
        assert all(c["status"] == "done" for c in chunks)
        assert sum(c["rows_copied"] for c in chunks) == sum(c["rows_total"] for c in chunks) == total
        assert runner.verify(plan.step(step_id)).outcome == "verified"
    assert set(ledger.applied()) == {"copy_users", "copy_memberships"}

    # applying again is a no-op that writes nothing
    again = runner.apply_through(plan, "copy_memberships")
    assert [(r.step_id, r.outcome) for r in again] == [("copy_memberships", "already_applied")]
    assert runner.backfill(plan.step("copy_users")).run().outcome == "already_applied"
    assert len(ledger.rows()) == 2

    # rollback deletes every copied row, newest step first, and leaves the source alone
    report = rollback_run(ledger, runner, me)
    assert [r.step_id for r in report.reverted] == ["copy_memberships", "copy_users"]
    assert count(pair.target, "users_v2") == 0
    assert count(pair.target, "memberships_v2") == 0
    assert count(pair.source, "users") == N_USERS
    assert ledger.applied() == {}
    assert history(ledger, "copy_users") == [("apply", "applied"), ("revert", "reverted")]
    assert checkpoint_rows(pair.target, "copy_users") == checkpoint_rows(pair.target, "copy_memberships") == []
    revert_row = next(r for r in ledger.rows("copy_users") if r.action == "revert")
    assert "deleted the 3,000 rows" in json.loads(revert_row.verified)[0]

    # after its rollback the plan applies again, and copies everything again
    results = runner.apply_through(plan, "copy_memberships")
    assert [r.outcome for r in results] == ["applied", "applied"]
    assert_same_rows(target_users(pair.target), expected_users(users))
    assert count(pair.target, "memberships_v2") == TENANTS * MEMBERS


@pytest.mark.parametrize("kind", ["pg-pg", "pg-sqlite", "sqlite-pg", "sqlite-same", "mariadb-mariadb"])
def test_empty_source_table_copies_nothing_and_applies(kind, urls_of, tmp_path):
    with open_pair(kind, tmp_path=tmp_path, **urls_of(kind)) as pair:
        create_source(pair.source, pair.src_dialect)
        create_target(pair.target, pair.tgt_dialect)
        plan = copy_plan(pair.src_dialect)
        ledger, me, runner = runner_for(pair, plan)

        results = runner.apply_through(plan, "copy_memberships")

        assert [r.outcome for r in results] == ["applied", "applied"]
        assert count(pair.target, "users_v2") == count(pair.target, "memberships_v2") == 0
        assert history(ledger, "copy_users") == [("apply", "applied")]
        assert runner.verify(plan.step("copy_users")).outcome == "verified"
        assert [r.step_id for r in rollback_run(ledger, runner, me).reverted] == ["copy_memberships", "copy_users"]
        assert ledger.applied() == {}


# how the final sync's counts relate to its lock: PostgreSQL keeps a snapshot taken under the lock and counts
# in it after releasing the lock; SQLite is counted under the lock
COUNTED = {
    "pg-pg": AT_SNAPSHOT,
    "pg-same": AT_SNAPSHOT,
    "pg-sqlite": "at the lock: the target counted under it, the source at its snapshot after releasing it",
    "sqlite-pg": "at the lock: the source counted under it, the target at its snapshot after releasing it",
    "sqlite-sqlite": UNDER_LOCK,
    "sqlite-same": UNDER_LOCK,
    "mariadb-mariadb": AT_SNAPSHOT,
    "mariadb-same": AT_SNAPSHOT,
    "pg-mariadb": AT_SNAPSHOT,
    "mariadb-pg": AT_SNAPSHOT,
    "sqlite-mariadb": "at the lock: the source counted under it, the target at its snapshot after releasing it",
}


@pytest.mark.parametrize("kind", PAIRS + MARIADB_PAIRS)
def test_rows_inserted_and_updated_during_the_copy_arrive(kind, urls_of, tmp_path):
    """Phases 2 and 3 pick up what changed after phase 1 took its high-water mark: new keys above it, and
    updated rows (watermark moved), with their latest values. The final counts are as of the lock."""
    with open_pair(kind, tmp_path=tmp_path, **urls_of(kind)) as pair:
        users = user_rows()[:1200]
        create_source(pair.source, pair.src_dialect)
        seed_source(pair.source, pair.src_dialect, users, [])
        create_target(pair.target, pair.tgt_dialect)
        plan = copy_plan(pair.src_dialect, users_step={"watermark_lag_seconds": 0})
        ledger, _, runner = runner_for(pair, plan)
        bf = runner.backfill(plan.step("copy_users"))

        chunks = bf.start()
        assert [c["chunk"] for c in chunks] == [0, 1, 2, 3] and sum(c["rows"] for c in chunks) == 1200
        for info in chunks:
            bf.copy_chunk(info["chunk"])
        assert count(pair.target, "users_v2") == 1200

        later = datetime(2025, 1, 1, tzinfo=timezone.utc)
        changed = {users[10]["id"]: "renamed during phase 1", users[500]["id"]: None}
        new_rows = [{**users[i], "id": 100_000 + i, "name": f"new {i} ✨", "updated_at": later} for i in range(3)]
        update = "UPDATE users SET name = :name, updated_at = :ts WHERE id = :id"
        stamp = (later if pair.src_dialect == "postgresql" else utc_naive(later) if is_mysql(pair.src_dialect)
                 else later.isoformat(sep=" "))
        insert_rows(pair.source, update, [{"id": k, "name": v, "ts": stamp} for k, v in changed.items()])
        seed_source(pair.source, pair.src_dialect, new_rows[:2], [])
        report = bf.copy_recent()
        assert report.rows >= 4  # 2 new rows, 2 updated rows
        seed_source(pair.source, pair.src_dialect, new_rows[2:], [])  # lands between phase 2 and 3
        final = bf.final_sync()
        assert final.rows >= 1 and final.detail["source_rows"] == final.detail["target_rows"] == 1203
        assert final.detail["verified"] == f"row counts match: source 1,203 = target 1,203 ({COUNTED[kind]})"
        assert 0 <= final.detail["lock_seconds"] <= 10

        expected = expected_users([{**u, "name": changed.get(u["id"], u["name"]),
                                    "updated_at": later if u["id"] in changed else u["updated_at"]}
                                   for u in users] + new_rows)
        assert_same_rows(target_users(pair.target), expected)
        assert history(ledger, "copy_users") == [("apply", "applied")]


def test_bigint_keys_beyond_float_precision_are_all_copied(pg_urls, tmp_path):
    """Snowflake-style 64-bit keys: the chunk ranges must still cover every key up to the high-water mark."""
    with open_pair("pg-pg", pg_urls, tmp_path) as pair:
        keys = [1, 2, 3, 2**60 + 1, 2**60 + 100]  # the key range is wider than a float's 53-bit mantissa
        run_sql(pair.source, "CREATE TABLE events (id bigint PRIMARY KEY, body text)")
        insert_rows(pair.source, "INSERT INTO events VALUES (:id, :body)", [{"id": k, "body": f"e{k}"} for k in keys])
        run_sql(pair.target, "CREATE TABLE events_v2 (id bigint PRIMARY KEY, body text)")
        plan = backfill_plan({"id": "copy_events", "source": {"table": "events"}, "target": "events_v2",
                              "key": "id", "append_only": True, "chunks": 2})
        _, _, runner = runner_for(pair, plan)
        try:
            runner.apply_through(plan, "copy_events")
        except BackfillFailed as exc:
            pytest.fail(f"the step failed: {exc}")
        assert sorted(k for (k,) in fetch(pair.target, "SELECT id FROM events_v2")) == keys


def test_text_keys_with_a_different_collation_in_the_target_are_all_copied(pg_urls, tmp_path):
    with open_pair("pg-pg", pg_urls, tmp_path) as pair:
        keys = ["a", "B", "c", "D", "e", "F", "g", "H"]  # ICU: a B c D ...; C (bytes): B D F H a c e g
        run_sql(pair.source, 'CREATE TABLE tags (code text COLLATE "en-x-icu" PRIMARY KEY, label text)')
        insert_rows(pair.source, "INSERT INTO tags VALUES (:c, :l)", [{"c": k, "l": f"label {k}"} for k in keys])
        run_sql(pair.target, 'CREATE TABLE tags_v2 (code text COLLATE "C" PRIMARY KEY, label text)')
        plan = backfill_plan({"id": "copy_tags", "source": {"table": "tags"}, "target": "tags_v2", "key": "code",
                              "append_only": True, "phases": {"recent": False, "final_sync": False},
                              "batch": {"rows": 1, "seconds": None}})
        _, _, runner = runner_for(pair, plan)
        bf = runner.backfill(plan.step("copy_tags"))
        for info in bf.start():
            bf.copy_chunk(info["chunk"])
        assert sorted(k for (k,) in fetch(pair.target, "SELECT code FROM tags_v2")) == sorted(keys)


@pytest.mark.parametrize("kind", ["pg-pg", "pg-sqlite"])
def test_filter_and_transforms_with_percent_signs(kind, pg_urls_if, tmp_path):
    """Plan SQL is used verbatim: ``%`` in a filter or a `columns` expression is not a driver placeholder."""
    with open_pair(kind, pg_urls_if(kind), tmp_path) as pair:
        run_sql(pair.source, "CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(40), qty INTEGER)")
        names = ["keep me", "100% off", "skip: draft", "50%% twice", "plain"]
        insert_rows(pair.source, "INSERT INTO items VALUES (:i, :n, :q)",
                    [{"i": i, "n": names[i % len(names)], "q": i} for i in range(1, 1001)])
        run_sql(pair.target, "CREATE TABLE items_v2 (id INTEGER PRIMARY KEY, label VARCHAR(60), parity INTEGER)")
        plan = backfill_plan({"id": "copy_items", "source": {"table": "items", "filter": "name NOT LIKE 'skip%'"},
                              "target": "items_v2", "key": "id", "append_only": True, "chunks": 2,
                              "batch": {"rows": 200, "seconds": None},
                              "columns": {"label": "name || ' (100%)'", "parity": "qty % 2"}})
        _, _, runner = runner_for(pair, plan)
        assert [r.outcome for r in runner.apply_through(plan, "copy_items")] == ["applied"]
        expected = {i: (f"{names[i % len(names)]} (100%)", i % 2) for i in range(1, 1001)
                    if not names[i % len(names)].startswith("skip")}
        assert {i: (label, parity) for i, label, parity in fetch(pair.target, "SELECT * FROM items_v2")} == expected
        assert runner.verify(plan.step("copy_items")).outcome == "verified"


def test_batches_hold_at_most_batch_rows_on_skewed_keys(pg_urls, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="airflow_migrate_provider")
    with open_pair("pg-sqlite", pg_urls, tmp_path) as pair:
        keys = list(range(1, 1001)) + [1000 + k * 100_000 for k in range(1, 51)]  # dense, then sparse
        run_sql(pair.source, "CREATE TABLE events (id bigint PRIMARY KEY, body text)")
        insert_rows(pair.source, "INSERT INTO events VALUES (:id, 'e')", [{"id": k} for k in keys])
        run_sql(pair.target, "CREATE TABLE events_v2 (id INTEGER PRIMARY KEY, body TEXT)")
        plan = backfill_plan({"id": "copy_events", "source": {"table": "events"}, "target": "events_v2",
                              "key": "id", "append_only": True, "batch": {"rows": 100, "seconds": None}})
        _, _, runner = runner_for(pair, plan)
        bf = runner.backfill(plan.step("copy_events"))
        for info in bf.start():
            bf.copy_chunk(info["chunk"])
        assert count(pair.target, "events_v2") == len(keys)
        sizes = [int(m.split(" +")[1].split(" rows")[0].replace(",", "")) for m in
                 (r.getMessage() for r in caplog.records) if "phase 1" in m and ": batch " in m]
        assert sizes and max(sizes) <= 100, f"batch sizes: {sizes}"


def test_uuid_keys_copy(pg_urls, tmp_path):
    """UUID primary keys are common on PostgreSQL and orderable: a backfill keyed on one copies every row."""
    with open_pair("pg-pg", pg_urls, tmp_path) as pair:
        run_sql(pair.source, "CREATE TABLE accounts (id uuid PRIMARY KEY, name text)")
        ids = [str(uuid.UUID(int=(k * 7919) << 64 | k)) for k in range(1, 301)]
        insert_rows(pair.source, "INSERT INTO accounts VALUES (CAST(:id AS uuid), :n)",
                    [{"id": i, "n": f"acct {n}"} for n, i in enumerate(ids)])
        run_sql(pair.target, "CREATE TABLE accounts_v2 (id uuid PRIMARY KEY, name text)")
        plan = backfill_plan({"id": "copy_accounts", "source": {"table": "accounts"}, "target": "accounts_v2",
                              "key": "id", "append_only": True, "batch": {"rows": 50, "seconds": None}})
        _, _, runner = runner_for(pair, plan)
        assert [r.outcome for r in runner.apply_through(plan, "copy_accounts")] == ["applied"]
        assert sorted(str(i) for (i,) in fetch(pair.target, "SELECT id FROM accounts_v2")) == sorted(ids)
