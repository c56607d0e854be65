"""Cutover with the application live, against real databases: writers keep writing through capture, history,
replay, the switch and the rollback; every write they were told succeeded must be in the table the application
uses at the end — after the switch (the new table) and after a rollback (the old table again).

Three pairings, three kinds of switch: SQLite in one file switched by renaming the tables, PostgreSQL in one
database moving users into a new layout (user_preferences) switched by an Airflow Variable, and PostgreSQL to
another PostgreSQL database switched by an HTTP feature flag."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import inspect
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.kinds import kind_named
from airflow_migrate_provider.core.ledger import Ledger
from airflow_migrate_provider.core.rollback import rollback_run
from airflow_migrate_provider.core.steps import StepRunner
from airflow_migrate_provider.errors import CutoverFailed
from tests.integration.dual_write_support import (
    Writers,
    assert_holds_every_write,
    create_same_layout,
    prepared_engine,
    seed_users,
)
from tests.integration.migrate_it_support import make_plan, who


class DictVariables:
    """Airflow Variables stand-in: a dict."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.values.get(key)

    def set(self, key: str, value: str) -> None:
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


class FlagServer:
    """A feature-flag service on loopback: POST /flag {"live": "new"|"old"}; the writers read ``live``."""

    def __init__(self, fail_switch: bool = False, apply_then_fail: bool = False) -> None:
        self.live, self.fail_switch, self.apply_then_fail = "old", fail_switch, apply_then_fail
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if server.fail_switch and body.get("live") == "new":
                    self.send_response(503)
                elif server.apply_then_fail and body.get("live") == "new":
                    server.live = "new"  # it switched, but the answer says it did not
                    self.send_response(503)
                else:
                    server.live = body.get("live", server.live)
                    self.send_response(200)
                self.end_headers()

            def do_GET(self) -> None:
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()


@dataclass
class Pairing:
    name: str
    old: Engine
    new: Engine
    old_url: str
    new_url: str
    steps: str
    route: Any  # writers' routing: () → (url, table, layout)
    live_table: tuple[str, str]  # (table, layout) the application uses after the switch
    old_table_after: str  # the old table's name after the switch
    variables: Any = None
    closers: list[Any] = field(default_factory=list)


DUAL_WRITE = """
  - id: sync_users
    kind: dual_write
    source: {{table: users}}
    target: {target}
    key: {key}
    columns: {columns}
    reverse_columns: {reverse}
    chunks: 2
    batch: {{rows: 200, seconds: null}}
    replay: {{batch_changes: 300}}
    catch_up: {{max_lag_changes: 50, max_lag_seconds: 30, timeout_minutes: 2}}
  - id: cut_over
    kind: cutover
    dual_write: sync_users
    switch_reads: {switch}
    max_lock_seconds: 5
    approval: false
    smoke:
      - {{name: rows_exist, sql: "SELECT count(*) > 0 FROM {live}"}}
"""



def _sqlite_rename(tmp_path, switch: str = "{rename: {old_table_becomes: users_old}}", more: str = "",
                   live: str = "users", variables: Any = None) -> tuple[Pairing, Engine]:
    """A seeded SQLite app database and the two-step plan (dual_write, cutover) on it; ``more``: cutover keys."""
    url = f"sqlite:///{(tmp_path / 'app.sqlite').resolve()}"
    engine = prepared_engine(url)
    seed_users(engine)
    create_same_layout(engine)
    steps = DUAL_WRITE.format(target="users_v2", key="id", columns="{}", reverse="{}", live=live,
                              switch=switch) + more
    return Pairing("x", engine, engine, url, url, steps, None, ("users", "old"), "users_old", variables), engine


def _mariadb_rename(factory) -> Iterator[Pairing]:
    """MariaDB, one database: ``RENAME TABLE users TO users_old, users_v2 TO users`` in one statement."""
    with factory() as db:
        engine, url = prepared_engine(db.sqlalchemy_url), db.sqlalchemy_url
        seed_users(engine)
        create_same_layout(engine)
        steps = DUAL_WRITE.format(target="users_v2", key="id", columns="{}", reverse="{}", live="users",
                                  switch="{rename: {old_table_becomes: users_old}}")
        yield Pairing("mariadb_rename", engine, engine, url, url, steps, lambda: (url, "users", "old"),
                      ("users", "old"), "users_old")
        engine.dispose()


