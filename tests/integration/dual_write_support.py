"""Shared by the dual-write tests: an application table, writer threads that insert, update (keys too) and delete
while a migration runs, and the check that the new table equals the old one through the transform."""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.dialects import dialect_for

SEED_ROWS = 2_000
NEW_IDS_FROM = 1_000_000


def prepared_engine(url: str) -> Engine:
    """An engine on ``url``, prepared by our dialect adapter (SQLite: busy timeout, BEGIN IMMEDIATE)."""
    engine = create_engine(url)
    dialect_for(engine)
    return engine


def seed_users(engine: Engine, rows: int = SEED_ROWS) -> None:
    """The application's table: users with two preference columns that move into one JSON column."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE users (id INTEGER PRIMARY KEY, email VARCHAR(120) NOT NULL, "
                             "theme VARCHAR(20), notifications BOOLEAN NOT NULL)")
        for start in range(1, rows + 1, 500):
            values = ", ".join(f"({i}, 'u{i}@example.com', '{'dark' if i % 3 else 'light'}', "
                               f"{'TRUE' if i % 2 else 'FALSE'})" for i in range(start, min(start + 500, rows + 1)))
            conn.exec_driver_sql(f"INSERT INTO users (id, email, theme, notifications) VALUES {values}")


def create_same_layout(engine: Engine, table: str = "users_v2") -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(f"CREATE TABLE {table} (id INTEGER PRIMARY KEY, email VARCHAR(120) NOT NULL, "
                             f"theme VARCHAR(20), notifications BOOLEAN NOT NULL)")


# how the application writes each table layout: "old" (theme, notifications columns) or "new" (one JSON column)
LAYOUTS = {
    "old": {"key": "id", "insert": "INSERT INTO {t} (id, email, theme, notifications) VALUES (:k, :email, :theme, :n)",
            "update": "UPDATE {t} SET theme = :theme, notifications = :n WHERE id = :k"},
    "new_pg": {"key": "user_id",
               "insert": "INSERT INTO {t} (user_id, email, preferences) VALUES (:k, :email, "
                         "jsonb_build_object('theme', CAST(:theme AS text), 'notifications', CAST(:n AS boolean)))",
               "update": "UPDATE {t} SET preferences = jsonb_build_object('theme', CAST(:theme AS text), "
                         "'notifications', CAST(:n AS boolean)) WHERE user_id = :k"},
    "new_sqlite": {"key": "id",
                   "insert": "INSERT INTO {t} (id, email, preferences) VALUES (:k, :email, json_object('theme', "
                             ":theme, 'notifications', json(CASE WHEN :n THEN 'true' ELSE 'false' END)))",
                   "update": "UPDATE {t} SET preferences = json_object('theme', :theme, 'notifications', "
                             "json(CASE WHEN :n THEN 'true' ELSE 'false' END)) WHERE id = :k"},
    "new_mariadb": {"key": "user_id",
                    "insert": "INSERT INTO {t} (user_id, email, preferences) VALUES (:k, :email, "
                              "JSON_OBJECT('theme', :theme, 'notifications', :n))",
                    "update": "UPDATE {t} SET preferences = JSON_OBJECT('theme', :theme, 'notifications', :n) "
                              "WHERE user_id = :k"},
}
# MariaDB: the old table's BOOLEAN is TINYINT(1), so the JSON holds 1/0
MARIADB_PREFERENCES = "JSON_OBJECT('theme', theme, 'notifications', notifications)"
MARIADB_NOTIFICATIONS = "JSON_VALUE(preferences, '$.notifications') IN ('true', '1')"
STATE_SQL = {
    "old": "SELECT id, email, theme, notifications FROM {t}",
    "new_pg": "SELECT user_id, email, preferences->>'theme', (preferences->>'notifications')::boolean FROM {t}",
    "new_sqlite": "SELECT id, email, json_extract(preferences, '$.theme'), json_extract(preferences, "
                  "'$.notifications') FROM {t}",
    "new_mariadb": f"SELECT user_id, email, JSON_VALUE(preferences, '$.theme'), {MARIADB_NOTIFICATIONS} FROM {{t}}",
}


def create_mariadb_preferences(engine: Engine) -> None:
    """The new layout on MariaDB: one JSON column instead of theme and notifications."""
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE user_preferences (user_id INTEGER PRIMARY KEY, email VARCHAR(120) "
                             "NOT NULL UNIQUE, preferences JSON NOT NULL)")


def seeded_model(rows: int = SEED_ROWS) -> dict[int, tuple[Any, ...]]:
    return {i: (f"u{i}@example.com", "dark" if i % 3 else "light", i % 2 == 1) for i in range(1, rows + 1)}


def table_state(engine: Engine, table: str, layout: str = "old") -> dict[int, tuple[Any, ...]]:
    """key → (email, theme, notifications) as a table holds it, whatever its layout."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return {int(r[0]): (r[1], r[2], bool(r[3])) for r in conn.execute(text(STATE_SQL[layout].format(t=table)))}


