"""The `checksums` check on real databases: it reports exactly the keys that differ, under the column rules.

Pairs: PostgreSQL → PostgreSQL and MariaDB → MariaDB (hashed in SQL, k-way drill-down), PostgreSQL ↔ SQLite,
PostgreSQL ↔ MariaDB, SQLite → MariaDB and SQLite → SQLite (hashed in Python). Every test plants known
differences (or known non-differences) and checks the exact keys reported, so a verifier that misses or invents
one fails.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_migrate_provider.core.verify.base import ColumnRule, Side
from airflow_migrate_provider.core.verify.checksums import VerifySpecError, checksums
from airflow_migrate_provider.core.verify.values import canonical
from airflow_migrate_provider.errors import MigrateError

PAIRS = ["pg-pg", "pg-sqlite", "sqlite-pg", "sqlite-sqlite", "mariadb-mariadb", "pg-mariadb", "mariadb-pg",
         "sqlite-mariadb"]
# MariaDB spellings of the types these tests declare (TEXT cannot be a key; TIMESTAMP is DATETIME's cousin with
# automatic defaults)
MARIADB_TYPES = {"float8": "DOUBLE", "jsonb": "JSON", "timestamp": "DATETIME(6)", "TIMESTAMP": "DATETIME(6)",
                 "text": "VARCHAR(64)", "TEXT": "VARCHAR(64)"}


@dataclass
class Db:
    """One test database: its engine, and helpers that write rows the way each dialect wants them."""

    engine: sa.Engine

    @property
    def pg(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    @property
    def mariadb(self) -> bool:
        return self.engine.dialect.name == "mysql"

    @property
    def hashes_in_sql(self) -> bool:
        return self.engine.dialect.name != "sqlite"

    def run(self, *statements: str) -> None:
        with self.engine.begin() as conn:
            for statement in statements:
                conn.exec_driver_sql(statement)

    def insert(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        marks = ", ".join(["?" if self.engine.dialect.name == "sqlite" else "%s"] * len(rows[0]))
        with self.engine.begin() as conn:
            conn.exec_driver_sql(f"INSERT INTO {table} VALUES ({marks})", [tuple(map(self._value, r)) for r in rows])

    def _value(self, v: Any) -> Any:
        if isinstance(v, (dict, list)):
            if self.pg:
                from psycopg.types.json import Jsonb

                return Jsonb(v)
            return json.dumps(v)
        if self.mariadb:
            return v
        if not self.pg and isinstance(v, datetime):
            return v.isoformat(sep=" ")
        if not self.pg and isinstance(v, Decimal):
            return str(v)
        return v

    def type(self, pg: str, sqlite: str, mariadb: str | None = None) -> str:
        if self.mariadb:
            return mariadb or MARIADB_TYPES.get(pg, pg)
        return pg if self.pg else sqlite

    def concat(self, *parts: str) -> str:
        return f"CONCAT({', '.join(parts)})" if self.mariadb else " || ".join(parts)

    def hashed_in(self, other: Db) -> str:
        """What the report says when both sides hash in SQL; "" when they hash in Python."""
        same = self.engine.dialect.name == other.engine.dialect.name and self.hashes_in_sql
        return ("hashed in MariaDB" if self.mariadb else "hashed in PostgreSQL") if same else ""


def _engine(kind: str, request: pytest.FixtureRequest, tmp_path: Path, index: int) -> sa.Engine:
    if kind == "pg":
        return sa.create_engine(request.getfixturevalue("pg_urls")[index])
    if kind == "mariadb":
        return sa.create_engine(request.getfixturevalue("mariadb_urls")[index])
    return sa.create_engine(f"sqlite:///{tmp_path / f'db{index}.sqlite'}")


@pytest.fixture(params=PAIRS)
def dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Db, Db]]:
    """(source, target) for each pair of dialects."""
    kinds = request.param.split("-")
    engines = [_engine(kind, request, tmp_path, i) for i, kind in enumerate(kinds)]
    yield Db(engines[0]), Db(engines[1])
    for engine in engines:
        engine.dispose()


@pytest.fixture
def pg_dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Db, Db]]:
    engines = [_engine("pg", request, tmp_path, i) for i in (0, 1)]
    yield Db(engines[0]), Db(engines[1])
    for engine in engines:
        engine.dispose()


@pytest.fixture
def mariadb_dbs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Db, Db]]:
    engines = [_engine("mariadb", request, tmp_path, i) for i in (0, 1)]
    yield Db(engines[0]), Db(engines[1])
    for engine in engines:
        engine.dispose()


def name(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def reported(result) -> dict[str, set[Any]]:
    """Kind → keys, from the listed differences (the tests keep under the cap unless they test it)."""
    out: dict[str, set[Any]] = {"missing_in_target": set(), "extra_in_target": set(), "changed": set()}
    for d in result.differences:
        out[d.kind].add(tuple(d.key) if isinstance(d.key, (list, tuple)) else d.key)
    return out


def run_check(src: Db, src_table: str, tgt: Db, tgt_table: str, key: list[str], **kwargs: Any):
    return checksums(Side(src.engine, table=src_table, label="source"),
                     Side(tgt.engine, table=tgt_table, label="target"), key, **kwargs)


# ------------------------------------------------------------------------------------------------------
# a typed table, identical on both sides, then mutated
# ------------------------------------------------------------------------------------------------------
def orders_ddl(db: Db, table: str) -> str:
    return (f"CREATE TABLE {table} (id {db.type('bigint', 'INTEGER')} PRIMARY KEY, n INTEGER, s TEXT, "
            f"amount NUMERIC(12, 2), x {db.type('float8', 'REAL')}, ts {db.type('timestamp', 'TIMESTAMP')}, "
            f"doc {db.type('jsonb', 'JSON')})")


def order_row(i: int) -> tuple[Any, ...]:
    return (i, None if i % 7 == 3 else (i * 7919) % 100_000 - 50_000,
            None if i % 11 == 5 else f"order {i} {'é' * (i % 3)} for {(i * 31) % 997}",
            None if i % 13 == 6 else Decimal(f"{(i * 104729) % 1_000_000 // 100}.{i % 100:02d}"),
            None if i % 17 == 8 else (i % 1000) / 7.0,
            datetime(2021, 1, 1) + timedelta(seconds=i * 37, microseconds=(i * 7) % 1_000_000),
            {"sku": f"SKU-{i % 500:04d}", "qty": i % 9, "big": 9007199254740993 + i, "tags": ["a", i % 3]})


def make_orders(src: Db, tgt: Db, rows: int = 3000) -> tuple[str, str]:
    a, b = name("src"), name("tgt")
    src.run(orders_ddl(src, a))
    tgt.run(orders_ddl(tgt, b))
    data = [order_row(i) for i in range(1, rows + 1)]
    src.insert(a, data)
    tgt.insert(b, data)
    return a, b


CHANGED = {18: "n = n + 1", 800: "s = {s_x}", 1502: "amount = amount + 0.01", 2222: "x = x + 0.5",
           2999: "ts = NULL"}
DELETED = {1, 1700, 3000}
INSERTED = {3001, 10_000}


def mutate_orders(tgt: Db, table: str) -> None:
    statements = [f"UPDATE {table} SET {change.format(s_x=tgt.concat('s', repr('x')))} WHERE id = {key}"
                  for key, change in CHANGED.items()]
    statements.append(f"DELETE FROM {table} WHERE id IN ({', '.join(map(str, DELETED))})")
    tgt.run(*statements)
    tgt.insert(table, [order_row(i) for i in sorted(INSERTED)])


def test_identical_tables_pass(dbs):
    src, tgt = dbs
    a, b = make_orders(src, tgt)
    result = run_check(src, a, tgt, b, ["id"])
    assert result.passed, result.detail
    assert result.total_differences == 0 and result.differences == []
    assert result.source == result.target == "3,000 rows, 64 segments"
    hashed = src.hashed_in(tgt)
    assert (hashed or "hashed in Python") in result.detail


@pytest.mark.parametrize("segments, bisect_rows", [(64, 2000), (4, 40), (1, 1)])
def test_changed_deleted_inserted_rows_are_reported_exactly(dbs, segments, bisect_rows):
    src, tgt = dbs
    a, b = make_orders(src, tgt)
    mutate_orders(tgt, b)
    result = run_check(src, a, tgt, b, ["id"], segments=segments, bisect_rows=bisect_rows)
    assert not result.passed
    assert reported(result) == {"missing_in_target": DELETED, "extra_in_target": INSERTED, "changed": set(CHANGED)}
    assert result.total_differences == 10
    assert "5 changed, 3 missing in target, 2 extra in target" in result.detail
    changed = {d.key: d for d in result.differences if d.kind == "changed"}
    assert {k: d.column for k, d in changed.items()} == {18: "n", 800: "s", 1502: "amount", 2222: "x", 2999: "ts"}
    assert changed[800].target == changed[800].source + "x"
    assert changed[2999].target is None and changed[2999].source is not None


def test_the_cap_limits_the_list_but_not_the_total(pg_dbs):
    src, tgt = pg_dbs
    a, b = make_orders(src, tgt, rows=500)
    tgt.run(f"DELETE FROM {b} WHERE id <= 20", f"UPDATE {b} SET n = 0 WHERE id > 480")
    result = run_check(src, a, tgt, b, ["id"], max_reported=7, bisect_rows=5)
    assert len(result.differences) == 7 and result.total_differences == 40
    assert "20 changed, 20 missing in target, 0 extra in target" in result.detail
    tgt.run(f"DELETE FROM {b}")
    target_empty = run_check(src, a, tgt, b, ["id"], max_reported=3)
    assert target_empty.total_differences == 500 and target_empty.target.startswith("0 rows, ")
    assert [(d.kind, d.key) for d in target_empty.differences] == [("missing_in_target", k) for k in (1, 2, 3)]


# ------------------------------------------------------------------------------------------------------
# column rules
# ------------------------------------------------------------------------------------------------------
def two_tables(src: Db, tgt: Db, src_cols: str, tgt_cols: str, src_rows: list[tuple[Any, ...]],
               tgt_rows: list[tuple[Any, ...]]) -> tuple[str, str]:
    a, b = name("src"), name("tgt")
    src.run(f"CREATE TABLE {a} (id {src.type('bigint', 'INTEGER')} PRIMARY KEY, {src_cols})")
    tgt.run(f"CREATE TABLE {b} (id {tgt.type('bigint', 'INTEGER')} PRIMARY KEY, {tgt_cols})")
    src.insert(a, src_rows)
    tgt.insert(b, tgt_rows)
    return a, b


def test_float_epsilon_within_and_outside(dbs):
    src, tgt = dbs
    source = [(1, 1.0), (2, 0.99999995), (3, 100.0), (4, 5.5), (5, None), (6, -2.0)]
    target = [(1, 1.0000004), (2, 1.00000004), (3, 100.01), (4, 5.5), (5, 0.0), (6, -2.0000009)]
    col = src.type("float8", "REAL"), tgt.type("float8", "REAL")
    a, b = two_tables(src, tgt, f"x {col[0]}", f"x {col[1]}", source, target)
    exact = run_check(src, a, tgt, b, ["id"])
    assert reported(exact)["changed"] == {1, 2, 3, 5, 6}
    loose = run_check(src, a, tgt, b, ["id"], rules={"x": ColumnRule(float_epsilon=1e-6)})
    assert reported(loose)["changed"] == {3, 5}, loose.detail


def test_numeric_scale_rule(dbs):
    src, tgt = dbs
    source = [(1, Decimal("1.2345")), (2, Decimal("1.2350")), (3, Decimal("1.2349")), (4, Decimal("12.5000"))]
    target = [(1, Decimal("1.23")), (2, Decimal("1.24")), (3, Decimal("1.24")), (4, Decimal("12.50"))]
    a, b = two_tables(src, tgt, f"v {src.type('numeric(12, 4)', 'NUMERIC')}",
                      f"v {tgt.type('numeric(12, 2)', 'NUMERIC')}", source, target)
    assert reported(run_check(src, a, tgt, b, ["id"]))["changed"] == {1, 2, 3}
    rounded = run_check(src, a, tgt, b, ["id"], rules={"v": ColumnRule(numeric_scale=2)})
    assert reported(rounded)["changed"] == {3}, rounded.detail  # 1.2349 -> 1.23, not 1.24


def test_timestamps_equal_as_instants_with_a_time_zone_rule(pg_dbs):
    src, tgt = pg_dbs
    utc = timezone.utc
    instants = [datetime(2024, 3, 1, 12, 0, tzinfo=utc), datetime(2024, 7, 1, 23, 30, 0, 250000, tzinfo=utc),
                datetime(2023, 12, 15, 8, 0, tzinfo=utc)]
    source = [(i + 1, t) for i, t in enumerate(instants)]
    shifted = [(1, instants[0].replace(tzinfo=None)), (2, instants[1].replace(tzinfo=None) + timedelta(hours=1)),
               (3, instants[2].replace(tzinfo=None))]
    a, b = two_tables(src, tgt, "t timestamptz", "t timestamp", source, shifted)  # target: naive UTC wall time
    assert reported(run_check(src, a, tgt, b, ["id"]))["changed"] == {1, 2, 3}  # an instant is not a naive value
    result = run_check(src, a, tgt, b, ["id"], rules={"t": ColumnRule(time_zone="UTC")})
    assert reported(result)["changed"] == {2}, result.detail
    paris = [(i + 1, t.astimezone(timezone(timedelta(hours=2 if i == 1 else 1))).replace(tzinfo=None))
             for i, t in enumerate(instants)]  # Europe/Paris local wall times (summer time for row 2)
    c, d = two_tables(src, tgt, "t timestamptz", "t timestamp", source, paris)
    assert run_check(src, c, tgt, d, ["id"], rules={"t": ColumnRule(time_zone="Europe/Paris")}).passed
    assert reported(run_check(src, c, tgt, d, ["id"], rules={"t": ColumnRule(time_zone="UTC")}))["changed"] == {1, 2, 3}


def test_same_instant_in_another_offset_is_equal_across_dialects(tmp_path, request):
    src = Db(_engine("pg", request, tmp_path, 0))
    tgt = Db(sa.create_engine(f"sqlite:///{tmp_path / 'tz.sqlite'}"))
    at = datetime(2024, 3, 1, 12, 0, tzinfo=timezone.utc)
    target = [(1, "2024-03-01 13:00:00+01:00"), (2, "2024-03-01 12:00:00"), (3, "2024-03-01 14:00:00+01:00")]
    a, b = two_tables(src, tgt, "t timestamptz", "t TIMESTAMP", [(1, at), (2, at), (3, at)], target)
    result = run_check(src, a, tgt, b, ["id"], rules={"t": ColumnRule(time_zone="UTC")})
    assert reported(result)["changed"] == {3}, result.detail
    src.engine.dispose()
    tgt.engine.dispose()


def test_trailing_spaces_with_trim(dbs):
    src, tgt = dbs
    source = [(1, "abc   "), (2, "abc"), (3, " abc"), (4, "x y  ")]
    target = [(1, "abc"), (2, "abc  "), (3, "abc"), (4, "x y")]
    a, b = two_tables(src, tgt, "s TEXT", "s TEXT", source, target)
    assert reported(run_check(src, a, tgt, b, ["id"]))["changed"] == {1, 2, 3, 4}
    assert reported(run_check(src, a, tgt, b, ["id"], rules={"s": ColumnRule(trim=True)}))["changed"] == {3}


def test_char_padding_and_case_rules_on_postgresql(pg_dbs):
    src, tgt = pg_dbs
    a, b = two_tables(src, tgt, "s char(6), c text", "s text, c text",
                      [(1, "abc", "Hello"), (2, "abc", "MiXeD"), (3, "ab", "same")],
                      [(1, "abc", "hello"), (2, "abc   ", "mixed"), (3, "abd", "same")])
    assert reported(run_check(src, a, tgt, b, ["id"]))["changed"] == {1, 2, 3}  # char(6) keeps its padding
    rules = {"s": ColumnRule(trim=True), "c": ColumnRule(case_insensitive=True)}
    loose = run_check(src, a, tgt, b, ["id"], rules=rules)
    assert reported(loose)["changed"] == {3} and "hashed in PostgreSQL" in loose.detail


def test_json_key_order_does_not_matter(dbs):
    src, tgt = dbs
    a, b = name("src"), name("tgt")
    src.run(f"CREATE TABLE {a} (id INTEGER PRIMARY KEY, doc {src.type('json', 'JSON')})",
            f"""INSERT INTO {a} VALUES (1, '{{"b": 1, "a": [2.50, {{"z": true, "y": null}}]}}'),
                (2, '{{"k": "v", "n": 1}}'), (3, '{{"x": 1}}')""")
    tgt.run(f"CREATE TABLE {b} (id INTEGER PRIMARY KEY, doc {tgt.type('jsonb', 'JSON')})",
            f"""INSERT INTO {b} VALUES (3, '{{"x": 2}}'), (2, '{{"n":1.0,"k":"v"}}'),
                (1, '{{"a":[2.5,{{"y":null,"z":true}}],"b":1}}')""")
    result = run_check(src, a, tgt, b, ["id"])
    assert reported(result)["changed"] == {3}, result.detail


def test_changes_that_postgresql_hash_functions_cannot_see(pg_dbs):
    """PostgreSQL's hash-join hashes collide on exactly such pairs; a checksum must still tell them apart."""
    src, tgt = pg_dbs
    cols = "big bigint, amount numeric, doc jsonb, x float8, at timestamptz, t time"
    base = (1, Decimal("1.5"), [[1, 2]], 1.0, datetime(2024, 1, 1, tzinfo=timezone.utc), None)
    changes = {2: {0: 2**32}, 3: {1: Decimal("-1.5")}, 4: {2: [[1], 2]}, 5: {2: None}, 6: {3: None},
               7: {1: Decimal("10000")}, 8: {5: datetime(2024, 1, 1, 1, 11, 34, 967296).time()}}
    src_rows = [(i, *base[:5], datetime(2024, 1, 1, 0, 0, 0, 1).time()) for i in range(1, 9)]
    src_rows[4] = (5, *base[:2], {}, *base[3:5], src_rows[4][6])  # {} hashes like NULL in jsonb_hash
    src_rows[5] = (6, *base[:3], 0.0, base[4], src_rows[5][6])  # 0.0 hashes like NULL in hashfloat8
    tgt_rows = [tuple(changes.get(r[0], {}).get(n - 1, v) if n else v for n, v in enumerate(r)) for r in src_rows]
    a, b = two_tables(src, tgt, cols, cols, src_rows, tgt_rows)
    result = run_check(src, a, tgt, b, ["id"])
    assert "hashed in PostgreSQL" in result.detail
    assert reported(result)["changed"] == set(changes), result.detail