def _pg_to_mariadb_http(pg_factory, mariadb_factory) -> Iterator[Pairing]:
    """PostgreSQL (old) to MariaDB (new), switched by an HTTP flag: the reverse capture is MariaDB's."""
    with pg_factory() as old_db, mariadb_factory() as new_db:
        old, new = prepared_engine(old_db.sqlalchemy_url), prepared_engine(new_db.sqlalchemy_url)
        seed_users(old)
        create_same_layout(new, "users")
        flag = FlagServer()
        switch = (f'{{http: {{switch: {{url: "{flag.url}/flag", body: {{live: new}}}}, '
                  f'switch_back: {{url: "{flag.url}/flag", body: {{live: old}}}}}}}}')
        steps = DUAL_WRITE.format(target="users", key="id", columns="{}", reverse="{}", live="users", switch=switch)

        def route_flag() -> tuple[str, str, str]:
            return (new_db.sqlalchemy_url if flag.live == "new" else old_db.sqlalchemy_url), "users", "old"
        yield Pairing("pg_to_mariadb_http", old, new, old_db.sqlalchemy_url, new_db.sqlalchemy_url, steps,
                      route_flag, ("users", "old"), "users")
        flag.close()
        old.dispose()
        new.dispose()


@pytest.fixture(params=["sqlite_rename", "pg_same_db_new_layout_variable", "pg_to_pg_http", "mariadb_rename",
                        "pg_to_mariadb_http"])
def pairing(request: pytest.FixtureRequest, pg_database_factory, tmp_path) -> Iterator[Pairing]:
    if request.param == "mariadb_rename":
        yield from _mariadb_rename(request.getfixturevalue("mariadb_database_factory"))
        return
    if request.param == "pg_to_mariadb_http":
        yield from _pg_to_mariadb_http(pg_database_factory, request.getfixturevalue("mariadb_database_factory"))
        return
    if request.param == "sqlite_rename":
        url = f"sqlite:///{(tmp_path / 'app.sqlite').resolve()}"
        engine = prepared_engine(url)
        seed_users(engine)
        create_same_layout(engine)
        steps = DUAL_WRITE.format(target="users_v2", key="id", columns="{}", reverse="{}", live="users",
                                  switch="{rename: {old_table_becomes: users_old}}")
        yield Pairing("sqlite_rename", engine, engine, url, url, steps, lambda: (url, "users", "old"),
                      ("users", "old"), "users_old")
        engine.dispose()
        return
    if request.param == "pg_same_db_new_layout_variable":
        with pg_database_factory() as db:
            engine, url = prepared_engine(db.sqlalchemy_url), db.sqlalchemy_url
            seed_users(engine)
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE user_preferences (user_id INTEGER PRIMARY KEY, email VARCHAR(120) "
                                     "NOT NULL UNIQUE, preferences JSONB NOT NULL)")
            variables = DictVariables()
            columns = ('{user_id: id, preferences: "jsonb_build_object(\'theme\', theme, \'notifications\', '
                       'notifications)"}')
            reverse = ('{theme: "preferences->>\'theme\'", notifications: '
                       '"(preferences->>\'notifications\')::boolean"}')
            steps = DUAL_WRITE.format(target="user_preferences", key="user_id", columns=columns, reverse=reverse,
                                      live="user_preferences",
                                      switch="{variable: {key: users_table, value: user_preferences}}")

            def route() -> tuple[str, str, str]:
                if variables.get("users_table") == "user_preferences":
                    return url, "user_preferences", "new_pg"
                return url, "users", "old"
            yield Pairing("pg_same_db_new_layout_variable", engine, engine, url, url, steps, route,
                          ("user_preferences", "new_pg"), "users", variables)
            engine.dispose()
        return
    with pg_database_factory() as old_db, pg_database_factory() as new_db:
        old, new = prepared_engine(old_db.sqlalchemy_url), prepared_engine(new_db.sqlalchemy_url)
        seed_users(old)
        create_same_layout(new, "users")
        flag = FlagServer()
        switch = (f'{{http: {{switch: {{url: "{flag.url}/flag", body: {{live: new}}}}, '
                  f'switch_back: {{url: "{flag.url}/flag", body: {{live: old}}}}}}}}')
        steps = DUAL_WRITE.format(target="users", key="id", columns="{}", reverse="{}", live="users", switch=switch)

        def route_flag() -> tuple[str, str, str]:
            return (new_db.sqlalchemy_url if flag.live == "new" else old_db.sqlalchemy_url), "users", "old"
        yield Pairing("pg_to_pg_http", old, new, old_db.sqlalchemy_url, new_db.sqlalchemy_url, steps, route_flag,
                      ("users", "old"), "users")
        flag.close()
        old.dispose()
        new.dispose()


