"""A known password goes in (through ``--conn ID=env:VAR`` and ``--conn-file``) and must come out nowhere: every CLI
command and a run of the PostgreSQL example (pg_dump backup, an approval whose step description says
``{{ conn.app_db.password }}``) on a real role with that password, a failing run that rolls back, a run that cannot
connect, status, backups list/prune, restore, and the MariaDB example (mariadb_dump backup) on a MariaDB user with a
password. Searched: stdout/stderr of each command, the Airflow home (task logs, the metadata DB file with its XComs,
rendered fields, HITL records, serialized DAGs), reports, backup files, every ledger row, and the command line and
environment of every client tool the package started (a wrapper on ``$AIRFLOW_MIGRATE_PG_DUMP`` & co. records
them). Under dag.test() the task logs go through Python logging in this process: the ``cli`` fixture appends them
to each command's stderr, which is searched."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml
from approval_support import Responder
from e2e_support import MARIADB_EXAMPLE, PG_EXAMPLE, break_verify, execute, seed
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

pytestmark = [pytest.mark.dag, pytest.mark.timeout(240)]

PASSWORD = f"Zx9-secret-{uuid.uuid4().hex[:10]}"
HOSTILE = "Irreversible. Ask {{ conn.app_db.password }} before."
WRAPPER = """#!/bin/sh
# records how the package started a client tool, then runs the real one
{{ printf 'argv:'; for a in "$0" "$@"; do printf ' %s' "$a"; done; printf '\\n'
  env | sed 's/^/env: /'
  if [ -n "$PGPASSFILE" ]; then printf 'passfile-mode: %s\\n' "$(stat -c %a "$PGPASSFILE")"; fi
}} >> {record}
exec {real} "$@"
"""


def _wrap(tmp: Path, name: str, variable: str, record: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = shutil.which(name)
    assert real, f"{name} must be installed for this test"
    script = tmp / f"record-{name}"
    script.write_text(WRAPPER.format(record=record, real=real))
    script.chmod(0o755)
    monkeypatch.setenv(variable, str(script))


@pytest.fixture
def secret_pg(pg_database: Any) -> Iterator[Any]:
    """The test database owned by a new role whose password is PASSWORD, seeded as that role."""
    role = f"migtest_secret_{uuid.uuid4().hex[:8]}"
    name = make_url(pg_database.sqlalchemy_url).database
    execute(pg_database.sqlalchemy_url, f"CREATE ROLE {role} LOGIN PASSWORD '{PASSWORD}'",
            f'ALTER DATABASE "{name}" OWNER TO {role}', f"ALTER SCHEMA public OWNER TO {role}")
    as_role = make_url(pg_database.airflow_uri).set(username=role, password=PASSWORD)
    uri = as_role.render_as_string(hide_password=False)
    db = replace(pg_database, sqlalchemy_url=uri.replace("postgresql://", "postgresql+psycopg://", 1), airflow_uri=uri)
    seed(db)
    try:
        yield db
    finally:
        execute(pg_database.sqlalchemy_url, f'ALTER DATABASE "{name}" OWNER TO postgres',
                f"REASSIGN OWNED BY {role} TO postgres", f"DROP OWNED BY {role}", f"DROP ROLE {role}")


@pytest.fixture
def secret_mariadb(mariadb_database: Any) -> Iterator[Any]:
    user = f"migsecret_{uuid.uuid4().hex[:8]}"
    name = make_url(mariadb_database.sqlalchemy_url).database
    execute(mariadb_database.sqlalchemy_url, f"CREATE USER '{user}'@'%' IDENTIFIED BY '{PASSWORD}'",
            f"CREATE USER '{user}'@'localhost' IDENTIFIED BY '{PASSWORD}'",
            f"GRANT ALL ON `{name}`.* TO '{user}'@'%'", f"GRANT ALL ON `{name}`.* TO '{user}'@'localhost'")
    admin = make_url(mariadb_database.airflow_uri)
    uri = admin.set(username=user, password=PASSWORD).render_as_string(hide_password=False)
    db = replace(mariadb_database, airflow_uri=uri, sqlalchemy_url=make_url(mariadb_database.sqlalchemy_url).set(
        username=user, password=PASSWORD).render_as_string(hide_password=False))
    seed(db)
    try:
        yield db
    finally:
        execute(mariadb_database.sqlalchemy_url, f"DROP USER IF EXISTS '{user}'@'%'",
                f"DROP USER IF EXISTS '{user}'@'localhost'")


def _plan(path: Path, source: Path, plan_id: str, mutate: Any = None) -> Path:
    data = yaml.safe_load(source.read_text())
    data["id"] = plan_id
    if mutate:
        mutate(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _with_approval(data: dict) -> None:
    data["steps"].append({"id": "drop_marker", "description": HOSTILE, "irreversible": True,
                          "up": "CREATE TABLE secret_marker (id int)", "verify": "SELECT 1"})


def _backup_id(db: Any, plan: Path) -> str:
    from airflow_migrate_provider.core.backup.retention import plan_backups

    engine = create_engine(db.sqlalchemy_url)
    try:
        return plan_backups(engine, yaml.safe_load(plan.read_text())["id"])[0].id
    finally:
        engine.dispose()


def _ledger_text(url: str) -> str:
    engine = create_engine(url)
    try:
        tables = [t for t in inspect(engine).get_table_names() if t.startswith("airflow_migrate_")]
        assert tables, "the run must have written a ledger"
        with engine.connect() as conn:
            return "\n".join(repr(tuple(row)) for t in tables for row in conn.execute(text(f"SELECT * FROM {t}")))
    finally:
        engine.dispose()


def _files_with(root: Path, needle: bytes) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


def _hitl_bodies() -> list[str]:
    from airflow.models.hitl import HITLDetail
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return [d.body or "" for d in session.scalars(select(HITLDetail)).all()]


def _rendered_fields() -> str:
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return json.dumps([r.rendered_fields for r in session.scalars(select(RTIF)).all()], default=str)


class Outputs:
    """Every command's stdout and stderr, checked as they come."""

    def __init__(self, cli: Any):
        self.cli, self.seen = cli, []

    def __call__(self, *args: Any, code: int = 0) -> Any:
        result = self.cli(*args)
        self.seen.append(result)
        assert PASSWORD not in result.stdout + result.stderr, f"{args}: the password is in the output"
        assert result.returncode == code, f"{args}: exit {result.returncode}\n{result.stdout[-2000:]}" \
                                          f"\n{result.stderr[-3000:]}"
        return result


