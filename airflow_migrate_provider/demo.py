"""The bundled demo: the "add user_preferences" plan on an embedded SQLite database."""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path

DEMO_CONN_ID = "app_db"
THEMES = ("light", "dark", "solarized", None)
EXAMPLES = ("add_user_preferences", "backfill_users")


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