def test_values_swapped_between_rows_are_found(dbs):
    """Per-segment sums must not be sums of per-column hashes: a swap would leave those unchanged."""
    src, tgt = dbs
    a, b = make_orders(src, tgt, rows=500)
    n = {i: order_row(i)[1] for i in range(1, 501)}
    # one swap per segment of 50 keys: a sum of per-column hashes misses each with a fair chance
    firsts = [next(i for i in range(50 * j + 1, 50 * j + 49) if None not in (n[i], n[i + 1]) and n[i] != n[i + 1])
              for j in range(10)]
    tgt.run(*(f"UPDATE {b} SET n = {n[i + 1 - d]} WHERE id = {i + d}" for i in firsts for d in (0, 1)))
    result = run_check(src, a, tgt, b, ["id"], segments=10)
    assert reported(result) == {"missing_in_target": set(), "extra_in_target": set(),
                                "changed": {i + d for i in firsts for d in (0, 1)}}


def test_text_holding_json_is_compared_as_json_with_the_rule(pg_dbs):
    src, tgt = pg_dbs
    a, b = two_tables(src, tgt, "doc text", "doc jsonb", [(1, '{"b": 1, "a": 2}'), (2, 'not json'), (3, '[1]')], [])
    tgt.run(f"""INSERT INTO {b} VALUES (1, '{{"a": 2, "b": 1}}'), (2, '"not json"'), (3, '[2]')""")
    result = run_check(src, a, tgt, b, ["id"], rules={"doc": ColumnRule(json=True)})
    assert reported(result)["changed"] == {2, 3}  # "not json" (text) vs a JSON string
    assert "SQL normalization failed" in result.detail  # PostgreSQL cannot cast 'not json': Python compares