def test_the_password_appears_nowhere_but_where_the_user_put_it(secret_pg, secret_mariadb, cli, airflow_db,
                                                                tmp_path, monkeypatch):
    record = tmp_path / "children.log"
    for name, variable in (("pg_dump", "AIRFLOW_MIGRATE_PG_DUMP"), ("pg_restore", "AIRFLOW_MIGRATE_PG_RESTORE"),
                           ("mariadb-dump", "AIRFLOW_MIGRATE_MARIADB_DUMP")):
        _wrap(tmp_path, name, variable, record, monkeypatch)
    monkeypatch.setenv("AIRFLOW_MIGRATE_BACKUPS", str(tmp_path / "backups"))
    monkeypatch.setenv("AIRFLOW_MIGRATE_REPORTS", str(tmp_path / "reports"))
    monkeypatch.setenv("APP_DB_URI", secret_pg.airflow_uri)  # where the user put it: a variable and a file
    conn_file = tmp_path / "conns"
    conn_file.write_text(f"app_db={secret_pg.airflow_uri}\n")
    conn_file.chmod(0o600)
    secret_files = {conn_file.resolve()}
    run = Outputs(cli)
    plans = tmp_path / "plans"
    plans.mkdir()
    ok = _plan(plans / "ok.yaml", PG_EXAMPLE, f"secret_ok_{uuid.uuid4().hex[:6]}", _with_approval)
    failing = _plan(plans / "failing.yaml", PG_EXAMPLE, f"secret_fail_{uuid.uuid4().hex[:6]}", break_verify(2))

    run("validate", ok, failing)
    rendered = run("render", ok, "--conn", "app_db=env:APP_DB_URI")
    assert "app_db = postgresql://" in rendered.stdout and ":***@" in rendered.stdout

    responder = Responder(yaml.safe_load(ok.read_text())["id"], "steps.before_drop_marker.approve", "Approve")
    responder.start()
    try:
        success = run("run", ok, "--conn", "app_db=env:APP_DB_URI", "--airflow-home", tmp_path / "home-ok")
    finally:
        responder.finish()
    assert "DAG run: success" in success.stdout
    assert "backup: pg_dump wrote" in success.stderr, "the task logs (dag.test logs in-process) are checked too"
    assert any("{{ conn.app_db.password }}" in body for body in _hitl_bodies()), "plan text must stay literal"
    assert "{{ conn.app_db.password }}" in _rendered_fields(), "the approval's rendered fields keep it literal"

    failed = run("run", failing, "--conn-file", conn_file, "--airflow-home", tmp_path / "home-fail", code=1)
    assert "rollback.revert_applied                  success" in failed.stdout

    unreachable = make_url(secret_pg.airflow_uri).set(port=1).render_as_string(hide_password=False)
    monkeypatch.setenv("BAD_URI", unreachable)
    run("status", ok, "--conn", "app_db=env:BAD_URI", code=1)
    run("run", ok, "--conn", "app_db=env:BAD_URI", "--airflow-home", tmp_path / "home-bad", code=1)
    run("render", ok, "--conn", f"app_db={secret_pg.airflow_uri.split('://', 1)[1]}", code=2)  # no scheme

    run("status", ok, "--conn-file", conn_file)
    run("backups", "list", ok, "--conn", "app_db=env:APP_DB_URI")
    run("restore", ok, "--backup", _backup_id(secret_pg, ok), "--conn", "app_db=env:APP_DB_URI")
    run("backups", "prune", failing, "--conn", "app_db=env:APP_DB_URI", "--older-than", "0")

    monkeypatch.setenv("SHOP_DB_URI", secret_mariadb.airflow_uri)
    maria = _plan(plans / "maria.yaml", MARIADB_EXAMPLE, f"secret_maria_{uuid.uuid4().hex[:6]}")
    maria_conn = f"{yaml.safe_load(maria.read_text())['connections']['target']}=env:SHOP_DB_URI"
    assert "DAG run: success" in run("run", maria, "--conn", maria_conn, "--airflow-home",
                                     tmp_path / "home-maria").stdout
    run("status", maria, "--conn", maria_conn)

    _assert_children_got_no_secret(record)
    needle = PASSWORD.encode()
    assert _files_with(Path(airflow_db), yaml.safe_load(ok.read_text())["id"].encode()), \
        "the metadata DB searched must be the one the runs wrote"
    leaked = [f for f in _files_with(tmp_path, needle) + _files_with(Path(airflow_db), needle)
              if Path(f).resolve() not in secret_files]
    assert not leaked, f"the password is in {leaked}"
    assert PASSWORD not in _rendered_fields() + "".join(_hitl_bodies())
    assert PASSWORD not in _ledger_text(secret_pg.sqlalchemy_url) + _ledger_text(secret_mariadb.sqlalchemy_url)


def _assert_children_got_no_secret(record: Path) -> None:
    lines = record.read_text().splitlines()
    tools = {line.split()[1].rsplit("record-", 1)[-1] for line in lines if line.startswith("argv:")}
    assert {"pg_dump", "pg_restore", "mariadb-dump"} <= tools, f"client tools started: {tools}"
    assert not [line for line in lines if PASSWORD in line], "a child got the password on its command line or env"
    names = {line[5:].split("=", 1)[0] for line in lines if line.startswith("env: ")}
    assert not any(n.startswith(("AIRFLOW", "APP_DB", "SHOP_DB", "BAD_URI", "PYTEST")) for n in names), names
    assert {line for line in lines if line.startswith("passfile-mode")} == {"passfile-mode: 600"}
