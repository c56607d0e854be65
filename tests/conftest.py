"""Test fixtures: a throwaway Airflow home, and real databases (SQLite files, PostgreSQL databases).

How PostgreSQL is found (DESIGN.md "Real components"): ``MIGRATE_TEST_PG_URL``, then pytest-docker where
a Docker engine works, then the local server on 127.0.0.1:5432. With ``CI=true`` a missing server fails
the tests that need it instead of skipping them.

Parallel runs (pytest-xdist; ``./scripts/test`` adds ``-n``): every worker process has its own Airflow home
and SQLite metadata DB (named after its worker id, gw0, gw1, ...), and its test databases are named
``migtest_<worker>_<random>``. Which tests share a worker: :func:`work_units`.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest.mock import patch

import pytest

# Which pytest process this is: gw0, gw1, ... under pytest-xdist, "main" without it.
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "main")

# Airflow reads its configuration on first import: this must run before anything imports airflow.
# One home and one metadata DB per worker process (an inherited SQL_ALCHEMY_CONN would make the workers'
# resetdb wipe each other's).
_AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix=f"airflow-migrate-tests-{WORKER}-"))
os.environ["AIRFLOW_HOME"] = str(_AIRFLOW_HOME)
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_HOME / 'airflow.db'}"
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(_AIRFLOW_HOME / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "False"
(_AIRFLOW_HOME / "dags").mkdir(parents=True, exist_ok=True)

LOCAL_PG_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_MYSQL_URL = "mysql://root@127.0.0.1:3306/test"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class TestDatabase:
    """One empty database for one test: how SQLAlchemy and how Airflow connections reach it."""

    __test__ = False
    dialect: str  # postgresql | mariadb | sqlite
    sqlalchemy_url: str
    airflow_uri: str


# -- pytest-xdist: which tests share a worker -------------------------------------------------------------
# Work is handed to workers in units that run whole in one process: a module (its module fixtures are set up
# once; tests/integration modules share databases that way, some fetched with request.getfixturevalue), except
# that the DAG modules of tests/dags are merged into DAG_GROUPS units: the first dag.test() in a process costs
# ~10 s (Airflow builds its Execution API), so at most that many workers pay it. The scheduler test's module,
# one real deployment, is a unit of its own and is handed out first, then the DAG units (the longest ones first,
# so no worker is left alone with them at the end).
# (xdist's own --dist loadgroup cannot do this here: on pytest 9.2 its xdist_group marks are silently ignored,
# pytest-dev/pytest-xdist#1386.)
DAG_GROUPS = 2
SCHEDULER_MODULE = "tests/dags/test_scheduler_runs.py"


def _unit_priority(module: str) -> int:
    if module == SCHEDULER_MODULE:
        return 0
    return {"dags": 1, "integration": 2}.get(module.split("/")[1] if module.count("/") >= 2 else "", 3)


def work_units(nodeids: list[str]) -> dict[str, str]:
    """{nodeid: unit}; computed from the node ids alone, so the controller and the workers agree."""
    modules: dict[str, int] = {}
    for nodeid in nodeids:
        module = nodeid.split("::", 1)[0]
        modules[module] = modules.get(module, 0) + 1
    unit = {m: m for m in modules}
    load = [0] * DAG_GROUPS
    dag_modules = [m for m in modules if m.startswith("tests/dags/") and m != SCHEDULER_MODULE]
    for module in sorted(dag_modules, key=lambda m: (-modules[m], m)):  # biggest first, onto the lightest
        index = load.index(min(load))
        unit[module], load[index] = f"dags-{index + 1}", load[index] + modules[module]
    return {nodeid: unit[nodeid.split("::", 1)[0]] for nodeid in nodeids}


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """With -n and the default --dist (load): hand out the units of :func:`work_units`, in the order the
    workers collected them (see :func:`pytest_collection_modifyitems`). An explicit --dist other than load
    keeps xdist's own scheduling."""
    if config.getoption("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        units: dict[str, str] = {}

        def _split_scope(self, nodeid: str) -> str:
            if nodeid not in self.units:
                self.units = work_units(list(self.collection or [nodeid]))
            return self.units.get(nodeid, nodeid)

    config.option.loadscopereorder = False  # keep the collection's order: scheduler, DAG units, the rest
    return WorkUnitScheduling(config, log)


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: the controller computes the units from this list
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker: order the tests as the units should be handed out: the scheduler test's module,
    the DAG units (biggest first), tests/integration, the rest; the order is the same in every worker, as
    xdist requires. Without xdist the order is left as collected."""
    if not hasattr(config, "workerinput"):
        return
    units = work_units([item.nodeid for item in items])
    size: dict[str, int] = {}
    for unit in units.values():
        size[unit] = size.get(unit, 0) + 1
    first = {}
    for position, item in enumerate(items):
        first.setdefault(units[item.nodeid], position)
    items.sort(key=lambda item: (_unit_priority(item.nodeid.split("::", 1)[0]),
                                 -size[units[item.nodeid]] if units[item.nodeid].startswith("dags-") else 0,
                                 first[units[item.nodeid]]))


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def _docker_usable() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _missing_service(message: str) -> None:
    if IN_CI:
        pytest.fail(f"{message} (CI=true: a missing database service is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(REPO / "docker" / "docker-compose.test.yml")


def _server_url(request: pytest.FixtureRequest, variable: str, service: str, port: int, docker_url: str,
                local_url: str, label: str) -> str:
    """An admin URL of a test server: ``$variable``, then pytest-docker's ``service`` (``docker_url`` with
    ``{ip}``/``{port}``), then ``local_url``; a server that is not reachable is a missing service."""
    from sqlalchemy.engine import make_url

    url = os.environ.get(variable)
    if not url and _docker_usable():
        ip = request.getfixturevalue("docker_ip")
        services = request.getfixturevalue("docker_services")
        mapped = services.port_for(service, port)
        services.wait_until_responsive(check=lambda: _port_open(ip, mapped), timeout=90, pause=0.5)
        url = docker_url.format(ip=ip, port=mapped)
    url = url or local_url
    parsed = make_url(url)
    if not _port_open(parsed.host or "127.0.0.1", parsed.port or port):
        _missing_service(f"{label} is not reachable at {parsed.host}:{parsed.port}")
    return url


@pytest.fixture(scope="session")
def pg_server_url(request: pytest.FixtureRequest) -> str:
    """An admin URL (Airflow/libpq form) of a PostgreSQL server where tests may create databases."""
    return _server_url(request, "MIGRATE_TEST_PG_URL", "postgres", 5432,
                       "postgresql://postgres:postgres@{ip}:{port}/postgres", LOCAL_PG_URL, "PostgreSQL")


def _sqlalchemy_pg(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


@contextmanager
def _new_database(server_url: str, dialect: str, label: str, to_sqlalchemy: Callable[[str], str],
                  create: str, drop: str) -> Iterator[TestDatabase]:
    """Create a uniquely named, empty database on ``server_url`` (``create``/``drop``: statements with ``{name}``);
    drop it afterwards."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"migtest_{WORKER}_{uuid.uuid4().hex[:12]}".lower()
    admin = create_engine(to_sqlalchemy(server_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(create.format(name=name)))
    except Exception as exc:  # server up but refusing us
        admin.dispose()
        _missing_service(f"cannot create a {label} test database: {exc}")
    airflow_uri = make_url(server_url).set(database=name).render_as_string(hide_password=False)
    try:
        yield TestDatabase(dialect, to_sqlalchemy(airflow_uri), airflow_uri)
    finally:
        with admin.connect() as conn:
            conn.execute(text(drop.format(name=name)))
        admin.dispose()


def new_pg_database(server_url: str) -> AbstractContextManager[TestDatabase]:
    """A uniquely named, empty PostgreSQL database on ``server_url``, dropped afterwards."""
    return _new_database(server_url, "postgresql", "PostgreSQL", _sqlalchemy_pg, 'CREATE DATABASE "{name}"',
                         'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_database(pg_server_url: str) -> Iterator[TestDatabase]:
    """A uniquely named, empty PostgreSQL database, dropped after the test."""
    with new_pg_database(pg_server_url) as db:
        yield db


@pytest.fixture(scope="session")
def mysql_server_url(request: pytest.FixtureRequest) -> str:
    """An admin URL (Airflow form, ``mysql://``) of a MariaDB/MySQL server where tests may create databases:
    ``MIGRATE_TEST_MYSQL_URL``, then pytest-docker, then the local server on 127.0.0.1:3306."""
    return _server_url(request, "MIGRATE_TEST_MYSQL_URL", "mariadb", 3306, "mysql://root:mariadb@{ip}:{port}/test",
                       LOCAL_MYSQL_URL, "MariaDB")


def _sqlalchemy_mysql(url: str) -> str:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    return parsed.set(drivername="mysql+pymysql", query={"charset": "utf8mb4", "local_infile": "1"}
                      ).render_as_string(hide_password=False)


def new_mysql_database(server_url: str) -> AbstractContextManager[TestDatabase]:
    """A uniquely named, empty MariaDB database on ``server_url``, dropped afterwards."""
    return _new_database(server_url, "mariadb", "MariaDB", _sqlalchemy_mysql,
                         "CREATE DATABASE `{name}` CHARACTER SET utf8mb4", "DROP DATABASE IF EXISTS `{name}`")


@pytest.fixture
def mariadb_database(mysql_server_url: str) -> Iterator[TestDatabase]:
    """A uniquely named, empty MariaDB database, dropped after the test."""
    with new_mysql_database(mysql_server_url) as db:
        yield db


@pytest.fixture(scope="session")
def mariadb_database_factory(mysql_server_url: str):
    """``with mariadb_database_factory() as db:`` for databases that outlive one test (module fixtures)."""
    return lambda: new_mysql_database(mysql_server_url)


@pytest.fixture
def sqlite_database(tmp_path: Path) -> TestDatabase:
    path = (tmp_path / "target.sqlite").resolve()
    return TestDatabase("sqlite", f"sqlite:///{path}", f"sqlite:///{path}")


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def database(request: pytest.FixtureRequest) -> TestDatabase:
    """Each test using this runs once on SQLite, once on PostgreSQL and once on MariaDB."""
    return request.getfixturevalue(f"{request.param.replace('postgresql', 'pg')}_database")


@pytest.fixture
def engine(database: TestDatabase):
    """A SQLAlchemy engine on ``database``, prepared by our dialect adapter."""
    from sqlalchemy import create_engine

    from airflow_migrate_provider.core.dialects import dialect_for

    eng = create_engine(database.sqlalchemy_url)
    dialect_for(eng)
    yield eng
    eng.dispose()


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """Airflow's metadata DB, created once per test session (about 3 s)."""
    import signal

    from airflow_migrate_provider.local_run import init_metadata_db

    # resetdb runs under Airflow's timeout_with_traceback, which ends with signal.alarm(0): that disarms
    # pytest-timeout's alarm for the test that first sets this fixture up. Re-arm what was left of it.
    left, interval = signal.getitimer(signal.ITIMER_REAL)
    init_metadata_db()
    if left:
        signal.setitimer(signal.ITIMER_REAL, left, interval)
    return _AIRFLOW_HOME


def fingerprint_of(url: str) -> dict:
    """Schema and data of every non-ledger table: what "equal to the starting state" means in tests."""
    from sqlalchemy import create_engine, inspect, text

    eng = create_engine(url)
    try:
        insp = inspect(eng)
        result: dict = {}
        for table in sorted(t for t in insp.get_table_names() if not t.startswith("airflow_migrate_")):
            quoted = eng.dialect.identifier_preparer.quote(table)
            with eng.connect() as conn:
                rows = sorted(tuple(map(str, r)) for r in conn.execute(text(f"SELECT * FROM {quoted}")))
            result[table] = {
                "columns": [(c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                            for c in insp.get_columns(table)],
                "pk": insp.get_pk_constraint(table).get("constrained_columns"),
                "indexes": sorted((i["name"], tuple(i["column_names"]), bool(i["unique"]))
                                  for i in insp.get_indexes(table)),
                "foreign_keys": sorted((tuple(f["constrained_columns"]), f["referred_table"],
                                        tuple(f["referred_columns"])) for f in insp.get_foreign_keys(table)),
                "uniques": sorted(tuple(u["column_names"]) for u in insp.get_unique_constraints(table)),
                "rows": rows,
            }
        return result
    finally:
        eng.dispose()


@pytest.fixture
def fingerprint():
    """``fingerprint(TestDatabase)`` → comparable schema+data snapshot, excluding the ledger."""
    return lambda db: fingerprint_of(db.sqlalchemy_url)


@pytest.fixture(scope="session")
def pg_database_factory(pg_server_url: str):
    """``with pg_database_factory() as db:`` for databases that outlive one test (module fixtures)."""
    return lambda: new_pg_database(pg_server_url)


@pytest.fixture
def cli(capfd):
    """``cli(*args)`` → a CompletedProcess: ``airflow-migrate ARGS`` run in this process, through the console
    script's own ``main()`` (so a MigrateError is one ``error: ...`` line and exit 1, as for a user), with
    stdout/stderr captured at the file-descriptor level, the log records the command emits (task logs
    included) appended to stderr as the script's log handler would print them, and every environment
    variable the command sets (connections, Airflow home) undone afterwards. Saves the 3-15 s of a new
    interpreter importing Airflow per command; ``test_cli_commands.py`` keeps one smoke test of the
    installed script."""
    import io
    import logging

    from airflow_migrate_provider.cli import main

    def run(*args: str | Path) -> subprocess.CompletedProcess:
        argv = ["airflow-migrate", *map(str, args)]
        capfd.readouterr()  # only this command's output
        logs = io.StringIO()
        handler = logging.StreamHandler(logs)
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s %(name)s: %(message)s"))
        message = ""
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            with patch.object(sys, "argv", argv), patch.dict(os.environ):
                try:
                    main()
                    code = 0
                except SystemExit as exc:
                    if isinstance(exc.code, str):
                        code, message = 1, exc.code + "\n"
                    else:
                        code = exc.code or 0
        finally:
            root.removeHandler(handler)
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(argv, code, out, err + message + logs.getvalue())

    return run
