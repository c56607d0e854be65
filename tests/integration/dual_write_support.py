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


@dataclass
class Writers:
    """Threads writing to the old table like an application: inserts, updates (including key updates), deletes.
    ``route()`` says which table a write goes to (it changes when the test switches the application over)."""

    url: str
    threads: int = 2
    pause_s: float = 0.002
    table: str = "users"
    route: Any = None  # callable → (url, table) of where writes go now; default: (url, table)
    seed: int = 7
    ops: dict[str, int] = field(default_factory=lambda: {"insert": 0, "update": 0, "key_update": 0, "delete": 0,
                                                          "error": 0})
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _next_id: int = NEW_IDS_FROM

    def _new_id(self) -> int:
        with self._lock:
            self._next_id += 1
            return self._next_id

    def _engine(self, url: str, cache: dict[str, Engine]) -> Engine:
        if url not in cache:
            cache[url] = create_engine(url)
            dialect_for(cache[url])
        return cache[url]

    def _one(self, rng: random.Random, engines: dict[str, Engine]) -> None:
        url, table = self.route() if self.route else (self.url, self.table)
        engine = self._engine(url, engines)
        op = rng.choices(["insert", "update", "key_update", "delete"], [4, 4, 1, 1])[0]
        with engine.begin() as conn:
            if op == "insert":
                i = self._new_id()
                conn.exec_driver_sql(f"INSERT INTO {table} (id, email, theme, notifications) VALUES "
                                     f"({i}, 'n{i}@example.com', 'blue', TRUE)")
            else:
                row = conn.exec_driver_sql(f"SELECT id FROM {table} WHERE id >= {rng.randint(1, self._next_id)} "
                                           f"ORDER BY id LIMIT 1").first()
                if row is None:
                    return
                if op == "update":
                    conn.exec_driver_sql(f"UPDATE {table} SET theme = 't{rng.randint(0, 999)}', notifications = "
                                         f"NOT notifications WHERE id = {row[0]}")
                elif op == "key_update":
                    conn.exec_driver_sql(f"UPDATE {table} SET id = {self._new_id()} WHERE id = {row[0]}")
                else:
                    conn.exec_driver_sql(f"DELETE FROM {table} WHERE id = {row[0]}")
        with self._lock:
            self.ops[op] += 1

    def _run(self, seed: int) -> None:
        rng, engines = random.Random(seed), {}
        try:
            while not self._stop.is_set():
                try:
                    self._one(rng, engines)
                except Exception as exc:  # a write refused (read-only old table, a lock wait): counted
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
