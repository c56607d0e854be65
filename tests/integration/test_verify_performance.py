"""compare_performance on real SQLite, PostgreSQL and MariaDB: equal workloads pass, a slower target fails or warns."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.verify.performance import BenchmarkError, BenchmarkQuery, compare_performance

ROWS = 100_000

# A few milliseconds of work, so that timer noise is small next to it
BUSY = {
    "postgresql": "SELECT count(*) FROM generate_series(1, 300000) AS g(x) WHERE x % 7 = 0",
    "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 100000) "
              "SELECT count(*) FROM c WHERE x % 7 = 0",
    "mariadb": "SELECT count(*) FROM seq_1_to_300000 WHERE seq % 7 = 0",  # MariaDB's sequence engine
}
SERIES = {
    "postgresql": f"SELECT g, g FROM generate_series(1, {ROWS}) AS g",
    "sqlite": f"WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < {ROWS}) SELECT x, x FROM c",
    "mariadb": f"SELECT seq, seq FROM seq_1_to_{ROWS}",
}


@pytest.fixture
def sides(engine, database):
    """(source, target): two engines on the same database, with the same rows in an indexed table and in
    a table without the index."""
    with engine.begin() as conn:
        for table in ("items_indexed", "items_plain"):
            conn.execute(text(f"CREATE TABLE {table} (id INTEGER NOT NULL, code INTEGER NOT NULL)"))
            conn.execute(text(f"INSERT INTO {table} (id, code) {SERIES[database.dialect]}"))
        conn.execute(text("CREATE INDEX items_indexed_code ON items_indexed (code)"))
        if database.dialect == "postgresql":
            conn.execute(text("ANALYZE items_indexed"))
            conn.execute(text("ANALYZE items_plain"))
    target = create_engine(database.sqlalchemy_url)
    dialect_for(target)  # prepared like the source: the two sides differ in nothing but being two engines
    yield engine, target
    target.dispose()


def test_same_query_on_both_sides_passes(sides, database):
    source, target = sides
    # other processes share this machine: a burst of load can still skew one attempt, not three in a row
    for _attempt in range(3):
        result = compare_performance(source, target, [BenchmarkQuery("busy", BUSY[database.dialect])], runs=9)
        if result.passed:
            break
    assert result.check == "performance"
    assert result.passed is True and result.warning is False, result.detail
    assert result.differences == []
    header, row = result.detail.splitlines()[1:]
    assert header.split() == ["query", "source", "ms", "target", "ms", "change", "%"]
    assert row.split()[0] == "busy"


def test_slower_target_fails(sides):
    source, target = sides
    lookup = BenchmarkQuery("lookup", "SELECT id FROM items_indexed WHERE code = 77777",
                            target_sql="SELECT id FROM items_plain WHERE code = 77777")
    same = BenchmarkQuery("one", "SELECT 1")
    result = compare_performance(source, target, [lookup, same], runs=3, min_delta_ms=0.5)
    assert result.passed is False and result.warning is False
    assert result.total_differences == 1
    (slow,) = result.differences
    assert slow.kind == "performance" and slow.key == "lookup"
    assert slow.target > slow.source
    change = float(slow.detail.split()[1])
    assert change > 10
    assert result.detail.startswith("1 of 2 queries slower than the source by more than 10 %")
    assert "lookup" in result.detail and "one" in result.detail

    warned = compare_performance(source, target, [lookup], runs=3, fail_on_degradation=False)
    assert warned.passed is True and warned.warning is True
    assert "(warning only)" in warned.detail and warned.differences[0].key == "lookup"


def test_failing_query_and_bad_settings_are_named(sides):
    source, target = sides
    broken = BenchmarkQuery("by_email", "SELECT id FROM items_plain", target_sql="SELECT email FROM items_plain")
    with pytest.raises(BenchmarkError) as err:
        compare_performance(source, target, [broken], runs=1, warmup=0)
    assert "benchmark query 'by_email' failed on the target" in str(err.value)
    assert err.value.query == "by_email" and err.value.transient is False

    # percent signs in plan SQL are literal, not driver placeholders
    literal = BenchmarkQuery("literal", "SELECT '100%' AS pct")
    assert compare_performance(source, target, [literal], runs=1, warmup=0, tolerance_pct=1e9).passed

    with pytest.raises(BenchmarkError) as bad:
        compare_performance(source, target, [BenchmarkQuery("q", " "), BenchmarkQuery("q", "SELECT 1")],
                            runs=0, warmup=-1)
    message = str(bad.value)
    for expected in ("performance.runs: must be at least 1", "performance.warmup: must be 0 or more",
                     "duplicate names 'q'", "performance.queries[0] ('q').source_sql: empty"):
        assert expected in message
    with pytest.raises(BenchmarkError, match="no queries"):
        compare_performance(source, target, [])
