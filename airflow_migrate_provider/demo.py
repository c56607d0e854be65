"""The bundled demo: the "add user_preferences" plan on an embedded SQLite database."""

from __future__ import annotations

import sqlite3
from importlib import resources
from pathlib import Path

DEMO_CONN_ID = "app_db"
THEMES = ("light", "dark", "solarized", None)


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