def test_mapped_columns_and_integer_to_bool(pg_dbs):
    src, tgt = pg_dbs
    a, b = two_tables(src, tgt, "full_name text, cents integer, flag integer", "name text, amount numeric, flag bool",
                      [(1, "Ann", 1250, 1), (2, "Bob", 99, 0), (3, "Cy", 100, 2)],
                      [(1, "ANN", Decimal("12.50"), True), (2, "BOB", Decimal("0.98"), False), (3, "CY", 1, False)])
    result = run_check(src, a, tgt, b, ["id"], columns={"name": "upper(full_name)", "amount": "cents / 100.0"})
    assert {(d.key, d.column) for d in result.differences} == {(2, "amount"), (3, "flag")}, result.detail
    assert "hashed in PostgreSQL" in result.detail


# ------------------------------------------------------------------------------------------------------
# keys: composite, text, timestamp
# ------------------------------------------------------------------------------------------------------
def test_composite_key(dbs):
    src, tgt = dbs
    a, b = name("src"), name("tgt")
    ddl = "(tenant INTEGER NOT NULL, id INTEGER NOT NULL, role TEXT, PRIMARY KEY (tenant, id))"
    src.run(f"CREATE TABLE {a} {ddl}")
    tgt.run(f"CREATE TABLE {b} {ddl}")
    rows = [(t, m, f"role {(t + m) % 5}") for t in range(1, 41) for m in range(1, 51)]
    src.insert(a, rows)
    tgt.insert(b, [r for r in rows if (r[0], r[1]) not in {(3, 7), (40, 50)}])
    tgt.insert(b, [(2, 51, "new"), (41, 1, "new")])
    tgt.run(f"UPDATE {b} SET role = 'boss' WHERE tenant = 17 AND id = 1")
    result = run_check(src, a, tgt, b, ["tenant", "id"], segments=8, bisect_rows=30)
    assert reported(result) == {"missing_in_target": {(3, 7), (40, 50)}, "extra_in_target": {(2, 51), (41, 1)},
                                "changed": {(17, 1)}}, result.detail


