"""pg_dump/pg_restore get the connection without the password on their command line; the password goes
through the environment only, and odd characters in values are escaped for libpq."""

from __future__ import annotations

from sqlalchemy import create_engine

from airflow_migrate_provider.core.backup.strategies import PgDumpStrategy


def test_password_stays_off_the_command_line():
    engine = create_engine("postgresql+psycopg://migrator:s3cr%27et@db.internal:5433/app?sslmode=require")

    dsn, env = PgDumpStrategy._libpq(engine)

    assert "s3cr" not in dsn
    assert env["PGPASSWORD"] == "s3cr'et"
    assert "host='db.internal'" in dsn and "port='5433'" in dsn and "dbname='app'" in dsn
    assert "sslmode='require'" in dsn


def test_quotes_and_backslashes_in_values_are_escaped(monkeypatch):
    monkeypatch.delenv("PGPASSWORD", raising=False)
    engine = create_engine("postgresql+psycopg://o%27brien@localhost/we%5Cird")

    dsn, env = PgDumpStrategy._libpq(engine)

    assert "user='o\\'brien'" in dsn
    assert "dbname='we\\\\ird'" in dsn
    assert "PGPASSWORD" not in env
