"""Dual write against real databases with writers running: capture, history copy, replay, catch-up, rollback.

Writer threads insert, update (key columns too) and delete in the old table for the whole step; afterwards
the new table must equal the old one through the transform: 0 lost, 0 divergent rows."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.kinds import kind_named
from airflow_migrate_provider.core.kinds.dual_write import capture_names, forward_replayer
from airflow_migrate_provider.core.ledger import Ledger
from airflow_migrate_provider.core.rollback import rollback_run
from airflow_migrate_provider.core.steps import StepRunner
from airflow_migrate_provider.errors import CaptureError
from tests.integration.dual_write_support import (
    MARIADB_PREFERENCES,
    Writers,
    assert_same,
    create_mariadb_preferences,
    create_same_layout,
    prepared_engine,
    seed_users,
)
from tests.integration.migrate_it_support import make_plan, who

STEP = """
  - id: sync_users
    kind: dual_write
    source: {{table: users}}
    target: {target}
    key: {key}
    columns: {columns}
    chunks: 2
    batch: {{rows: 150, seconds: null}}
    replay: {{batch_changes: 300}}
    catch_up: {{max_lag_changes: 20, max_lag_seconds: 30, timeout_minutes: 2}}
"""


@dataclass
class Setup:
    """One database pairing: where the old and new tables live and how to compare them."""

    name: str
    source: Engine
    target: Engine
    source_url: str
    step: str
    expected_sql: str  # on the source: the old table through the transform
    actual_sql: str  # on the target: the new table



def _mariadb_same_db(factory) -> Iterator[Setup]:
    with factory() as db:
        engine = prepared_engine(db.sqlalchemy_url)
        seed_users(engine)
        create_mariadb_preferences(engine)
        yield Setup("mariadb_same_db_new_layout", engine, engine, db.sqlalchemy_url,
                    STEP.format(target="user_preferences", key="user_id",
                                columns=f'{{user_id: id, preferences: "{MARIADB_PREFERENCES}"}}'),
                    f"SELECT id, email, {MARIADB_PREFERENCES} FROM users",
                    "SELECT user_id, email, preferences FROM user_preferences")
        engine.dispose()


def _mariadb_to_pg(mariadb_factory, pg_factory) -> Iterator[Setup]:
    with mariadb_factory() as src_db, pg_factory() as tgt_db:
        source, target = prepared_engine(src_db.sqlalchemy_url), prepared_engine(tgt_db.sqlalchemy_url)
        seed_users(source)
        create_same_layout(target)
        yield Setup("mariadb_to_pg", source, target, src_db.sqlalchemy_url,
                    STEP.format(target="users_v2", key="id", columns="{}"),
                    "SELECT id, email, theme, notifications FROM users",
                    "SELECT id, email, theme, notifications FROM users_v2")
        source.dispose()
        target.dispose()


@pytest.fixture(params=["pg_to_pg", "pg_same_db_new_layout", "sqlite_new_layout", "mariadb_same_db_new_layout",
                        "mariadb_to_pg"])
def setup(request: pytest.FixtureRequest, pg_database_factory, tmp_path) -> Iterator[Setup]:
    if request.param == "mariadb_same_db_new_layout":
        yield from _mariadb_same_db(request.getfixturevalue("mariadb_database_factory"))
        return
    if request.param == "mariadb_to_pg":
        yield from _mariadb_to_pg(request.getfixturevalue("mariadb_database_factory"), pg_database_factory)
        return
    if request.param == "pg_to_pg":
        with pg_database_factory() as src_db, pg_database_factory() as tgt_db:
            source, target = prepared_engine(src_db.sqlalchemy_url), prepared_engine(tgt_db.sqlalchemy_url)
            seed_users(source)
            create_same_layout(target)
            yield Setup("pg_to_pg", source, target, src_db.sqlalchemy_url,
                        STEP.format(target="users_v2", key="id", columns="{}"),
                        "SELECT id, email, theme, notifications FROM users",
                        "SELECT id, email, theme, notifications FROM users_v2")
            source.dispose()
            target.dispose()
        return
    if request.param == "pg_same_db_new_layout":
        with pg_database_factory() as db:
            engine = prepared_engine(db.sqlalchemy_url)
            seed_users(engine)
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE user_preferences (user_id INTEGER PRIMARY KEY, email VARCHAR(120) "
                                     "NOT NULL UNIQUE, preferences JSONB NOT NULL)")
            columns = ('{user_id: id, preferences: "jsonb_build_object(\'theme\', theme, \'notifications\', '
                       'notifications)"}')
            yield Setup("pg_same_db_new_layout", engine, engine, db.sqlalchemy_url,
                        STEP.format(target="user_preferences", key="user_id", columns=columns),
                        "SELECT id, email, jsonb_build_object('theme', theme, 'notifications', notifications)::text "
                        "FROM users",
                        "SELECT user_id, email, preferences::text FROM user_preferences")
            engine.dispose()
        return
    url = f"sqlite:///{(tmp_path / 'app.sqlite').resolve()}"
    engine = prepared_engine(url)
    seed_users(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE users_v2 (id INTEGER PRIMARY KEY, email TEXT NOT NULL, preferences TEXT "
                             "NOT NULL CHECK (json_valid(preferences)))")
    columns = ('{preferences: "json_object(\'theme\', theme, \'notifications\', json(CASE WHEN notifications THEN '
               '\'true\' ELSE \'false\' END))"}')
    yield Setup("sqlite_new_layout", engine, engine, url, STEP.format(target="users_v2", key="id", columns=columns),
                "SELECT id, email, json_object('theme', theme, 'notifications', json(CASE WHEN notifications THEN "
                "'true' ELSE 'false' END)) FROM users",
                "SELECT id, email, preferences FROM users_v2")
    engine.dispose()


def _context(setup: Setup, run_id: str = "r1") -> tuple[RunContext, object]:
    connections = "{target: app_db, source: old_db}" if setup.source is not setup.target else "{target: app_db}"
    plan = make_plan(setup.step, plan_id="dw_plan", connections=connections)
    ledger = Ledger(setup.target, plan.id)
    ledger.ensure()
    source = setup.source if setup.source is not setup.target else None
    ctx = RunContext(setup.target, dialect_for(setup.target), ledger, who(run_id), plan=plan, source=source,
                     sleep=lambda s: None)
    return ctx, plan.steps[0]


def test_dual_write_with_live_writers_converges_and_rolls_back(setup: Setup) -> None:
    ctx, step = _context(setup)
    kind = kind_named("dual_write")
    with Writers(setup.source_url) as writers:
        writers.wait_for(50)
        result = kind.apply(ctx, step)
        assert result.outcome == "applied"
        writers.wait_for(writers.writes + 300)
    assert writers.ops["error"] == 0, writers.errors[:3]
    replayer = forward_replayer(ctx, step)
    replayer.drain(500)
    assert replayer.lag()[0] == 0
    copied = assert_same(setup.source, setup.expected_sql, setup.target, setup.actual_sql)
    assert copied > 0
    assert writers.ops["key_update"] > 0 and writers.ops["delete"] > 0

    # replaying again changes nothing
    assert replayer.drain(500).changes == 0
    assert_same(setup.source, setup.expected_sql, setup.target, setup.actual_sql)

    # the ledger counts it applied, with the changes replayed
    assert ctx.ledger.applied()[step.id].status == "applied"
    assert replayer.replayed() > 0

    # rollback: capture gone, new table empty, old table untouched
    report = rollback_run(ctx.ledger, StepRunner.of(ctx), ctx.who)
    assert [r.step_id for r in report.reverted] == [step.id]
    names = capture_names(ctx.plan_id, step)
    assert not inspect(setup.source).has_table(names.change_table)
    with setup.target.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT count(*) FROM {step.target}").scalar() == 0
    with setup.source.begin() as conn:  # writes to the old table are no longer captured
        conn.exec_driver_sql("INSERT INTO users (id, email, theme, notifications) VALUES (5, 'x@example.com', "
                             "'dark', TRUE)" + dialect_for(setup.source).upsert_clause(["id"], []))
    assert not inspect(setup.source).has_table(names.change_table)


def test_capture_refuses_a_table_without_primary_key(pg_database_factory) -> None:
    with pg_database_factory() as db:
        engine = prepared_engine(db.sqlalchemy_url)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE users (id INTEGER NOT NULL, email TEXT, theme TEXT, "
                                 "notifications BOOLEAN NOT NULL)")
        create_same_layout(engine)
        ctx, step = _context(Setup("nopk", engine, engine, db.sqlalchemy_url,
                                   STEP.format(target="users_v2", key="id", columns="{}"), "", ""))
        with pytest.raises(CaptureError, match="no primary key"):
            kind_named("dual_write").capture(ctx, step)
        assert step.id not in ctx.ledger.applied()
        engine.dispose()


def test_capture_refuses_a_change_table_left_by_another_run(setup: Setup) -> None:
    ctx, step = _context(setup)
    kind = kind_named("dual_write")
    kind.capture(ctx, step)
    # the ledger forgets the step (as if another plan run's rows were reverted by hand): its capture is left over
    ctx.ledger.finish(ctx.ledger.applied()[step.id].id, "failed", started_at=ctx.ledger.rows()[-1].started_at)
    with setup.target.begin() as conn:
        conn.exec_driver_sql("UPDATE airflow_migrate_history SET progress = 0")
    other, _ = _context(setup, run_id="r2")
    with pytest.raises(CaptureError, match=r"already exists.*created by dag 'd' run 'r1'"):
        kind.capture(other, step)


def test_mariadb_capture_refuses_truncate_which_no_trigger_sees(mariadb_database_factory) -> None:
    """MariaDB fires no trigger on TRUNCATE: a foreign key from an empty table makes InnoDB refuse it."""
    with mariadb_database_factory() as db:
        engine = prepared_engine(db.sqlalchemy_url)
        seed_users(engine, rows=10)
        create_same_layout(engine)
        ctx, step = _context(Setup("trunc", engine, engine, db.sqlalchemy_url,
                                   STEP.format(target="users_v2", key="id", columns="{}"), "", ""))
        kind_named("dual_write").capture(ctx, step)
        with pytest.raises(Exception, match="dual_write_capture_refuses_truncate"), engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE TABLE users")
        rollback_run(ctx.ledger, StepRunner.of(ctx), ctx.who)
        with engine.begin() as conn:  # capture dropped: TRUNCATE works again
            conn.exec_driver_sql("TRUNCATE TABLE users")
        assert [t for t in inspect(engine).get_table_names() if t.startswith("am_")] == []
        engine.dispose()