TEXT_KEYS = ["a", "B", "b", "ä", "Z", "a ", "ab", "A-1", "a-2", "10", "9", "😀", "é", "e", "zz", "Zz", "_x", ""]


def test_text_key_sorts_alike_on_every_database(dbs):
    src, tgt = dbs
    a, b = name("src"), name("tgt")
    keys = TEXT_KEYS + [f"user-{i:04d}{'é' if i % 3 else 'E'}" for i in range(600)]
    icu = src.pg and _has_icu(src)  # a source collation whose order is not byte order
    code_type = 'text COLLATE "en-x-icu"' if icu else "TEXT"
    nopad = "VARCHAR(64) COLLATE utf8mb4_nopad_bin"  # every key distinct: 'a ' is not 'a', 'A' is not 'a'
    src.run(f"CREATE TABLE {a} (code {src.type(code_type, code_type, nopad)} PRIMARY KEY, v INTEGER)")
    tgt.run(f"CREATE TABLE {b} (code {tgt.type('TEXT', 'TEXT', nopad)} PRIMARY KEY, v INTEGER)")
    src.insert(a, [(k, i) for i, k in enumerate(keys)])
    tgt.insert(b, [(k, i + (1 if k in ("B", "user-0301é") else 0)) for i, k in enumerate(keys)
                   if k not in ("ä", "a ", "user-0041é")] + [("Ä", 1), ("user-9999", 2)])
    for segments, bisect_rows in ((64, 2000), (5, 7), (5000, 1)):  # 5000: capped at 1,024 quantile segments
        result = run_check(src, a, tgt, b, ["code"], segments=segments, bisect_rows=bisect_rows)
        assert reported(result) == {"missing_in_target": {"ä", "a ", "user-0041é"},
                                    "extra_in_target": {"Ä", "user-9999"}, "changed": {"B", "user-0301é"}}