def _context(p: Pairing, run_id: str = "r1") -> tuple[RunContext, Any, Any]:
    separate = p.old is not p.new
    plan = make_plan(p.steps, plan_id="cut_plan",
                     connections="{target: new_db, source: old_db}" if separate else "{target: app_db}")
    ledger = Ledger(p.new, plan.id)
    ledger.ensure()
    ctx = RunContext(p.new, dialect_for(p.new), ledger, who(run_id), plan=plan, source=p.old if separate else None,
                     sleep=lambda s: None, variables=p.variables)
    return ctx, plan.steps[0], plan.steps[1]


def test_cutover_with_live_writers_loses_no_write_and_rolls_back_with_none_lost(pairing: Pairing) -> None:
    ctx, dual_write, cutover = _context(pairing)
    with Writers(pairing.old_url, route=pairing.route) as writers:
        writers.wait_for(50)
        assert kind_named("dual_write").apply(ctx, dual_write).outcome == "applied"
        writers.wait_for(writers.writes + 100)
        result = kind_named("cutover").apply(ctx, cutover)
        assert result.outcome == "applied", result.verified
        writers.wait_for(writers.writes + 200)  # the application now writes the new side
    live, layout = pairing.live_table
    assert_holds_every_write(writers, pairing.new, live, layout)
    assert writers.ops["key_update"] > 0 and writers.ops["delete"] > 0
    assert any("lock held" in line for line in result.verified)
    if pairing.old is pairing.new:  # one database: every row compared as of the lock
        assert any(line.startswith("rows at the switch:") and "all equal" in line for line in result.verified), \
            result.verified

    # the old table refuses writes after the switch
    with pytest.raises(Exception, match="read-only"), pairing.old.begin() as conn:
        conn.exec_driver_sql(f"DELETE FROM {pairing.old_table_after} WHERE id = 1")

    # roll back (a health gate tripped, say) while the application keeps writing: the old table gets every write
    with Writers(pairing.old_url, route=pairing.route, model=writers.model, seed=99) as more:
        more.wait_for(50)
        report = rollback_run(ctx.ledger, StepRunner.of(ctx), ctx.who)
        assert [r.step_id for r in report.reverted] == ["cut_over", "sync_users"]
        more.wait_for(more.writes + 100)
    assert pairing.route()[1:] == ("users", "old")  # the application is back on the old table
    assert_holds_every_write(more, pairing.old, "users", "old")
    with pairing.new.connect() as conn:
        assert conn.exec_driver_sql(f"SELECT count(*) FROM {dual_write.target}").scalar() == 0
    leftovers = [t for t in inspect(pairing.old).get_table_names() + inspect(pairing.new).get_table_names()
                 if t.startswith("am_chg_")]
    assert leftovers == []


