"""Row checks (row_counts, data_sample) against real PostgreSQL and SQLite databases, within and across dialects.

Each case fills a source and a target table with the same rows, then crafts one difference (a changed
value, a missing row, a float off by more than the tolerance, a timestamp written in another zone, trailing
spaces) and checks that the check fails naming it, and passes where a column rule says the values are equal.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.verify.base import ColumnRule, Side
from airflow_migrate_provider.core.verify.rows import data_sample, row_counts
from airflow_migrate_provider.core.verify.structure import VerifyInputError

ROWS = 40
ITEMS = {
    "postgresql": "CREATE TABLE items (id integer PRIMARY KEY, name varchar(40), price numeric(12,2), "
                  "ratio double precision, seen_at timestamp, meta jsonb)",
    "sqlite": "CREATE TABLE items (id INTEGER PRIMARY KEY, name VARCHAR(40), price NUMERIC(12,2), ratio REAL, "
              "seen_at TIMESTAMP, meta JSON)",
    "mysql": "CREATE TABLE items (id integer PRIMARY KEY, name varchar(40), price decimal(12,2), ratio double, "
             "seen_at datetime(6), meta json)",
}
PAIRS = ["pg-pg", "sqlite-sqlite", "pg-sqlite", "sqlite-pg", "mariadb-mariadb", "pg-mariadb", "mariadb-pg",
         "sqlite-mariadb"]


@dataclass
class Pair:
    source: Engine
    target: Engine

    def sides(self, table: str = "items", **target: str) -> tuple[Side, Side]:
        return Side(self.source, table=table, label="source"), Side(self.target, table=table, label="target",
                                                                     **target)


def run(engine: Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement.replace("%", "%%") if engine.dialect.name != "sqlite" else statement)


def concat(engine: Engine, *parts: str) -> str:
    return f"CONCAT({', '.join(parts)})" if engine.dialect.name == "mysql" else " || ".join(parts)


def item(i: int) -> dict:
    return {"id": i, "name": f"item {i}", "price": Decimal(i) / 4, "ratio": i / 7,
            "seen_at": datetime(2024, 1, 1, 12, 0, i % 60, 250_000),
            "meta": {"n": i, "tags": ["a", "b"], "big": 12345678901234567890, "f": 1.10}}


def insert_items(engine: Engine, rows: list[dict], *, reorder_json: bool = False) -> None:
    pg = engine.dialect.name == "postgresql"
    meta = "CAST(:meta AS jsonb)" if pg else ":meta"
    params = []
    for row in rows:
        meta_value = dict(reversed(list(row["meta"].items()))) if reorder_json else row["meta"]
        typed = pg or engine.dialect.name == "mysql"
        params.append({**row, "meta": json.dumps(meta_value).replace("1.1", "1.10" if reorder_json else "1.1"),
                       "seen_at": row["seen_at"] if typed else row["seen_at"].isoformat(sep=" "),
                       "price": row["price"] if typed else str(row["price"])})
    with engine.begin() as conn:
        conn.execute(sa.text(f"INSERT INTO items VALUES (:id, :name, :price, :ratio, :seen_at, {meta})"), params)


def fill(pair: Pair, rows: int = ROWS) -> None:
    run(pair.source, ITEMS[pair.source.dialect.name])
    run(pair.target, ITEMS[pair.target.dialect.name])
    insert_items(pair.source, [item(i) for i in range(1, rows + 1)])
    insert_items(pair.target, [item(i) for i in range(1, rows + 1)], reorder_json=True)


def _engine(url: str) -> Engine:
    engine = sa.create_engine(url)
    if engine.dialect.name == "postgresql":
        run(engine, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
    if engine.dialect.name == "mysql":
        with engine.connect() as conn:
            tables = conn.exec_driver_sql("SELECT table_name FROM information_schema.tables "
                                          "WHERE table_schema = DATABASE()").scalars().all()
        run(engine, *(f"DROP TABLE `{t}`" for t in tables))
    return engine


def _url(request, kind: str, index: int, tmp_path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / ('source.sqlite', 'target.sqlite')[index]}"
    return request.getfixturevalue({"pg": "pg_urls", "mariadb": "mariadb_urls"}[kind])[index]


@pytest.fixture(params=PAIRS)
def pair(request, tmp_path) -> Iterator[Pair]:
    src, _, tgt = request.param.partition("-")
    source = _engine(_url(request, src, 0, tmp_path))
    target = _engine(_url(request, tgt, 1, tmp_path))
    yield Pair(source, target)
    source.dispose()
    target.dispose()


@pytest.fixture
def pg_pair(pg_urls) -> Iterator[Pair]:
    pair = Pair(_engine(pg_urls[0]), _engine(pg_urls[1]))
    yield pair
    pair.source.dispose()
    pair.target.dispose()


def changes(result) -> list[tuple]:
    return [(d.kind, d.key, d.column, d.source, d.target) for d in result.differences]


def test_row_counts_match_and_differ(pair):
    fill(pair)
    source, target = pair.sides()
    result = row_counts(source, target)
    assert result.passed, result.detail
    assert (result.check, result.source, result.target) == ("row_counts", "40 rows", "40 rows")

    run(pair.target, "DELETE FROM items WHERE id > 37")
    result = row_counts(source, target)
    assert not result.passed
    assert (result.source, result.target, result.total_differences) == ("40 rows", "37 rows", 1)
    assert "3 rows fewer than the source" in result.detail
    assert result.differences[0].kind == "count"

    # each side counts with its own filter (a % in the filter is SQL, not a driver placeholder)
    filtered = row_counts(Side(pair.source, table="items", filter="name LIKE 'item 1%' AND id <= 30"),
                          Side(pair.target, table="items", filter="name LIKE 'item 1%'"))
    assert filtered.passed and filtered.source == "11 rows", filtered.detail


def test_data_sample_passes_on_identical_rows(pair):
    fill(pair)  # the target's JSON has its keys in another order and 1.10 for 1.1
    result = data_sample(*pair.sides(), key=["id"], size=ROWS, seed=1)
    assert result.passed, (result.detail, changes(result))
    assert (result.check, result.source, result.target) == ("data_sample", "40 rows sampled", "40 of 40 found")
    assert "5 columns compared" in result.detail


def test_one_changed_value_and_a_missing_row_fail(pair):
    fill(pair)
    run(pair.target, "UPDATE items SET name = 'renamed' WHERE id = 7", "DELETE FROM items WHERE id = 12")
    result = data_sample(*pair.sides(), key=["id"], size=ROWS + 10, seed=5)
    assert not result.passed
    assert changes(result) == [("changed", 7, "name", "item 7", "renamed"),
                               ("missing_in_target", 12, None, None, None)]
    assert result.total_differences == 2
    assert result.target == "39 of 40 found"
    assert "1 missing in target, 1 row with 1 changed value" in result.detail


def test_float_tolerance(pair):
    fill(pair)
    run(pair.target, "UPDATE items SET ratio = ratio + 0.0000001 WHERE id = 3")
    source, target = pair.sides()
    assert changes(data_sample(source, target, ["id"], size=ROWS, seed=2))[0][:3] == ("changed", 3, "ratio")
    close = data_sample(source, target, ["id"], rules={"ratio": ColumnRule(float_epsilon=1e-6)}, size=ROWS, seed=2)
    assert close.passed, changes(close)

    run(pair.target, "UPDATE items SET ratio = ratio + 0.01 WHERE id = 4")
    far = data_sample(source, target, ["id"], rules={"ratio": ColumnRule(float_epsilon=1e-6)}, size=ROWS, seed=2)
    assert [(d.key, d.column) for d in far.differences] == [(4, "ratio")]


def test_trailing_spaces_with_trim(pair):
    fill(pair)
    run(pair.target, f"UPDATE items SET name = {concat(pair.target, 'name', repr('   '))} WHERE id = 9")
    source, target = pair.sides()
    assert changes(data_sample(source, target, ["id"], size=ROWS, seed=3)) == [
        ("changed", 9, "name", "item 9", "item 9   ")]
    assert data_sample(source, target, ["id"], rules={"name": ColumnRule(trim=True)}, size=ROWS, seed=3).passed


@pytest.mark.parametrize("target_dialect", ["postgresql", "sqlite"])
def test_timestamp_in_another_zone_equal_as_instants(pg_urls, tmp_path, target_dialect):
    source = _engine(pg_urls[0])
    target = _engine(pg_urls[1] if target_dialect == "postgresql" else f"sqlite:///{tmp_path / 't.sqlite'}")
    try:
        run(source, "CREATE TABLE events (id integer PRIMARY KEY, at timestamp)",
            "INSERT INTO events VALUES (1, '2024-03-01 12:00:00'), (2, '2024-03-01 23:30:00.5')")
        if target_dialect == "postgresql":
            run(target, "CREATE TABLE events (id integer PRIMARY KEY, at timestamptz)",
                "INSERT INTO events VALUES (1, '2024-03-01 14:00:00+02'), (2, '2024-03-02 01:30:00.5+02')")
        else:
            run(target, "CREATE TABLE events (id INTEGER PRIMARY KEY, at TIMESTAMP)",
                "INSERT INTO events VALUES (1, '2024-03-01T14:00:00+02:00'), (2, '2024-03-02 01:30:00.500+02:00')")
        sides = Side(source, table="events"), Side(target, table="events")
        plain = data_sample(*sides, key=["id"], size=10, seed=1)
        assert not plain.passed and plain.total_differences == 2
        assert data_sample(*sides, key=["id"], rules={"at": ColumnRule(time_zone="UTC")}, size=10, seed=1).passed
        paris = data_sample(*sides, key=["id"], rules={"at": ColumnRule(time_zone="Europe/Paris")}, size=10, seed=1)
        assert not paris.passed  # naive source values read as Paris time are an hour earlier than the target's
    finally:
        source.dispose()
        target.dispose()


def test_sample_is_seeded_and_random(pair):
    fill(pair)
    run(pair.target, "UPDATE items SET name = 'x'")

    def sampled(seed: int) -> list[int]:
        result = data_sample(*pair.sides(), key=["id"], size=5, seed=seed)
        assert result.source == "5 rows sampled" and result.total_differences == 5
        return [d.key for d in result.differences]

    first = sampled(11)
    assert first == sampled(11)
    assert first != [1, 2, 3, 4, 5] and len(set(first)) == 5
    assert any(sampled(seed) != first for seed in (12, 13))


def test_mapped_columns_and_composite_key(pair):
    run(pair.source, "CREATE TABLE people (country VARCHAR(2), n INTEGER, first_name TEXT, last_name TEXT, "
                     "PRIMARY KEY (country, n))",
        "INSERT INTO people VALUES ('fr', 1, 'Ada', 'L'), ('fr', 2, 'Bo', 'M'), ('de', 1, 'Cy', 'N')")
    run(pair.target, "CREATE TABLE people (country VARCHAR(2), n INTEGER, full_name TEXT, PRIMARY KEY (country, n))",
        "INSERT INTO people VALUES ('fr', 1, 'Ada L'), ('fr', 2, 'Bo M'), ('de', 1, 'Cy N')")
    sides = pair.sides("people")
    mapping = {"full_name": concat(pair.source, "first_name", "' '", "last_name")}
    result = data_sample(*sides, key=["country", "n"], columns=mapping, size=10, seed=4)
    assert result.passed, changes(result)
    assert "1 column compared" in result.detail

    run(pair.target, "UPDATE people SET full_name = 'Bo X' WHERE country = 'fr' AND n = 2")
    result = data_sample(*sides, key=["country", "n"], columns=mapping, size=10, seed=4)
    assert changes(result) == [("changed", ("fr", 2), "full_name", "Bo M", "Bo X")]


def test_query_sides(pair):
    fill(pair)
    source = Side(pair.source, query="SELECT id, name, price FROM items WHERE id <= 10", label="source")
    target = Side(pair.target, table="items", filter="id <= 10", label="target")
    counts = row_counts(source, target)
    assert counts.passed and counts.target == "10 rows", counts.detail
    result = data_sample(source, target, ["id"], rules={"price": ColumnRule(numeric_scale=1)}, size=100, seed=1)
    assert result.passed and result.source == "10 rows sampled", changes(result)
    assert "2 columns compared" in result.detail


def test_big_postgresql_table_is_sampled_by_pages(pg_pair):
    for engine in (pg_pair.source, pg_pair.target):
        run(engine, "CREATE TABLE big AS SELECT g AS id, md5(g::text) AS payload FROM generate_series(1, 250000) g",
            "ALTER TABLE big ADD PRIMARY KEY (id)", "ANALYZE big")
    run(pg_pair.target, "UPDATE big SET payload = 'changed' WHERE id % 2 = 0")
    sides = pg_pair.sides("big")
    result = data_sample(*sides, key=["id"], size=500, seed=9)
    assert "TABLESAMPLE SYSTEM" in result.detail and result.source == "500 rows sampled", result.detail
    # about half the sampled rows differ: 100 are listed, the total is exact
    assert 150 < result.total_differences < 350 and len(result.differences) == 100
    assert f"{result.total_differences} changed values" in result.detail
    reported = [d.key for d in result.differences]
    assert all(k % 2 == 0 for k in reported) and reported == sorted(reported)
    assert reported == [d.key for d in data_sample(*sides, key=["id"], size=500, seed=9).differences]


def test_bad_input_names_the_field(pair):
    fill(pair)
    source, target = pair.sides()

    def error(**kwargs) -> str:
        with pytest.raises(VerifyInputError) as raised:
            data_sample(**{"source": source, "target": target, "key": ["id"], "seed": 1, **kwargs})
        return str(raised.value)

    assert error(size=0) == "size: must be at least 1, got 0"
    assert error(key=["uid"]).startswith("key: key column 'uid' is not a column of the target")
    assert error(rules={"name": ColumnRule(numeric_scale=2)}) == (
        "tolerances.name.numeric_scale: column 'name' is text, not a number")
    assert error(rules={"price": ColumnRule(time_zone="UTC")}) == (
        "tolerances.price.time_zone: column 'price' is number, not a timestamp")
    assert error(rules={"seen_at": ColumnRule(time_zone="Mars/Olympus")}) == (
        "tolerances.seen_at.time_zone: unknown time zone 'Mars/Olympus'")
    assert error(rules={"nope": ColumnRule(trim=True)}).startswith("tolerances.nope: column 'nope' is not compared")
    assert error(columns={"name": "no_such_column || 'x'"}).startswith(
        "columns.name: 'no_such_column || 'x'' fails on the source database:")
    assert error(columns={"label": "name"}).startswith("columns.label: the target (items) has no column 'label'")
    assert error(source=Side(pair.source, table="itemz")) == (
        "source.table: table 'itemz' does not exist in the source database")
    assert error(source=Side(pair.source, table="items", filter="no_such_column > 1")).startswith(
        "source.filter: sampling keys fails on the source database:")
    with pytest.raises(VerifyInputError, match=r"^target.filter: counting rows fails on the target database"):
        row_counts(source, Side(pair.target, table="items", filter="bogus = 1"))
    with pytest.raises(VerifyInputError, match=r"^target.table: table 'gone' does not exist"):
        row_counts(source, Side(pair.target, table="gone"))
    with pytest.raises(VerifyInputError, match=r"^source.query: the query fails on the source database"):
        data_sample(Side(pair.source, query="SELECT nothing FROM nowhere"), target, ["id"])


def test_in_memory_sqlite_sides_are_read_in_one_thread():
    engine = sa.create_engine("sqlite://")  # every thread would get its own, empty, in-memory database
    try:
        run(engine, ITEMS["sqlite"], "CREATE TABLE copy AS SELECT * FROM items")
        insert_items(engine, [item(i) for i in range(1, 6)])
        run(engine, "INSERT INTO copy SELECT * FROM items")
        source, target = Side(engine, table="items"), Side(engine, table="copy")
        assert row_counts(source, target).passed
        assert data_sample(source, target, ["id"], size=10).passed
    finally:
        engine.dispose()