def _has_icu(db: Db) -> bool:
    with db.engine.connect() as conn:
        return conn.exec_driver_sql("SELECT count(*) FROM pg_collation WHERE collname = 'en-x-icu'").scalar() == 1


def test_timestamp_key(dbs):
    src, tgt = dbs
    a, b = name("src"), name("tgt")
    start = datetime(2024, 1, 1)
    for db, t in ((src, a), (tgt, b)):
        db.run(f"CREATE TABLE {t} (at {db.type('timestamp', 'TIMESTAMP')} PRIMARY KEY, v INTEGER)")
    stamps = [start + timedelta(minutes=7 * i, microseconds=i % 3) for i in range(500)]
    src.insert(a, [(s, i) for i, s in enumerate(stamps)])
    tgt.insert(b, [(s, i + (i == 250)) for i, s in enumerate(stamps) if i not in (0, 499)] + [(start, 99)])
    result = run_check(src, a, tgt, b, ["at"], segments=16, bisect_rows=10)
    shown = {kind: {v if isinstance(v, datetime) else datetime.fromisoformat(v) for v in keys}
             for kind, keys in reported(result).items()}
    assert shown == {"missing_in_target": {stamps[499]}, "extra_in_target": set(),
                     "changed": {stamps[0], stamps[250]}}, result.detail