def test_a_failing_switch_rolls_back_with_nothing_switched(pg_database_factory) -> None:
    with pg_database_factory() as old_db, pg_database_factory() as new_db:
        old, new = prepared_engine(old_db.sqlalchemy_url), prepared_engine(new_db.sqlalchemy_url)
        seed_users(old)
        create_same_layout(new, "users")
        flag = FlagServer(fail_switch=True)
        switch = (f'{{http: {{switch: {{url: "{flag.url}/flag", body: {{live: new}}}}, '
                  f'switch_back: {{url: "{flag.url}/flag", body: {{live: old}}}}}}}}')
        p = Pairing("x", old, new, old_db.sqlalchemy_url, new_db.sqlalchemy_url,
                    DUAL_WRITE.format(target="users", key="id", columns="{}", reverse="{}", live="users",
                                      switch=switch), None, ("users", "old"), "users")
        ctx, dual_write, cutover = _context(p)
        kind_named("dual_write").apply(ctx, dual_write)
        with pytest.raises(CutoverFailed, match="answered 503"):
            kind_named("cutover").apply(ctx, cutover)
        assert flag.live == "old"
        report = rollback_run(ctx.ledger, StepRunner.of(ctx), ctx.who)
        assert "sync_users" in [r.step_id for r in report.reverted]
        with old.begin() as conn:  # the old table takes writes: no guard left behind
            conn.exec_driver_sql("DELETE FROM users WHERE id = 1")
        assert [t for t in inspect(new).get_table_names() if t.startswith("am_chg_")] == []
        flag.close()
        old.dispose()
        new.dispose()


def test_verify_reports_the_keys_where_the_new_table_diverges(pairing: Pairing) -> None:
    ctx, dual_write, cutover = _context(pairing)
    kind_named("dual_write").apply(ctx, dual_write)
    key = dual_write.key[0]
    with pairing.new.begin() as conn:  # someone writes straight into the new table: real divergence
        conn.exec_driver_sql(f"UPDATE {dual_write.target} SET email = 'tampered@example.com' WHERE {key} = 7")
    with pairing.old.begin() as conn:  # a change captured but not yet replayed: in flight, not divergence
        conn.exec_driver_sql("UPDATE users SET email = 'moved@example.com' WHERE id = 8")
    from airflow_migrate_provider.core.kinds.cutover import cutover_of

    with pytest.raises(CutoverFailed, match=r"diverges from the old one on 1 key\(s\).*\b7\b") as caught:
        cutover_of(ctx, cutover).verify()
    assert "Nothing was switched" in str(caught.value)


def test_a_failed_switch_back_is_never_replaced_by_a_backup_restore(tmp_path) -> None:
    """A restore would drop the application's writes made during the run: the rollback stops and says so."""
    from types import SimpleNamespace

    from airflow_migrate_provider.errors import RevertFailed

    p, engine = _sqlite_rename(tmp_path)
    ctx, dual_write, cutover = _context(p)
    kind_named("dual_write").apply(ctx, dual_write)
    kind_named("cutover").apply(ctx, cutover)
    extra = ctx.ledger.applied()["cut_over"].actions.extra
    reverse = extra["reverse_capture"]["change_table"]
    with engine.begin() as conn:  # break the way back: its change table is gone
        conn.exec_driver_sql(f"DROP TABLE {reverse}")
    with pytest.raises(RevertFailed, match="would drop the application's writes"):
        rollback_run(ctx.ledger, StepRunner.of(ctx), ctx.who, backup=SimpleNamespace(id="b1"))  # type: ignore[arg-type]
    assert inspect(engine).has_table("users_old")  # nothing was restored over the live table
    engine.dispose()


@pytest.mark.parametrize("pairing", ["sqlite_rename", "pg_same_db_new_layout_variable", "mariadb_rename"],
                         indirect=True)
def test_rows_are_compared_at_the_switch_and_a_difference_switches_back(pairing: Pairing) -> None:
    """One database: every row at the switch (across two, counts at the snapshot; rows by the verify task)."""
    from airflow_migrate_provider.core.kinds.cutover import cutover_of

    ctx, dual_write, cutover = _context(pairing)
    kind_named("dual_write").apply(ctx, dual_write)
    with pairing.new.begin() as conn:  # diverges after the verify task, before the switch
        conn.exec_driver_sql(f"UPDATE {dual_write.target} SET email = 'tampered@example.com' "
                             f"WHERE {dual_write.key[0]} = 7")
    with pytest.raises(CutoverFailed, match=r"at the switch the new table differs from the old one on 1 key\(s\): 7"):
        cutover_of(ctx, cutover).switch()
    rollback_run(ctx.ledger, StepRunner.of(ctx), ctx.who)
    assert pairing.route is None or pairing.route()[1:] == ("users", "old")
    assert inspect(pairing.old).has_table("users") and not inspect(pairing.old).has_table("users_old")


