"""run_expectations: Great Expectations suites against real PostgreSQL, MariaDB and SQLite tables.

GX takes seconds to import, so the tests are few and each checks several things.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, text

from airflow_migrate_provider.core.verify.expectations import ExpectationSuiteError, run_expectations
from airflow_migrate_provider.errors import MigrateError

ROWS = [(1, "a@x.org"), (2, None), (3, "c@x.org"), (4, None), (5, "e@x.org")]


def _seed(engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(100))"))
        conn.execute(text("INSERT INTO users (id, email) VALUES (:id, :email)"),
                     [{"id": i, "email": e} for i, e in ROWS])


@pytest.fixture(scope="module")
def pg_engine(pg_database_factory):
    with pg_database_factory() as db:
        eng = create_engine(db.sqlalchemy_url)
        _seed(eng)
        yield eng
        eng.dispose()


@pytest.fixture(scope="module")
def mariadb_engine(mariadb_database_factory):
    with mariadb_database_factory() as db:
        eng = create_engine(db.sqlalchemy_url)
        _seed(eng)
        yield eng
        eng.dispose()


@pytest.fixture
def sqlite_engine(sqlite_database):
    eng = create_engine(sqlite_database.sqlalchemy_url)
    _seed(eng)
    yield eng
    eng.dispose()


def test_passing_suite_on_postgres(pg_engine):
    suite = [
        {"type": "expect_table_row_count_to_equal", "kwargs": {"value": 5}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}},
        {"expectation_type": "expect_column_values_to_not_be_null", "kwargs": {"column": "id"}},
    ]
    result = run_expectations(pg_engine, "public.users", suite=suite, name="users_ok")
    assert result.check == "expectations"
    assert result.passed is True
    assert result.detail.startswith("3 of 3 expectations passed")
    assert result.differences == [] and result.total_differences == 0
    assert "great_expectations" in sys.modules  # imported by the call...


def test_module_import_does_not_import_gx():
    """...never by importing the module: DAG files that import an operator must parse fast (DESIGN rule 8)."""
    probe = ("import sys, airflow_migrate_provider.core.verify.expectations as m; "
             "assert 'great_expectations' not in sys.modules, 'imported'")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("database", ["postgresql", "mariadb"])
def test_failed_expectations_fail_the_check(request, database):
    engine = request.getfixturevalue("pg_engine" if database == "postgresql" else "mariadb_engine")
    suite = [
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"column": "email"}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}},
        {"type": "expect_table_row_count_to_equal", "kwargs": {"value": 6}},
    ]
    result = run_expectations(engine, "users", suite=suite)
    assert result.passed is False
    assert result.detail.startswith("1 of 3 expectations passed")
    assert result.total_differences == 2
    not_null, count = result.differences
    assert (not_null.kind, not_null.key, not_null.column) == ("expectation", "expect_column_values_to_not_be_null",
                                                              "email")
    assert "expectations.suite[0]" in not_null.detail and "unexpected_count 2 of 5" in not_null.detail
    assert count.key == "expect_table_row_count_to_equal"
    assert "observed_value 5" in count.detail and "value=6" in count.detail
    assert result.to_json()["differences"][0]["key"] == "expect_column_values_to_not_be_null"


def test_passing_suite_on_mariadb_with_its_database_as_schema(mariadb_engine):
    suite = [
        {"type": "expect_table_row_count_to_equal", "kwargs": {"value": 5}},
        {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "id"}},
        {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "email", "regex": "@x[.]org$"}},
    ]
    result = run_expectations(mariadb_engine, f"{mariadb_engine.url.database}.users", suite=suite, name="users_ok")
    assert result.passed is True, result.differences
    assert result.detail.startswith("3 of 3 expectations passed")
    bad = run_expectations(mariadb_engine, "users", suite=[
        {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "email", "regex": "^a"}}])
    assert bad.passed is False and "unexpected_count 2 of 5" in bad.differences[0].detail


def test_suite_from_gx_json_file_on_sqlite(sqlite_engine, tmp_path):
    import great_expectations as gx
    import great_expectations.expectations as gxe

    written = gx.ExpectationSuite(name="users", expectations=[
        gxe.ExpectTableRowCountToBeBetween(min_value=1, max_value=10),
        gxe.ExpectColumnValuesToNotBeNull(column="email", mostly=0.5),
        gxe.ExpectColumnValuesToNotBeNull(column="no_such_column"),
    ]).to_json_dict()
    path = tmp_path / "users.json"
    path.write_text(json.dumps(written))

    result = run_expectations(sqlite_engine, "users", suite_path=str(path))
    assert result.passed is False
    assert result.detail.startswith("2 of 3 expectations passed")
    (missing,) = result.differences
    assert missing.column == "no_such_column"
    assert "expectations[2]" in missing.detail and "no_such_column" in missing.detail and "error:" in missing.detail

    written["expectations"].pop()
    path.write_text(json.dumps(written))
    assert run_expectations(sqlite_engine, "users", suite_path=str(path)).passed is True


def test_bad_input_names_the_field(sqlite_engine, tmp_path):
    ok = [{"type": "expect_table_row_count_to_equal", "kwargs": {"value": 5}}]
    cases = {
        "both": dict(suite=ok, suite_path="x.json"),
        "neither": {},
    }
    for label, kwargs in cases.items():
        with pytest.raises(ExpectationSuiteError, match=f"exactly one of 'suite'.*got {label}"):
            run_expectations(sqlite_engine, "users", **kwargs)

    with pytest.raises(ExpectationSuiteError, match=r"expectations.table: table 'nope' does not exist"):
        run_expectations(sqlite_engine, "nope", suite=ok)
    with pytest.raises(ExpectationSuiteError, match=r"expectations.suite: no expectations"):
        run_expectations(sqlite_engine, "users", suite=[])

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ExpectationSuiteError, match=r"expectations.path .*broken.json.*: not valid JSON"):
        run_expectations(sqlite_engine, "users", suite_path=str(broken))
    with pytest.raises(ExpectationSuiteError, match=r"expectations.path .*absent.json.*: cannot read the file"):
        run_expectations(sqlite_engine, "users", suite_path=str(tmp_path / "absent.json"))

    bad = [
        {"type": "expect_table_row_count_to_equal", "kwargs": {"value": 5}},
        {"kwargs": {}},
        {"type": "expect_foo", "kwargs": {}},
        {"type": "expect_column_values_to_not_be_null", "kwargs": {"colum": "email"}},
    ]
    with pytest.raises(ExpectationSuiteError) as err:
        run_expectations(sqlite_engine, "users", suite=bad)
    problems = err.value.problems
    assert "expectations.suite[1].type: missing" in problems[0]
    assert problems[1] == "expectations.suite[2].type: unknown expectation 'expect_foo'"
    assert any(p.startswith("expectations.suite[3].kwargs.column: field required") for p in problems)
    assert isinstance(err.value, MigrateError)