def test_extreme_integer_keys(dbs):
    src, tgt = dbs
    keys = [-(2**63), -(2**62), -1, 0, 1, 2**62, 2**63 - 1]
    a, b = two_tables(src, tgt, "v INTEGER", "v INTEGER", [(k, 1) for k in keys], [(k, 1) for k in keys[1:]])
    tgt.run(f"UPDATE {b} SET v = 2 WHERE id = {2**63 - 1}")
    result = run_check(src, a, tgt, b, ["id"], segments=3, bisect_rows=1)
    assert reported(result) == {"missing_in_target": {-(2**63)}, "extra_in_target": set(), "changed": {2**63 - 1}}


# ------------------------------------------------------------------------------------------------------
# random tables, random mutations: exactly the mutated keys
# ------------------------------------------------------------------------------------------------------
VALUES = st.tuples(
    st.none() | st.integers(-(10**12), 10**12),
    st.none() | st.text(alphabet="ab é\t😀'\\,", max_size=6),
    st.none() | st.floats(allow_nan=False, allow_infinity=False),
    st.none() | st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)),
)
KINDS = ["integer", "text", "number", "datetime"]


def _differs(old: tuple[Any, ...], new: tuple[Any, ...]) -> bool:
    return any(canonical(a, kind=k) != canonical(b, kind=k) if a is not None and b is not None else (a is None) !=
               (b is None) for a, b, k in zip(old, new, KINDS, strict=True))