@pytest.mark.parametrize("outside", ["wait", "fail"])
def test_the_window_defers_or_fails_safe_outside_it(tmp_path, outside: str) -> None:
    from datetime import datetime, timezone

    from airflow_migrate_provider.errors import CutoverDeferral

    p, engine = _sqlite_rename(tmp_path, more=f"    window: {{days: [sun], start: '02:00', end: '06:00', "
                                              f"timezone: Europe/Berlin, outside: {outside}}}\n")
    ctx, dual_write, cutover = _context(p)
    kind_named("dual_write").apply(ctx, dual_write)
    wednesday = datetime(2026, 12, 2, 14, 0, tzinfo=timezone.utc)
    sunday_night = datetime(2026, 12, 6, 2, 30, tzinfo=timezone.utc)  # 03:30 in Berlin

    kind_named("cutover").window_check(cutover, ctx, now=sunday_night)  # open: no exception
    if outside == "wait":
        with pytest.raises(CutoverDeferral) as wait:
            kind_named("cutover").window_check(cutover, ctx, now=wednesday)
        assert wait.value.until == datetime(2026, 12, 6, 1, 0, tzinfo=timezone.utc)  # Sunday 02:00 Berlin
    else:
        with pytest.raises(CutoverFailed, match=r"fail outside the window.*nothing was switched"):
            kind_named("cutover").window_check(cutover, ctx, now=wednesday)
    assert not inspect(engine).has_table("users_old")
    engine.dispose()



def test_a_switch_that_answers_an_error_after_switching_is_switched_back(pg_database_factory) -> None:
    with pg_database_factory() as old_db, pg_database_factory() as new_db:
        old, new = prepared_engine(old_db.sqlalchemy_url), prepared_engine(new_db.sqlalchemy_url)
        seed_users(old)
        create_same_layout(new, "users")
        flag = FlagServer(apply_then_fail=True)
        switch = (f'{{http: {{switch: {{url: "{flag.url}/flag", body: {{live: new}}}}, '
                  f'switch_back: {{url: "{flag.url}/flag", body: {{live: old}}}}}}}}')
        p = Pairing("x", old, new, old_db.sqlalchemy_url, new_db.sqlalchemy_url,
                    DUAL_WRITE.format(target="users", key="id", columns="{}", reverse="{}", live="users",
                                      switch=switch), None, ("users", "old"), "users")
        ctx, dual_write, cutover = _context(p)
        kind_named("dual_write").apply(ctx, dual_write)
        with pytest.raises(CutoverFailed, match="answered 503"):
            kind_named("cutover").apply(ctx, cutover)
        assert flag.live == "new"  # the flag moved although the call failed
        report = rollback_run(ctx.ledger, StepRunner.of(ctx), ctx.who)
        assert [r.step_id for r in report.reverted] == ["cut_over", "sync_users"]
        assert flag.live == "old"  # the rollback switched it back
        flag.close()
        old.dispose()
        new.dispose()


def test_a_retried_rollback_of_a_rename_finds_the_names_already_swapped_back(tmp_path) -> None:
    p, engine = _sqlite_rename(tmp_path)
    ctx, dual_write, cutover = _context(p)
    kind_named("dual_write").apply(ctx, dual_write)
    kind_named("cutover").apply(ctx, cutover)
    with engine.begin() as conn:  # an earlier try swapped the names back, then died
        conn.exec_driver_sql("DROP TRIGGER IF EXISTS am_ro_x")
        conn.exec_driver_sql("ALTER TABLE users RENAME TO users_v2")
        conn.exec_driver_sql("ALTER TABLE users_old RENAME TO users")
    report = rollback_run(ctx.ledger, StepRunner.of(ctx), ctx.who)
    cut = next(r for r in report.reverted if r.step_id == "cut_over")
    assert "the names were swapped back by an earlier try" in cut.verified
    assert inspect(engine).has_table("users") and not inspect(engine).has_table("users_old")
    with engine.begin() as conn:  # the old table takes writes again
        conn.exec_driver_sql("DELETE FROM users WHERE id = 5")
    engine.dispose()


