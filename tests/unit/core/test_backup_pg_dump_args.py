"""pg_dump/pg_restore get the connection without the password on their command line or in their environment:
the password is in a private password file while the tool runs; odd characters in values are escaped for libpq;
the rest of the worker's environment (AIRFLOW_CONN_* URIs, other secrets) is not passed on."""

from __future__ import annotations

import stat
from pathlib import Path

from sqlalchemy import create_engine

from airflow_migrate_provider.core.backup.strategies import PgDumpStrategy


def test_password_stays_off_the_command_line_and_out_of_the_environment(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "worker-wide")
    engine = create_engine("postgresql+psycopg://migrator:s3cr%27et%3A%5Cx@db.internal:5433/app?sslmode=require")

    with PgDumpStrategy._libpq(engine) as (dsn, env):
        passfile = Path(env["PGPASSFILE"])
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        assert passfile.read_text() == "*:*:*:*:s3cr'et\\:\\\\x\n"  # ':' and '\' escaped as libpq reads them

    assert not passfile.exists()
    assert "s3cr" not in dsn
    assert "PGPASSWORD" not in env and not any("s3cr" in v for v in env.values())
    assert "host='db.internal'" in dsn and "port='5433'" in dsn and "dbname='app'" in dsn
    assert "sslmode='require'" in dsn


def test_quotes_and_backslashes_in_values_are_escaped(monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    monkeypatch.delenv("PGPASSFILE", raising=False)
    engine = create_engine("postgresql+psycopg://o%27brien@localhost/we%5Cird")

    with PgDumpStrategy._libpq(engine) as (dsn, env):
        assert "user='o\\'brien'" in dsn
        assert "dbname='we\\\\ird'" in dsn
        assert "PGPASSWORD" not in env and "PGPASSFILE" not in env


def test_only_what_the_tool_needs_is_passed_on(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", "postgresql://app:leaked@db/app")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leaked")
    monkeypatch.setenv("PGSSLROOTCERT", "/etc/ssl/root.crt")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    monkeypatch.setenv("TZ", "UTC")
    engine = create_engine("postgresql+psycopg://migrator:pw@db.internal/app")

    with PgDumpStrategy._libpq(engine) as (_, env):
        assert set(env) <= {"PATH", "HOME", "TZ", "LANG", "LANGUAGE", "TMPDIR", "LD_LIBRARY_PATH", "PGPASSFILE"} | {
            k for k in env if k.startswith(("LC_", "PG"))}
        assert env["PGSSLROOTCERT"] == "/etc/ssl/root.crt" and env["LC_ALL"] == "C.UTF-8" and env["TZ"] == "UTC"
        assert "leaked" not in repr(env)
