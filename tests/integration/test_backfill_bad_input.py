"""Backfill steps that do not fit the real tables fail up front, naming the plan field, before any row moves.

Each case runs the step the way a DAG run does (``apply_through``) and checks that a BackfillSpecError names
the field to edit, that the target is still empty, and that the step left no ledger or checkpoint rows
(it is not shown as applied or in progress). Plan-shape errors are caught earlier, when the plan is read.
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from backfill_it_support import (
    Pair,
    backfill_plan,
    checkpoint_rows,
    count,
    history,
    insert_rows,
    is_mysql,
    open_pair,
    run_sql,
    runner_for,
    server_urls,
)
from pydantic import ValidationError

from airflow_migrate_provider.errors import BackfillSpecError, PlanError
from airflow_migrate_provider.plan.loader import parse_plan
from airflow_migrate_provider.plan.model import Plan

STEP = "copy_users"
FIELD = f"steps.{STEP}"


@pytest.fixture(params=["pg", "sqlite", "mariadb"])
def pair(request, tmp_path):
    """Two empty databases: PostgreSQL or MariaDB (the module's, emptied first) or two SQLite files."""
    kind = f"{request.param}-{request.param}"
    with open_pair(kind, tmp_path=tmp_path, **server_urls(request, kind)) as p:
        yield p


def pg(pair: Pair) -> bool:
    return pair.src_dialect == "postgresql"


def users_source(pair: Pair, *, pk: bool = True, rows: int = 5) -> None:
    key = "PRIMARY KEY" if pk else ""
    ts = "timestamptz" if pg(pair) else "DATETIME" if is_mysql(pair.src_dialect) else "TIMESTAMP"
    stamp = "2024-01-01 00:00:00" if is_mysql(pair.src_dialect) else "2024-01-01 00:00:00+00:00"  # MariaDB: UTC
    run_sql(pair.source, f"CREATE TABLE users (id INTEGER {key}, name VARCHAR(40), created_at {ts}, "
                         f"updated_at {ts} NOT NULL)")
    insert_rows(pair.source, "INSERT INTO users VALUES (:i, :n, :t, :t)",
                [{"i": i, "n": f"user {i}", "t": stamp} for i in range(1, rows + 1)])


def users_target(pair: Pair, columns: str = "id INTEGER PRIMARY KEY, name VARCHAR(40), updated_at TIMESTAMP") -> None:
    run_sql(pair.target, f"CREATE TABLE users_v2 ({columns})")


def step(**overrides):
    base = {"id": STEP, "source": {"table": "users"}, "target": "users_v2", "key": "id", "watermark": "updated_at"}
    return {**base, **overrides}


def expect_spec_error(pair: Pair, field: str, *fragments: str, **overrides) -> BackfillSpecError:
    """Run the step; it must raise BackfillSpecError with a problem that starts with the plan ``field`` and
    contains every fragment, and leave the target as it was, with no ledger or checkpoint rows for the step."""
    plan = backfill_plan(step(**overrides))
    ledger, _, runner = runner_for(pair, plan)
    target_rows = count(pair.target, "users_v2") if sa.inspect(pair.target).has_table("users_v2") else 0
    with pytest.raises(BackfillSpecError) as caught:
        runner.apply_through(plan, STEP)
    err = caught.value
    assert err.step_id == STEP
    assert any(p.startswith(field) and all(f in p for f in fragments) for p in err.problems), err.problems
    assert "nothing was copied" in str(err)
    if sa.inspect(pair.target).has_table("users_v2"):
        assert count(pair.target, "users_v2") == target_rows
    assert history(ledger, STEP) == []
    assert checkpoint_rows(pair.target, STEP) == []
    assert STEP not in ledger.applied()
    with pytest.raises(BackfillSpecError):  # the separate phase entry points refuse as well
        runner.backfill(plan.step(STEP)).start()
    return err


# -- the positive control: the same fixtures copy fine when nothing is wrong ------------------------------

def test_control_the_fixture_tables_copy_fine(pair):
    users_source(pair)
    users_target(pair)
    plan = backfill_plan(step())
    ledger, _, runner = runner_for(pair, plan)
    assert [r.outcome for r in runner.apply_through(plan, STEP)] == ["applied"]
    assert count(pair.target, "users_v2") == 5
    assert history(ledger, STEP) == [("apply", "applied")]


# -- the step against the tables ------------------------------------------------------------------------

def test_key_column_missing_from_the_target(pair):
    users_source(pair)
    users_target(pair)
    expect_spec_error(pair, f"{FIELD}.key", "'uid'", "not a column of target table 'users_v2'", key="uid")


def test_key_column_not_fed_from_the_source(pair):
    users_source(pair)
    users_target(pair, "uid INTEGER PRIMARY KEY, name VARCHAR(40), updated_at TIMESTAMP")
    err = expect_spec_error(pair, f"{FIELD}.key", "'uid'", "not fed from the source", key="uid")
    if pg(pair):  # (SQLite's INTEGER PRIMARY KEY fills itself in, so it is not a required column there)
        assert any(p.startswith(f"{FIELD}.columns:") and "'uid' is NOT NULL" in p for p in err.problems)


def test_key_not_unique_in_the_source(pair):
    users_source(pair, pk=False)
    insert_rows(pair.source, "INSERT INTO users VALUES (3, 'a second user 3', NULL, '2024-01-02 00:00:00')", [{}])
    users_target(pair)
    expect_spec_error(pair, f"{FIELD}.key", "not unique in the source", "(3,)")


def test_key_not_unique_in_a_source_query(pair):
    users_source(pair)
    users_target(pair)
    expect_spec_error(pair, f"{FIELD}.key", "not unique in the source",
                      source={"query": "SELECT id % 2 AS id, name, updated_at FROM users", "lock_tables": ["users"]})


def test_text_key_cannot_be_split_into_chunks(pair):
    run_sql(pair.source, "CREATE TABLE users (code VARCHAR(10) PRIMARY KEY, name VARCHAR(40), "
                         "updated_at VARCHAR(30) NOT NULL)")
    insert_rows(pair.source, "INSERT INTO users VALUES (:c, 'x', '2024')", [{"c": c} for c in "abcdef"])
    users_target(pair, "code VARCHAR(10) PRIMARY KEY, name VARCHAR(40), updated_at VARCHAR(30)")
    expect_spec_error(pair, f"{FIELD}.chunks", "4 chunks", "single integer key", "chunks: 1", key="code", chunks=4)


def test_target_table_missing(pair):
    users_source(pair)
    expect_spec_error(pair, f"{FIELD}.target", "'users_v2' does not exist")


def test_source_table_missing(pair):
    users_target(pair)
    expect_spec_error(pair, f"{FIELD}.source.table", "'users' does not exist in the source")


def test_timestamp_source_column_into_integer_target_column(pair):
    users_source(pair)
    users_target(pair, "id INTEGER PRIMARY KEY, name VARCHAR(40), created_at INTEGER, updated_at TIMESTAMP")
    expect_spec_error(pair, f"{FIELD}.columns.created_at", "datetime", "cast it in `columns`")


def test_transform_expression_of_the_wrong_type(pg_urls, tmp_path):
    with open_pair("pg-pg", pg_urls, tmp_path) as pair:  # (SQLite cannot tell an expression's type up front)
        users_source(pair)
        users_target(pair, "id INTEGER PRIMARY KEY, name VARCHAR(40), score INTEGER, updated_at TIMESTAMP")
        expect_spec_error(pair, f"{FIELD}.columns.score", "`columns.score` is datetime", "integer",
                          columns={"score": "created_at + interval '1 day'"})


def test_source_query_output_column_missing_from_the_target(pair):
    users_source(pair)
    users_target(pair)
    expect_spec_error(pair, f"{FIELD}.source.query", "'nickname'", "rename it with AS, or drop it",
                      source={"query": "SELECT id, name, name AS nickname, updated_at FROM users",
                              "lock_tables": ["users"]})


def test_columns_entry_names_a_missing_target_column(pair):
    users_source(pair)
    users_target(pair)
    expect_spec_error(pair, f"{FIELD}.columns.nickname", "has no column 'nickname'",
                      columns={"nickname": "upper(name)"})


def test_every_problem_is_reported_at_once(pair):
    users_source(pair)
    users_target(pair)
    err = expect_spec_error(pair, f"{FIELD}.columns.nickname", key="uid", columns={"nickname": "name"})
    assert any(p.startswith(f"{FIELD}.key") for p in err.problems), err.problems


def test_target_without_primary_key_or_unique_index_on_the_key(pair):
    users_source(pair)
    users_target(pair, "id INTEGER NOT NULL, name VARCHAR(40), updated_at TIMESTAMP")
    expect_spec_error(pair, f"{FIELD}.key", "no primary key or unique index on (id)")


def test_target_not_empty(pair):
    users_source(pair)
    users_target(pair)
    insert_rows(pair.target, "INSERT INTO users_v2 (id, name) VALUES (99, 'left over')", [{}])
    expect_spec_error(pair, f"{FIELD}.target", "already has 1 rows", "empty the table")
    assert count(pair.target, "users_v2") == 1


def test_expression_that_fails_on_the_source(pair):
    users_source(pair)
    users_target(pair)
    expect_spec_error(pair, f"{FIELD}:", "reading the source fails", columns={"name": "no_such_column || 'x'"})


def test_watermark_that_fails_on_the_source(pair):
    users_source(pair)
    users_target(pair)
    expect_spec_error(pair, f"{FIELD}.watermark", "'changed_at'", watermark="changed_at")


def test_target_with_only_a_partial_unique_index_on_the_key(pg_urls, tmp_path):
    with open_pair("pg-pg", pg_urls, tmp_path) as pair:
        users_source(pair)
        users_target(pair, "id INTEGER NOT NULL, name VARCHAR(40), updated_at TIMESTAMP")
        run_sql(pair.target, "CREATE UNIQUE INDEX ux_users_v2_id ON users_v2 (id) WHERE name IS NOT NULL")
        expect_spec_error(pair, f"{FIELD}.key", "no primary key or unique index on (id)")


def test_null_key_in_the_source(pair):
    run_sql(pair.source, "CREATE TABLE users (id INTEGER UNIQUE, name VARCHAR(40), updated_at VARCHAR(30))")
    insert_rows(pair.source, "INSERT INTO users VALUES (:i, 'x', '2024')", [{"i": i} for i in (1, 2, None, 4)])
    users_target(pair, "id INTEGER PRIMARY KEY, name VARCHAR(40), updated_at VARCHAR(30)")
    expect_spec_error(pair, f"{FIELD}.key", "NULL")


# -- plan-shape errors: caught when the plan is read ---------------------------------------------------------

PLAN_HEAD = "id: p\nconnections: {target: tgt, source: src}\nsteps:\n"


def plan_problems(step_yaml: str) -> list:
    with pytest.raises(PlanError) as caught:
        parse_plan(PLAN_HEAD + step_yaml, "p.yaml")
    return caught.value.problems


def test_plan_recent_phases_without_watermark_or_append_only():
    problems = plan_problems("  - kind: backfill\n    id: copy_users\n    source: {table: users}\n"
                             "    target: users_v2\n    key: id\n")
    assert len(problems) == 1
    assert problems[0].path == "p.yaml" and problems[0].line == 4
    assert "copy_users" in problems[0].message and "`watermark`" in problems[0].message
    assert "append_only: true" in problems[0].message
    # each remedy the message names is accepted
    for fix in ("    watermark: updated_at\n", "    append_only: true\n",
                "    phases: {recent: false, final_sync: false}\n"):
        parse_plan(PLAN_HEAD + "  - kind: backfill\n    id: copy_users\n    source: {table: users}\n"
                               "    target: users_v2\n    key: id\n" + fix, "p.yaml")


def test_plan_query_with_final_sync_needs_lock_tables():
    body = ("  - kind: backfill\n    id: copy_users\n    source:\n      query: SELECT id, name FROM users\n"
            "    target: users_v2\n    key: id\n    append_only: true\n")
    problems = plan_problems(body)
    assert len(problems) == 1 and problems[0].line == 4
    assert "source.lock_tables" in problems[0].message and "copy_users" in problems[0].message
    parse_plan(PLAN_HEAD + body.replace("FROM users\n", "FROM users\n      lock_tables: [users]\n"), "p.yaml")
    parse_plan(PLAN_HEAD + body + "    phases: {final_sync: false}\n", "p.yaml")


def test_plan_source_with_both_table_and_query():
    problems = plan_problems("  - kind: backfill\n    id: copy_users\n    source:\n      table: users\n"
                             "      query: SELECT * FROM users\n      lock_tables: [users]\n"
                             "    target: users_v2\n    key: id\n    append_only: true\n")
    assert len(problems) == 1
    assert problems[0].line == 6 and "steps.0.source" in problems[0].message  # the `source:` line
    assert "exactly one of `table` or `query`" in problems[0].message


def test_plan_source_with_neither_table_nor_query():
    problems = plan_problems("  - kind: backfill\n    id: copy_users\n    source: {filter: id > 0}\n"
                             "    target: users_v2\n    key: id\n    append_only: true\n")
    assert len(problems) == 1 and "exactly one of `table` or `query`" in problems[0].message


def test_plan_model_validate_rejects_the_same_errors():
    with pytest.raises(ValidationError, match="watermark"):
        Plan.model_validate({"id": "p", "connections": {"target": "t", "source": "s"}, "steps": [
            {"kind": "backfill", "id": "copy_users", "source": {"table": "users"}, "target": "users_v2",
             "key": "id"}]})
    with pytest.raises(ValidationError, match="exactly one of `table` or `query`"):
        backfill_plan(step(source={"table": "users", "query": "SELECT 1"}))
