"""End-to-end backfill runs under dag.test(): mapped chunk tasks, a failing chunk that rolls back, re-runs,
the SQLite example plan, and a throttle pause long enough to defer the task."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from e2e_support import FIXED_DATE, execute, query, states

from airflow_migrate_provider.demo import example_plan_path, seed_demo_database

pytestmark = [pytest.mark.dag, pytest.mark.timeout(240)]
PG_PLAN = Path(__file__).resolve().parents[2] / "dags" / "plans" / "backfill_users_pg.yaml"
BAD_NAME = "CASE WHEN id = 777 THEN name || (1 / (id - 777))::text ELSE name END"  # fails in chunk 4 only


def users_digest(url: str, table: str) -> list[tuple]:
    return query(url, f"SELECT count(*), sum(hashtextextended(id::text || email || coalesce(name, '') || "
                      f"updated_at::text, 0)) FROM {table}")


def pg_plan(plan_id: str, **step_changes) -> dict:
    data = yaml.safe_load(PG_PLAN.read_text())
    data["id"] = plan_id
    data["connections"] = {"target": "app_db", "source": "legacy_db"}
    data["steps"][1].update(step_changes)
    return data


def test_mapped_backfill_copies_everything_across_databases(pg_database, legacy_pg, run_plan):
    dag_run = run_plan(pg_plan("bf_pg_ok"), pg_database)

    assert dag_run.state == "success", states(dag_run)
    chunk_tis = [ti for ti in dag_run.get_task_instances() if ti.task_id == "steps.copy_users.copy_chunk"]
    assert sorted(ti.map_index for ti in chunk_tis) == [0, 1, 2, 3]
    assert {str(ti.state) for ti in chunk_tis} == {"success"}
    assert sorted(ti.rendered_map_index for ti in chunk_tis)[0].startswith("chunk 1/4")
    assert users_digest(pg_database.sqlalchemy_url, "users_v2") == users_digest(legacy_pg.sqlalchemy_url, "users")
    prefs = query(pg_database.sqlalchemy_url, "SELECT preferences::text FROM users_v2 WHERE id = 2")
    assert prefs == [('{"theme": "solarized", "notifications_enabled": true}',)]
    applied = query(pg_database.sqlalchemy_url, "SELECT step_id, status FROM airflow_migrate_history "
                                                "WHERE action = 'apply' ORDER BY id")
    assert applied == [("create_users_v2", "applied"), ("copy_users", "applied"), ("verify_users_v2", "applied")]


def test_failing_chunk_rolls_back_then_fixed_rerun_converges(pg_database, legacy_pg, run_plan):
    run_after = FIXED_DATE + timedelta(minutes=5)
    broken = pg_plan("bf_pg_chunk_fails", columns={**pg_plan("x")["steps"][1]["columns"], "name": BAD_NAME})

    first = run_plan(broken, pg_database, logical_date=FIXED_DATE, run_after=run_after)

    assert first.state == "failed"
    chunks = {ti.map_index: str(ti.state) for ti in first.get_task_instances()
              if ti.task_id == "steps.copy_users.copy_chunk"}
    assert chunks == {0: "success", 1: "success", 2: "success", 3: "failed"}
    got = states(first)
    assert got["rollback.revert_applied"] == "success"
    assert got["steps.copy_users.copy_recent"] == "upstream_failed"
    assert got["outcome"] == "failed"
    # the copied rows were deleted and the table the plan created was dropped: the target is as it was
    assert query(pg_database.sqlalchemy_url, "SELECT to_regclass('users_v2') IS NULL") == [(True,)]
    reverted = query(pg_database.sqlalchemy_url, "SELECT step_id FROM airflow_migrate_history "
                                                 "WHERE action = 'revert' AND status = 'reverted' ORDER BY id")
    assert reverted == [("copy_users",), ("create_users_v2",)]

    fixed = pg_plan("bf_pg_chunk_fails")
    second = run_plan(fixed, pg_database, logical_date=FIXED_DATE, run_after=run_after)

    assert second.run_id == first.run_id
    assert second.state == "success", states(second)
    assert users_digest(pg_database.sqlalchemy_url, "users_v2") == users_digest(legacy_pg.sqlalchemy_url, "users")


def test_sqlite_example_plan_runs(sqlite_database, run_plan):
    seed_demo_database(Path(sqlite_database.sqlalchemy_url.removeprefix("sqlite:///")), users=2000)
    plan = yaml.safe_load(example_plan_path("backfill_users.yaml").read_text())
    plan["id"] = "bf_sqlite_example"

    dag_run = run_plan(plan, sqlite_database)

    assert dag_run.state == "success", states(dag_run)
    rows = query(sqlite_database.sqlalchemy_url,
                 "SELECT count(*), sum(json_extract(preferences, '$.notifications_enabled')) FROM users_v2")
    expected = query(sqlite_database.sqlalchemy_url, "SELECT count(*), sum(notifications_enabled) FROM users")
    assert rows == expected


def test_long_throttle_pause_defers_then_resumes(pg_database, legacy_pg, run_plan, capfd, caplog):
    # the metric reads 30 (over max 5) for its first 5 reads, then 0: the copy pauses in its worker, defers
    # once the pause passes defer_after_seconds, and the trigger's polls see it clear
    execute(legacy_pg.sqlalchemy_url, "CREATE SEQUENCE lag_reads")
    plan = pg_plan("bf_pg_throttled", chunks=1, throttle=[{
        "name": "replica_lag", "query": "SELECT CASE WHEN nextval('lag_reads') < 6 THEN 30 ELSE 0 END",
        "max": 5, "pause_seconds": 0.2, "max_pause_seconds": 0.5, "defer_after_seconds": 0.5}])

    dag_run = run_plan(plan, pg_database)

    assert dag_run.state == "success", states(dag_run)
    logs = capfd.readouterr()
    output = logs.out + logs.err + caplog.text
    assert "throttle 'replica_lag': 30 > max 5; pausing" in output
    assert "freeing the worker slot" in output  # the task deferred instead of sleeping in its worker
    assert "throttle cleared" in output and "resuming from the last checkpoint" in output
    assert query(legacy_pg.sqlalchemy_url, "SELECT last_value >= 6 FROM lag_reads") == [(True,)]
    assert users_digest(pg_database.sqlalchemy_url, "users_v2") == users_digest(legacy_pg.sqlalchemy_url, "users")


MARIADB_USERS_V2 = """CREATE TABLE IF NOT EXISTS users_v2 (
    id bigint PRIMARY KEY, email varchar(255) NOT NULL UNIQUE, name text, preferences json NOT NULL,
    updated_at datetime(6) NOT NULL)"""


def mariadb_target_plan(plan_id: str) -> dict:
    """The PostgreSQL example's backfill into a MariaDB target (its own DDL; the chunks, batches, lock as there)."""
    data = pg_plan(plan_id)
    data["steps"][0].update(
        up=MARIADB_USERS_V2, down="DROP TABLE IF EXISTS users_v2",
        verify="SELECT count(*) = 1 FROM information_schema.tables WHERE table_schema = DATABASE() "
               "AND table_name = 'users_v2'",
        verify_down="SELECT count(*) = 0 FROM information_schema.tables WHERE table_schema = DATABASE() "
                    "AND table_name = 'users_v2'")
    data["steps"][1].pop("throttle")  # its query reads pg_stat_activity, which MariaDB has not
    data["steps"] = data["steps"][:2]
    return data