@dataclass
class Writers:
    """Threads writing like an application: inserts, updates, key updates and deletes, each committed write
    applied to ``model`` (key → values), so a test can prove the database holds every acknowledged write.
    ``route()`` says where writes go now: (url, table, layout); it changes when the application is switched."""

    url: str
    threads: int = 2
    pause_s: float = 0.002
    table: str = "users"
    route: Any = None
    seed: int = 7
    model: dict[int, tuple[Any, ...]] = field(default_factory=seeded_model)
    ops: dict[str, int] = field(default_factory=lambda: {"insert": 0, "update": 0, "key_update": 0, "delete": 0,
                                                          "error": 0})
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_id: int = NEW_IDS_FROM

    def _engine(self, url: str, cache: dict[str, Engine]) -> Engine:
        if url not in cache:
            cache[url] = create_engine(url)
            dialect_for(cache[url])
        return cache[url]

    def _one(self, rng: random.Random, engines: dict[str, Engine]) -> None:
        from sqlalchemy import text

        url, table, layout = self.route() if self.route else (self.url, self.table, "old")
        sql, key = LAYOUTS[layout], LAYOUTS[layout]["key"]
        engine = self._engine(url, engines)
        op = rng.choices(["insert", "update", "key_update", "delete"], [4, 4, 1, 1])[0]
        with self._lock:  # one write at a time: the model's order is the database's commit order
            if op == "insert" or not self.model:
                op = "insert"
                self._next_id += 1
                k, values = self._next_id, (f"n{self._next_id}@example.com", "blue", True)
            else:
                k = rng.choice(list(self.model))
            with engine.begin() as conn:
                if op == "insert":
                    conn.execute(text(sql["insert"].format(t=table)),
                                 {"k": k, "email": values[0], "theme": values[1], "n": values[2]})
                elif op == "update":
                    values = (self.model[k][0], f"t{rng.randint(0, 999)}", not self.model[k][2])
                    conn.execute(text(sql["update"].format(t=table)), {"k": k, "theme": values[1], "n": values[2]})
                elif op == "key_update":
                    self._next_id += 1
                    conn.execute(text(f"UPDATE {table} SET {key} = :new WHERE {key} = :k"),
                                 {"new": self._next_id, "k": k})
                else:
                    conn.execute(text(f"DELETE FROM {table} WHERE {key} = :k"), {"k": k})
            if op == "insert" or op == "update":
                self.model[k] = values
            elif op == "key_update":
                self.model[self._next_id] = self.model.pop(k)
            else:
                del self.model[k]
            self.ops[op] += 1

    def _run(self, seed: int) -> None:
        rng, engines = random.Random(seed), {}
        try:
            while not self._stop.is_set():
                try:
                    self._one(rng, engines)
                except Exception as exc:  # a write refused (read-only old table, a lock wait): not in the model
                    with self._lock:
                        self.ops["error"] += 1
                        self.errors.append(str(exc).splitlines()[0][:200])
                time.sleep(self.pause_s)
        finally:
            for engine in engines.values():
                engine.dispose()

    def __enter__(self) -> Writers:
        self._workers = [threading.Thread(target=self._run, args=(self.seed + n,), daemon=True)
                         for n in range(self.threads)]
        for worker in self._workers:
            worker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=30)

    def wait_for(self, writes: int, timeout_s: float = 60.0) -> None:
        """Let the writers go on until they made ``writes`` writes in all."""
        deadline = time.monotonic() + timeout_s
        while self.writes < writes and time.monotonic() < deadline:
            time.sleep(0.02)

    @property
    def writes(self) -> int:
        return sum(v for k, v in self.ops.items() if k != "error")


def assert_holds_every_write(writers: Writers, engine: Engine, table: str, layout: str = "old") -> int:
    """The table holds exactly what the writers committed: 0 lost, 0 divergent, 0 resurrected rows."""
    actual, expected = table_state(engine, table, layout), writers.model
    missing = sorted(set(expected) - set(actual))[:5]
    extra = sorted(set(actual) - set(expected))[:5]
    wrong = sorted(k for k in set(expected) & set(actual) if expected[k] != actual[k])[:5]
    assert not missing and not extra and not wrong, (
        f"{len(expected)} rows expected, {len(actual)} found; missing {missing}, unexpected {extra}, differing "
        f"{[(k, expected[k], actual[k]) for k in wrong]}")
    return len(actual)


def rows(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as conn:
        return sorted(tuple(_plain(v) for v in r) for r in conn.exec_driver_sql(sql).all())


def _plain(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    return value


def assert_same(source: Engine, source_sql: str, target: Engine, target_sql: str) -> int:
    """The two queries return the same rows (0 lost, 0 divergent): the row count."""
    expected, actual = rows(source, source_sql), rows(target, target_sql)
    missing = sorted(set(expected) - set(actual))[:5]
    extra = sorted(set(actual) - set(expected))[:5]
    assert not missing and not extra and len(expected) == len(actual), (
        f"{len(expected)} rows expected, {len(actual)} found; missing e.g. {missing}; unexpected e.g. {extra}")
    return len(expected)