@st.composite
def table_and_mutations(draw, max_rows: int = 300):
    rows = draw(st.dictionaries(st.integers(-5000, 5000), VALUES, max_size=max_rows))
    keys = sorted(rows)
    deleted = set(draw(st.lists(st.sampled_from(keys), unique=True, max_size=8))) if keys else set()
    remaining = [k for k in keys if k not in deleted]
    changed: dict[int, tuple[Any, ...]] = {}
    for k in draw(st.lists(st.sampled_from(remaining), unique=True, max_size=8)) if remaining else []:
        new = draw(VALUES)
        if _differs(rows[k], new):
            changed[k] = new
    for k1, k2, col in draw(st.lists(st.tuples(st.sampled_from(remaining), st.sampled_from(remaining),
                                                st.integers(0, 3)), max_size=4)) if remaining else []:
        if k1 == k2 or k1 in changed or k2 in changed:
            continue  # a value swapped between two rows: sums of per-column hashes would not see it
        new1 = (*rows[k1][:col], rows[k2][col], *rows[k1][col + 1:])
        new2 = (*rows[k2][:col], rows[k1][col], *rows[k2][col + 1:])
        if _differs(rows[k1], new1):
            changed[k1], changed[k2] = new1, new2
    inserted = draw(st.dictionaries(st.integers(-6000, 6000).filter(lambda k: k not in rows), VALUES, max_size=6))
    segments = draw(st.integers(1, 12))
    bisect_rows = draw(st.integers(1, 60))
    return rows, deleted, changed, inserted, segments, bisect_rows


def _check_random(src: Db, tgt: Db, case) -> None:
    rows, deleted, changed, inserted, segments, bisect_rows = case
    a, b = name("src"), name("tgt")
    for db, t in ((src, a), (tgt, b)):
        db.run(f"CREATE TABLE {t} (id INTEGER PRIMARY KEY, n {db.type('bigint', 'INTEGER')}, s TEXT, "
               f"x {db.type('float8', 'REAL')}, ts {db.type('timestamp', 'TIMESTAMP')})")
    src.insert(a, [(k, *v) for k, v in rows.items()])
    target = {k: changed.get(k, v) for k, v in rows.items() if k not in deleted} | inserted
    tgt.insert(b, [(k, *v) for k, v in target.items()])
    result = run_check(src, a, tgt, b, ["id"], segments=segments, bisect_rows=bisect_rows, max_reported=1000)
    assert reported(result) == {"missing_in_target": deleted, "extra_in_target": set(inserted),
                                "changed": set(changed)}, result.detail
    assert result.passed == (not (deleted or inserted or changed))
    src.run(f"DROP TABLE {a}")
    tgt.run(f"DROP TABLE {b}")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=table_and_mutations())
