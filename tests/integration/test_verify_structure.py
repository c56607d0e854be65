"""Structure checks (schemas, indexes, constraints) against real PostgreSQL and SQLite databases.

Each case builds a source and a target table, the same except for one crafted difference, and checks that
the check passes on identical structure and fails naming the difference by its id. The cross-dialect cases
compare a PostgreSQL table with its SQLite equivalent.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.verify.base import Side
from airflow_migrate_provider.core.verify.structure import (
    VerifyInputError,
    constraints,
    describe_columns,
    indexes,
    schemas,
)

USERS = {
    "postgresql": "CREATE TABLE users (id serial PRIMARY KEY, email varchar(120) NOT NULL UNIQUE, name text, "
                  "created_at timestamp DEFAULT now())",
    "sqlite": "CREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(120) NOT NULL UNIQUE, name TEXT, "
              "created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)",
    "mysql": "CREATE TABLE users (id integer AUTO_INCREMENT PRIMARY KEY, email varchar(120) NOT NULL UNIQUE, "
             "name text, created_at datetime DEFAULT CURRENT_TIMESTAMP)",
}
ORDERS = ("CREATE TABLE orders (id {id} PRIMARY KEY, user_id INTEGER {fk}, amount NUMERIC({precision},2) "
          "{amount_null} DEFAULT 0, status VARCHAR(20) DEFAULT 'new', note TEXT{check})")


def orders_sql(dialect: str, *, fk: bool = True, on_delete: str = "CASCADE", precision: int = 12,
               check: bool = True, amount_not_null: bool = False) -> str:
    if dialect == "mysql":  # a column's REFERENCES is ignored there; TEXT cannot be indexed without a length
        sql = ORDERS.format(id="bigint", fk="", precision=precision, amount_null="NOT NULL" if amount_not_null else "",
                            check=", CONSTRAINT amount_positive CHECK (amount >= 0)" if check else "")
        sql = sql.replace("note TEXT", "note varchar(200)")
        return sql[:-1] + (f", FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE {on_delete})" if fk else ")")
    return ORDERS.format(
        id="bigint" if dialect == "postgresql" else "BIGINT",
        fk=f"REFERENCES users(id) ON DELETE {on_delete}" if fk else "",
        precision=precision, amount_null="NOT NULL" if amount_not_null else "",
        check=", CONSTRAINT amount_positive CHECK (amount >= 0)" if check else "")


@dataclass
class Pair:
    source: Engine
    target: Engine

    def sides(self, table: str = "orders") -> tuple[Side, Side]:
        return Side(self.source, table=table, label="source"), Side(self.target, table=table, label="target")


def run(engine: Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def _engine(url: str) -> Engine:
    engine = sa.create_engine(url)
    if engine.dialect.name == "postgresql":
        run(engine, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
    if engine.dialect.name == "mysql":
        with engine.connect() as conn:
            tables = conn.exec_driver_sql("SELECT table_name FROM information_schema.tables "
                                          "WHERE table_schema = DATABASE()").scalars().all()
        run(engine, "SET FOREIGN_KEY_CHECKS = 0", *(f"DROP TABLE `{t}`" for t in tables), "SET FOREIGN_KEY_CHECKS = 1")
    return engine


@pytest.fixture
def pg_pair(pg_urls) -> Iterator[Pair]:
    pair = Pair(_engine(pg_urls[0]), _engine(pg_urls[1]))
    yield pair
    pair.source.dispose()
    pair.target.dispose()


@pytest.fixture
def sqlite_pair(tmp_path) -> Iterator[Pair]:
    pair = Pair(_engine(f"sqlite:///{tmp_path / 'source.sqlite'}"), _engine(f"sqlite:///{tmp_path / 'target.sqlite'}"))
    yield pair
    pair.source.dispose()
    pair.target.dispose()


@pytest.fixture
def mariadb_pair(mariadb_urls) -> Iterator[Pair]:
    pair = Pair(_engine(mariadb_urls[0]), _engine(mariadb_urls[1]))
    yield pair
    pair.source.dispose()
    pair.target.dispose()


@pytest.fixture(params=["postgresql", "sqlite", "mariadb"])
def pair(request) -> Pair:
    return request.getfixturevalue({"postgresql": "pg_pair", "sqlite": "sqlite_pair"}.get(request.param,
                                                                                         "mariadb_pair"))


def dialect(pair: Pair) -> str:
    return pair.source.dialect.name


def build(pair: Pair, source_orders: str, target_orders: str, *extra: tuple[str, str]) -> None:
    """users + orders on both sides, then extra (source statement, target statement) pairs."""
    users = USERS[dialect(pair)]
    run(pair.source, users, source_orders, *(s for s, _ in extra if s))
    run(pair.target, users, target_orders, *(t for _, t in extra if t))


def ids(result) -> list[str]:
    return [d.detail for d in result.differences]


def test_identical_structure_passes_every_check(pair):
    d = dialect(pair)
    index = ("CREATE INDEX ix_orders_user ON orders (user_id)", "CREATE INDEX ix_orders_user ON orders (user_id)")
    build(pair, orders_sql(d), orders_sql(d), index)
    source, target = pair.sides()
    for check in (schemas, indexes, constraints):
        result = check(source, target)
        assert result.passed, result.detail
        assert result.differences == [] and result.total_differences == 0
    assert schemas(source, target).source == "5 columns"
    assert indexes(source, target).target == "1 index"
    assert constraints(*pair.sides("users")).source == "2 constraints"  # primary key + unique (email)


def test_dropped_index_fails_naming_the_index(pair):
    d = dialect(pair)
    build(pair, orders_sql(d), orders_sql(d),
          ("CREATE INDEX ix_orders_user ON orders (user_id)", None),
          ("CREATE UNIQUE INDEX ux_orders_status ON orders (status, user_id)", None),
          ("CREATE INDEX ix_orders_note ON orders (note)", "CREATE INDEX ix_orders_note ON orders (note)"))
    result = indexes(*pair.sides())
    if d == "mysql":
        # a foreign key needs an index: the server made one on (user_id) for the target's; and a UNIQUE index is
        # the unique constraint itself there, so the constraints check is the one that misses it
        assert result.passed, result.detail
        assert result.source == "2 indexes" and result.target == "2 indexes"
        assert ids(constraints(*pair.sides())) == ["unique (status, user_id): only in source"]
        return
    assert not result.passed
    assert ids(result) == ["index on (status, user_id) unique: only in source", "index on (user_id): only in source"]
    assert result.total_differences == 2
    assert result.source == "3 indexes" and result.target == "1 index"


def test_index_name_alone_does_not_fail(pair):
    d = dialect(pair)
    build(pair, orders_sql(d), orders_sql(d), ("CREATE INDEX ix_old ON orders (user_id, status DESC)",
                                               "CREATE INDEX ix_new ON orders (user_id, status DESC)"))
    result = indexes(*pair.sides())
    assert result.passed, result.detail
    assert "ix_old -> ix_new" in result.detail


def test_changed_column_type_fails(pair):
    d = dialect(pair)
    build(pair, orders_sql(d), orders_sql(d, precision=14))
    result = schemas(*pair.sides())
    assert not result.passed
    assert ids(result) == ["column amount: type numeric(12,2) -> numeric(14,2)"]
    diff = result.differences[0]
    assert (diff.kind, diff.column, diff.source, diff.target) == ("schema", "amount", "numeric(12,2)", "numeric(14,2)")


def test_nullability_and_default_changes_fail(pair):
    d = dialect(pair)
    build(pair, orders_sql(d), orders_sql(d, amount_not_null=True).replace("DEFAULT 'new'", "DEFAULT 'open'"))
    result = schemas(*pair.sides())
    assert not result.passed
    assert ids(result) == ["column amount: nullable -> not null", "column status: default 'new' -> 'open'"]


def test_missing_foreign_key_and_changed_on_delete_fail(pair):
    d = dialect(pair)
    build(pair, orders_sql(d), orders_sql(d, fk=False))
    result = constraints(*pair.sides())
    assert not result.passed
    assert ids(result) == ["foreign key (user_id) -> users(id): only in source"]

    run(pair.target, "DROP TABLE orders", orders_sql(d, on_delete="SET NULL"))
    result = constraints(*pair.sides())
    assert ids(result) == ["foreign key (user_id) -> users(id): on delete cascade -> set null"]


def test_missing_check_constraint_fails(pair):
    d = dialect(pair)
    build(pair, orders_sql(d, check=False), orders_sql(d))
    result = constraints(*pair.sides())
    assert not result.passed
    assert ids(result) == ["check (amount >= 0): only in target"]
    assert constraints(*pair.sides("users")).passed


def test_expected_differences_are_accepted(pair):
    d = dialect(pair)
    build(pair, orders_sql(d).replace("note ", "theme "), orders_sql(d).replace("note ", "preferences "))
    source, target = pair.sides()
    failed = schemas(source, target)
    assert not failed.passed
    assert ids(failed) == ["column theme: only in source", "column preferences: only in target"]

    expected = ["column preferences: only in target", "Column theme:  only in source", "column gone: only in source"]
    accepted = schemas(source, target, expected)
    assert accepted.passed, accepted.detail
    assert accepted.differences == []
    assert "2 expected differences found" in accepted.detail
    assert "warning: expected but not found: column gone: only in source" in accepted.detail

    partly = schemas(source, target, ["column preferences: only in target"])
    assert not partly.passed and ids(partly) == ["column theme: only in source"]


def test_structure_checks_need_existing_tables(pair):
    d = dialect(pair)
    build(pair, orders_sql(d), orders_sql(d))
    with pytest.raises(VerifyInputError) as raised:
        schemas(Side(pair.source, query="SELECT * FROM orders"), Side(pair.target, table="orders"))
    assert raised.value.field == "source.query"
    assert "schemas check compares tables" in str(raised.value)
    with pytest.raises(VerifyInputError, match=r"^target.table: table 'ordres' does not exist in the target"):
        indexes(Side(pair.source, table="orders"), Side(pair.target, table="ordres"))
    with pytest.raises(VerifyInputError, match=r"^source.table: table 'nope' does not exist"):
        constraints(Side(pair.source, table="nope"), Side(pair.target, table="orders"))


EQUIVALENT = {
    "postgresql": [
        "CREATE TABLE users (id serial PRIMARY KEY, email character varying(50) NOT NULL, "
        "balance numeric(12,2) DEFAULT 0, visits bigint, score double precision, active boolean DEFAULT false, "
        "prefs jsonb, avatar bytea, born date, seen_at timestamp without time zone DEFAULT now(), "
        "code character(3), status varchar(10) DEFAULT 'new'::character varying, "
        "CONSTRAINT balance_ok CHECK (balance >= (0)::numeric), CONSTRAINT status_ok CHECK (status IN ('new', 'old')))",
        "CREATE UNIQUE INDEX ux_users_email ON users (lower(email))",
        "CREATE INDEX ix_users_active ON users (seen_at DESC) WHERE active",
        "CREATE TABLE orders (id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
        "user_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE)",
    ],
    "sqlite": [
        'CREATE TABLE "users" ("id" INTEGER PRIMARY KEY, email VARCHAR(50) NOT NULL, '
        "balance NUMERIC(12, 2) DEFAULT 0, visits BIGINT, score DOUBLE PRECISION, active BOOLEAN DEFAULT FALSE, "
        "prefs JSON, avatar BLOB, born DATE, seen_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, "
        "code CHAR(3), status VARCHAR(10) DEFAULT 'new', "
        "CHECK (balance >= 0), CHECK (status IN ('new','old')))",
        "CREATE UNIQUE INDEX users_email_lower ON users (lower(email))",
        "CREATE INDEX ix_users_active ON users (seen_at DESC) WHERE active",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users ON DELETE CASCADE)",
    ],
}


@pytest.mark.parametrize("direction", ["pg-to-sqlite", "sqlite-to-pg"])
def test_equivalent_tables_across_dialects_pass(pg_pair, sqlite_pair, direction):
    run(pg_pair.source, *EQUIVALENT["postgresql"])
    run(sqlite_pair.source, *EQUIVALENT["sqlite"])
    pg, lite = pg_pair.source, sqlite_pair.source
    source_engine, target_engine = (pg, lite) if direction == "pg-to-sqlite" else (lite, pg)
    for table in ("users", "orders"):
        source, target = Side(source_engine, table=table), Side(target_engine, table=table)
        for check in (schemas, indexes, constraints):
            result = check(source, target)
            assert result.passed, f"{check.__name__} {table}: {result.detail}"

    def described(engine: Engine) -> list[tuple]:
        return [(c.name, c.type, c.category, c.nullable, c.default) for c in describe_columns(engine, "users")]

    assert described(pg) == described(lite) == [
        ("id", "integer", "integer", False, "sequence"),
        ("email", "text(50)", "text", False, None),
        ("balance", "numeric(12,2)", "number", True, "0"),
        ("visits", "bigint", "integer", True, None),
        ("score", "double", "number", True, None),
        ("active", "boolean", "bool", True, "false"),
        ("prefs", "json", "json", True, None),
        ("avatar", "binary", "binary", True, None),
        ("born", "date", "datetime", True, None),
        ("seen_at", "timestamp", "datetime", True, "current_timestamp"),
        ("code", "char(3)", "text", True, None),
        ("status", "text(10)", "text", True, "'new'"),
    ]
    detail = indexes(Side(pg, table="users"), Side(lite, table="users")).detail
    assert "ux_users_email -> users_email_lower" in detail


def test_cross_dialect_type_difference_is_named(pg_pair, sqlite_pair):
    run(pg_pair.source, "CREATE TABLE t (id integer PRIMARY KEY, at timestamptz, price real)")
    run(sqlite_pair.target, "CREATE TABLE t (id INTEGER PRIMARY KEY, at TIMESTAMP, price REAL)")
    result = schemas(Side(pg_pair.source, table="t"), Side(sqlite_pair.target, table="t"))
    # SQLite's INTEGER PRIMARY KEY numbers rows by itself; PostgreSQL's integer primary key does not
    assert ids(result) == ["column id: default none -> sequence",
                           "column at: type timestamp with time zone -> timestamp"]
    assert result.source == result.target == "3 columns"


PORTABLE = {  # the same two tables, as each database spells them (nothing MariaDB lacks: partial or expression indexes)
    "postgresql": [
        "CREATE TABLE users (id serial PRIMARY KEY, email character varying(50) NOT NULL UNIQUE, "
        "balance numeric(12,2) DEFAULT 0, visits bigint, score double precision, active boolean DEFAULT false, "
        "prefs jsonb, avatar bytea, born date, seen_at timestamp DEFAULT now(), code character(3), "
        "status varchar(10) DEFAULT 'new'::character varying, CONSTRAINT balance_ok CHECK (balance >= (0)::numeric))",
        "CREATE INDEX ix_users_seen ON users (seen_at, status)",
        "CREATE TABLE orders (id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, "
        "user_id integer NOT NULL REFERENCES users(id) ON DELETE CASCADE)",
        "CREATE INDEX ix_orders_user ON orders (user_id)",
    ],
    "sqlite": [
        "CREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(50) NOT NULL UNIQUE, balance NUMERIC(12, 2) "
        "DEFAULT 0, visits BIGINT, score DOUBLE PRECISION, active BOOLEAN DEFAULT FALSE, prefs JSON, avatar BLOB, "
        "born DATE, seen_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP, code CHAR(3), status VARCHAR(10) DEFAULT 'new', "
        "CHECK (balance >= 0))",
        "CREATE INDEX ix_users_seen ON users (seen_at, status)",
        "CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users ON DELETE CASCADE)",
        "CREATE INDEX ix_orders_user ON orders (user_id)",
    ],
    "mysql": [
        "CREATE TABLE users (id integer AUTO_INCREMENT PRIMARY KEY, email varchar(50) NOT NULL UNIQUE, "
        "balance decimal(12,2) DEFAULT 0, visits bigint, score double, active boolean DEFAULT false, prefs json, "
        "avatar blob, born date, seen_at datetime DEFAULT CURRENT_TIMESTAMP, code char(3), "
        "status varchar(10) DEFAULT 'new', CONSTRAINT balance_ok CHECK (balance >= 0))",
        "CREATE INDEX ix_users_seen ON users (seen_at, status)",
        "CREATE TABLE orders (id integer AUTO_INCREMENT PRIMARY KEY, user_id integer NOT NULL, "
        "FOREIGN KEY (user_id) REFERENCES users(id) ON DELETE CASCADE)",
    ],
}


@pytest.mark.parametrize("direction", ["pg-to-mariadb", "mariadb-to-pg", "sqlite-to-mariadb"])
def test_equivalent_tables_across_mariadb_and_the_others_pass(pg_pair, sqlite_pair, mariadb_pair, direction):
    pairs = {"pg": pg_pair, "sqlite": sqlite_pair, "mariadb": mariadb_pair}
    names = {"pg": "postgresql", "sqlite": "sqlite", "mariadb": "mysql"}
    src, _, tgt = direction.partition("-to-")
    run(pairs[src].source, *PORTABLE[names[src]])
    run(pairs[tgt].target, *PORTABLE[names[tgt]])
    source_engine, target_engine = pairs[src].source, pairs[tgt].target
    for table in ("users", "orders"):
        source, target = Side(source_engine, table=table), Side(target_engine, table=table)
        for check in (schemas, indexes, constraints):
            result = check(source, target)
            assert result.passed, f"{check.__name__} {table}: {result.detail}"
            assert result.differences == []
    described = [(c.name, c.type, c.category, c.default) for c in describe_columns(mariadb_pair.source
                                                                                    if src == "mariadb" else
                                                                                    target_engine, "users")]
    assert described[0] == ("id", "integer", "integer", "sequence")  # AUTO_INCREMENT
    assert ("active", "boolean", "bool", "false") in described and ("prefs", "json", "json", None) in described
    assert ("balance", "numeric(12,2)", "number", "0") in described


def test_a_changed_type_between_postgresql_and_mariadb_is_named(pg_pair, mariadb_pair):
    run(pg_pair.source, "CREATE TABLE t (id integer PRIMARY KEY, flag boolean, doc jsonb, price numeric(10,2))")
    run(mariadb_pair.target, "CREATE TABLE t (id integer PRIMARY KEY, flag tinyint, doc longtext, price double)")
    result = schemas(Side(pg_pair.source, table="t"), Side(mariadb_pair.target, table="t"))
    assert ids(result) == ["column flag: type boolean -> smallint", "column doc: type json -> text",
                           "column price: type numeric(10,2) -> double"]
