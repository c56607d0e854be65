"""The bundled demo: the "add user_preferences" plan on an embedded SQLite database."""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path

DEMO_CONN_ID = "app_db"
THEMES = ("light", "dark", "solarized", None)
EXAMPLES = ("add_user_preferences", "backfill_users", "dual_write_users")


def example_plan_path(name: str = "add_user_preferences.yaml") -> Path:
    return Path(str(resources.files("airflow_migrate_provider") / "examples" / name))


def seed_demo_database(path: Path, users: int = 1000) -> None:
    """An application database before the migration: users with theme/notification columns."""
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE users (
                id INTEGER PRIMARY KEY,
                email TEXT NOT NULL UNIQUE,
                name TEXT,
                theme TEXT,
                notifications_enabled BOOLEAN NOT NULL DEFAULT 1
            );
        """)
        db.executemany(
            "INSERT INTO users (id, email, name, theme, notifications_enabled) VALUES (?, ?, ?, ?, ?)",
            [(i, f"user{i}@example.com", f"User {i}", THEMES[i % len(THEMES)], i % 3 != 0)
             for i in range(1, users + 1)],
        )


def plan_failing_at(plan_path: Path, step_id: str, workdir: Path) -> Path:
    """A copy of a plan whose step ``step_id`` fails (to show the rollback), patched as the example's
    ``<plan>.failures.yaml`` says (keys merged into the step)."""
    import yaml

    from airflow_migrate_provider.errors import MigrateError

    data = yaml.safe_load(plan_path.read_text(encoding="utf-8"))
    failures = yaml.safe_load(plan_path.with_suffix(".failures.yaml").read_text(encoding="utf-8"))
    steps = {step["id"]: step for step in data["steps"]}
    if step_id not in steps or step_id not in failures:
        raise MigrateError(f"--fail-at: the demo plan has no step '{step_id}' that can be made to fail (steps: "
                           f"{', '.join(s for s in steps if s in failures)})")
    for key, value in failures[step_id].items():
        current = steps[step_id].get(key)
        steps[step_id][key] = {**current, **value} if isinstance(current, dict) else value
    failing = workdir / f"{plan_path.stem}.fail_at_{step_id}.yaml"
    failing.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return failing


def database_tables(path: Path) -> dict[str, list[str]]:
    """{table: columns} of a SQLite database, ledger excluded: what the demo shows after a run."""
    with sqlite3.connect(path) as db:
        names = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {name: [c[0] for c in db.execute("SELECT name FROM pragma_table_info(?) ORDER BY cid", (name,))]
                for name in names if not name.startswith("airflow_migrate_")}


LIVE_TABLE_VARIABLE = "users_table"  # the dual_write example's cutover sets it; the demo's writer follows it


class DemoWriter:
    """The demo's application while ``dual_write_users`` runs: inserts, updates and deletes users, in the table
    the ``users_table`` Airflow Variable names (``users`` until the cutover switches it to ``users_v2``), and
    remembers every write it was told succeeded, so the demo can show that none was lost."""

    def __init__(self, path: Path, pause_s: float = 0.01, seed: int = 1):
        import random
        import threading

        self.path, self.pause_s, self.rng = path, pause_s, random.Random(seed)
        with sqlite3.connect(path) as db:
            self.model: dict[int, tuple[str, str | None, bool]] = {
                r[0]: (r[1], r[2], bool(r[3])) for r in db.execute("SELECT id, email, theme, notifications_enabled "
                                                                   "FROM users")}
        self.next_id = max(self.model, default=0) + 1_000_000
        self.writes = {"old table": 0, "new table": 0}
        self.refused: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-writer", daemon=True)

    def live_table(self) -> str:
        """The Variable's value, read from Airflow's metadata DB as the application would read its config (the
        task SDK's Variable.get belongs to the task runner, not to another thread of the process)."""
        from airflow.models.variable import Variable
        from airflow.utils.session import create_session
        from sqlalchemy import select

        try:
            with create_session() as session:
                found = session.scalar(select(Variable).where(Variable.key == LIVE_TABLE_VARIABLE))
                return (found.val if found is not None else None) or "users"
        except Exception:  # the metadata DB is busy a moment: keep writing where we were
            return self._last_table

    _last_table = "users"

    @staticmethod
    def _forget_switch() -> None:
        """A fresh demo database starts on the old table, whatever an earlier demo left in the Variable."""
        from airflow.models.variable import Variable
        from airflow.utils.session import create_session
        from sqlalchemy import delete

        with create_session() as session:
            session.execute(delete(Variable).where(Variable.key == LIVE_TABLE_VARIABLE))

    def _write(self, db: sqlite3.Connection, table: str) -> None:
        op = self.rng.choice(["insert", "insert", "update", "update", "delete"]) if self.model else "insert"
        key = self.rng.choice(list(self.model)) if op != "insert" else self.next_id
        values = (f"new{key}@example.com", "dark", True) if op == "insert" else self.model.get(key)
        if op == "update":
            values = (self.model[key][0], self.rng.choice(THEMES[:3]), not self.model[key][2])
        prefs = "json_object('theme', ?, 'notifications_enabled', json(CASE WHEN ? THEN 'true' ELSE 'false' END))"
        if op == "delete":
            db.execute(f"DELETE FROM {table} WHERE id = ?", (key,))
        elif table == "users" and op == "insert":
            db.execute("INSERT INTO users (id, email, name, theme, notifications_enabled) VALUES (?, ?, ?, ?, ?)",
                       (key, values[0], f"User {key}", values[1], values[2]))
        elif table == "users":
            db.execute("UPDATE users SET theme = ?, notifications_enabled = ? WHERE id = ?",
                       (values[1], values[2], key))
        elif op == "insert":
            db.execute(f"INSERT INTO users_v2 (id, email, name, preferences) VALUES (?, ?, ?, {prefs})",
                       (key, values[0], f"User {key}", values[1], values[2]))
        else:
            db.execute(f"UPDATE users_v2 SET preferences = {prefs} WHERE id = ?", (values[1], values[2], key))
        db.commit()
        if op == "insert":
            self.next_id += 1
        if op == "delete":
            self.model.pop(key, None)
        else:
            self.model[key] = values  # type: ignore[assignment]
        self.writes["old table" if table == "users" else "new table"] += 1

    def _run(self) -> None:
        db = sqlite3.connect(self.path, timeout=30)
        try:
            while not self._stop.wait(self.pause_s):
                table = self._last_table = self.live_table()
                try:
                    self._write(db, table)
                except sqlite3.Error as exc:  # refused (the old table is read-only after the switch): not counted
                    db.rollback()
                    self.refused.append(str(exc))
        finally:
            db.close()

    def __enter__(self) -> DemoWriter:
        from airflow.models import import_all_models
        from sqlalchemy.orm import configure_mappers

        import_all_models()  # before the thread starts, or it deadlocks against dag.test()'s lazy imports
        configure_mappers()
        self._forget_switch()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)

    def report(self) -> list[str]:
        """What the writer did, and whether the table the application uses now holds every write."""
        table = self.live_table()
        with sqlite3.connect(self.path) as db:
            if table == "users":
                rows = db.execute("SELECT id, email, theme, notifications_enabled FROM users")
            else:
                rows = db.execute("SELECT id, email, json_extract(preferences, '$.theme'), "
                                  "json_extract(preferences, '$.notifications_enabled') FROM users_v2")
            actual = {r[0]: (r[1], r[2], bool(r[3])) for r in rows}
        lost = [k for k in self.model if actual.get(k) != self.model[k]]
        extra = [k for k in actual if k not in self.model]
        verdict = ("every write is there" if not lost and not extra else
                   f"{len(lost)} write(s) missing or different, {len(extra)} row(s) that should not be there")
        return [f"writer: {self.writes['old table']:,} writes to users, {self.writes['new table']:,} to users_v2 "
                f"while the migration ran ({len(self.refused)} refused)",
                f"the application now uses {table}: {len(actual):,} rows; {verdict}"]