def test_mapped_backfill_from_postgresql_into_mariadb(mariadb_database, legacy_pg, run_plan):
    dag_run = run_plan(mariadb_target_plan("bf_pg_to_mariadb"), mariadb_database)

    assert dag_run.state == "success", states(dag_run)
    chunk_tis = [ti for ti in dag_run.get_task_instances() if ti.task_id == "steps.copy_users.copy_chunk"]
    assert sorted(ti.map_index for ti in chunk_tis) == [0, 1, 2, 3]
    source = query(legacy_pg.sqlalchemy_url, "SELECT id, email, name, updated_at AT TIME ZONE 'UTC', "
                                             "jsonb_build_object('theme', theme, 'notifications_enabled', "
                                             "notifications_enabled)::text FROM users ORDER BY id")
    target = query(mariadb_database.sqlalchemy_url, "SELECT id, email, name, updated_at, preferences FROM users_v2 "
                                                    "ORDER BY id")
    assert [r[:4] for r in target] == [r[:4] for r in source]  # instants as UTC DATETIME
    assert [yaml.safe_load(r[4]) for r in target] == [yaml.safe_load(r[4]) for r in source]
    applied = query(mariadb_database.sqlalchemy_url, "SELECT step_id, status FROM airflow_migrate_history "
                                                     "WHERE action = 'apply' ORDER BY id")
    assert applied == [("create_users_v2", "applied"), ("copy_users", "applied")]