def test_after_a_switch_back_the_new_table_refuses_writes_until_the_dual_write_is_reverted(tmp_path) -> None:
    p, engine = _sqlite_rename(tmp_path)
    ctx, dual_write, cutover = _context(p)
    kind_named("dual_write").apply(ctx, dual_write)
    kind_named("cutover").apply(ctx, cutover)
    StepRunner.of(ctx).revert(ctx.ledger.applied()["cut_over"])  # only the cutover: the dual_write stays applied
    with pytest.raises(Exception, match="rolling back"), engine.begin() as conn:
        conn.exec_driver_sql("UPDATE users_v2 SET theme = 'stale flag' WHERE id = 3")
    # the dual_write stays applied: its replay lifts the guard and keeps the new table in sync again
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE users SET theme = 'after rollback' WHERE id = 3")
    kind_named("dual_write").replay(ctx, dual_write)  # lifts the guard (the lag is under the threshold already)
    from airflow_migrate_provider.core.kinds.dual_write import forward_replayer

    assert forward_replayer(ctx, dual_write).drain(100).changes == 1
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT theme FROM users_v2 WHERE id = 3").scalar() == "after rollback"
    engine.dispose()


def test_the_dual_write_revert_drops_a_reverse_capture_a_dead_cutover_left(tmp_path, monkeypatch) -> None:
    from airflow_migrate_provider.core.capture.cutover import Cutover
    from airflow_migrate_provider.core.kinds.cutover import cutover_of

    p, engine = _sqlite_rename(tmp_path)
    ctx, dual_write, cutover = _context(p)
    kind_named("dual_write").apply(ctx, dual_write)

    def die(*_args: Any) -> None:  # the worker is killed after installing the reverse capture
        raise KeyboardInterrupt

    monkeypatch.setattr(Cutover, "_switch_under_lock", die)
    monkeypatch.setattr(Cutover, "_abandon", lambda *args: None)  # a killed worker cleans nothing up
    with pytest.raises(KeyboardInterrupt):
        cutover_of(ctx, cutover).switch()
    assert len([t for t in inspect(engine).get_table_names() if t.startswith("am_chg_")]) == 2
    rollback_run(ctx.ledger, StepRunner.of(ctx), ctx.who)
    assert [t for t in inspect(engine).get_table_names() if t.startswith("am_chg_")] == []
    engine.dispose()


def test_a_try_that_died_around_a_variable_switch_is_not_switched_again_but_rolled_back(tmp_path, monkeypatch) -> None:
    from airflow_migrate_provider.core.capture import switch as switching
    from airflow_migrate_provider.core.kinds.cutover import cutover_of

    variables = DictVariables()
    variables.set("users_table", "users")
    p, engine = _sqlite_rename(tmp_path, switch="{variable: {key: users_table, value: users_v2}}", live="users_v2",
                               variables=variables)
    ctx, dual_write, cutover = _context(p)
    kind_named("dual_write").apply(ctx, dual_write)
    real_switch = switching.switch

    def switch_then_die(recorded: dict, *args: Any, **kwargs: Any) -> None:
        real_switch(recorded, *args, **kwargs)
        raise KeyboardInterrupt  # the worker is killed right after the Variable was set

    monkeypatch.setattr(switching, "switch", switch_then_die)
    with pytest.raises(KeyboardInterrupt):
        cutover_of(ctx, cutover).switch()
    monkeypatch.setattr(switching, "switch", real_switch)
    assert variables.get("users_table") == "users_v2"
    with pytest.raises(CutoverFailed, match=r"an earlier try .* died before it finished"):
        cutover_of(ctx, cutover).switch()  # the retry: fail safe, never record the new value as "previous"
    rollback_run(ctx.ledger, StepRunner.of(ctx), ctx.who)
    assert variables.get("users_table") == "users"  # switched back to the value from before the first try
    assert [t for t in inspect(engine).get_table_names() if t.startswith("am_chg_")] == []
    engine.dispose()