def test_random_mutations_sqlite(tmp_path, case):
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'random.sqlite'}")
    try:
        _check_random(Db(engine), Db(engine), case)
    finally:
        engine.dispose()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=table_and_mutations(max_rows=150))
def test_random_mutations_postgresql(pg_dbs, case):
    _check_random(*pg_dbs, case)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=table_and_mutations(max_rows=150))
def test_random_mutations_mariadb(mariadb_dbs, case):
    """Hashed in MariaDB's SQL and drilled down: exactly the mutated keys."""
    _check_random(*mariadb_dbs, case)


# ------------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------------
def test_bad_input_names_the_field(pg_dbs):
    src, tgt = pg_dbs
    a, b = name("users"), name("users_v2")
    src.run(f"CREATE TABLE {a} (id integer PRIMARY KEY, code text, email text)")
    tgt.run(f"CREATE TABLE {b} (uid integer PRIMARY KEY, code integer, email text)")
    cases = [
        (dict(key=["id"]), f"key: column 'id' is not in target table '{b}'"),
        (dict(key=["uid"]), f"key: column 'uid' is not in source table '{a}'"),
        (dict(key=["code"]), "key: column 'code' has incompatible types (source text and target integer)"),
        (dict(key=[]), "key: at least one key column is needed"),
        (dict(key=["uid"], columns={"uid": "id", "nope": "email"}), f"columns.nope: target table '{b}' has no column"),
        (dict(key=["uid"], columns={"uid": "id", "email": "lower(no_such_column)"}), "columns.email: 'lower("),
        (dict(key=["uid"], columns={"uid": "id"}, rules={"zip": ColumnRule(trim=True)}), "rules.zip: not a compared"),
        (dict(key=["uid"], columns={"uid": "id"}, rules={"uid": ColumnRule(trim=True)}), "rules.uid: keys are"),
        (dict(key=["uid"], columns={"uid": "id"}, rules={"email": ColumnRule(time_zone="Mars/Base")}),
         "rules.email.time_zone: unknown time zone 'Mars/Base'"),
        (dict(key=["uid"], columns={"uid": "id"}, segments=0), "segments: must be at least 1, got 0"),
        (dict(key=["uid"], columns={"uid": "id"}, bisect_rows=0), "bisect_rows: must be at least 1, got 0"),
    ]
    for kwargs, message in cases:
        with pytest.raises(VerifySpecError) as info:
            run_check(src, a, tgt, b, **kwargs)
        assert message in str(info.value), (kwargs, str(info.value))
        assert isinstance(info.value, MigrateError)
    with pytest.raises(VerifySpecError, match=r"source\.table: table 'no_such_table' does not exist"):
        run_check(src, "no_such_table", tgt, b, ["uid"])
    with pytest.raises(VerifySpecError, match=r"source\.query: the query fails"):
        checksums(Side(src.engine, query="SELECT nope FROM nowhere", label="source"), Side(tgt.engine, table=b),
                  ["uid"])


@pytest.mark.parametrize("key_type", ["integer", "text"])
def test_null_keys_are_refused(dbs, key_type):
    src, tgt = dbs
    a, b = name("src"), name("tgt")
    for db, t in ((src, a), (tgt, b)):
        db.run(f"CREATE TABLE {t} (id {db.type(key_type, key_type)}, v integer)")
    src.insert(a, [("1" if key_type == "text" else 1, 1), (None, 2)])
    tgt.insert(b, [("1" if key_type == "text" else 1, 1)])
    with pytest.raises(VerifySpecError, match=r"key: source has rows whose key \(id\) is NULL"):
        run_check(src, a, tgt, b, ["id"])


def test_query_sides_and_filters(dbs):
    src, tgt = dbs
    a, b = make_orders(src, tgt)
    mutate_orders(tgt, b)
    source = Side(src.engine, query=f"SELECT id, n, s FROM {a} WHERE id % 2 = 0", label="source")
    target = Side(tgt.engine, table=b, filter="id % 2 = 0", label="target")
    result = checksums(source, target, ["id"], segments=3, bisect_rows=10)
    # even keys only, and only the columns the query has (n, s): ts/amount/x changes are out of view
    assert reported(result) == {"missing_in_target": {1700, 3000}, "extra_in_target": {10_000}, "changed": {18, 800}}
    assert result.source == "1,500 rows, 3 segments" and result.target == "1,499 rows, 3 segments"
