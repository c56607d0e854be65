"""Every database difference lives in core/dialects: no module outside it branches on a database's name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sqlalchemy import create_engine

from airflow_migrate_provider.core.dialects import dialect_for, dialect_name_of_uri, dialect_named, dialect_of
from airflow_migrate_provider.errors import MigrateError, UnsupportedDatabase

PACKAGE = Path(__file__).resolve().parents[3] / "airflow_migrate_provider"
DIALECTS = PACKAGE / "core" / "dialects"
DATABASE_NAMES = {"postgresql", "postgres", "sqlite", "mysql", "mariadb", "mssql", "oracle", "psycopg",
                  "psycopg2", "pysqlite", "pymysql"}


def _names_a_database(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.lower() in DATABASE_NAMES
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_database(e) for e in node.elts)
    return False


def _is_dialect_name(node: ast.AST) -> bool:
    """``<x>.dialect.name``, ``<x>.dialect_name``, ``<x>.driver`` and the like."""
    if isinstance(node, ast.Attribute):
        if node.attr in ("dialect_name", "driver"):
            return True
        return node.attr == "name" and isinstance(node.value, ast.Attribute) and "dialect" in node.value.attr
    return False


def branches_on_database_names(source: str) -> list[tuple[int, str]]:
    """(line, code) of every comparison that tests a database's name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_names_a_database(o) or _is_dialect_name(o) for o in operands):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.match_case) and _names_a_database(getattr(node.pattern, "value", None)
                                                                    or ast.Constant(None)):
            found.append((node.pattern.lineno, ast.unparse(node.pattern)))
    return found


def test_no_module_outside_core_dialects_branches_on_a_database_name() -> None:
    offenders = []
    modules = [p for p in PACKAGE.rglob("*.py") if DIALECTS not in p.parents]
    assert len(modules) > 40  # the walk really found the package
    for path in modules:
        for line, code in branches_on_database_names(path.read_text()):
            offenders.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {code}")
    assert not offenders, "ask the Dialect instead of testing a database's name:\n" + "\n".join(offenders)


@pytest.mark.parametrize("code", ['if engine.dialect.name == "sqlite": pass', 'x = side.dialect_name in ("a",)',
                                  'y = name in ("postgresql", "mysql")', 'z = "sqlite" != kind'])
def test_the_boundary_check_sees_name_branches(code: str) -> None:
    assert branches_on_database_names(code)


def test_the_boundary_check_allows_asking_the_dialect() -> None:
    assert not branches_on_database_names("if dialect.copy_fast_path and x == 'users': pass")


# -- unsupported databases: one clear error, naming the plan field --------------------------------------
def test_an_unsupported_connection_names_the_plan_field_and_the_connection() -> None:
    engine = create_engine("mssql+pymssql://u:p@h/db") if _can("pymssql") else None
    if engine is None:  # no driver: a dialect-only engine stand-in with the same name
        from types import SimpleNamespace

        engine = SimpleNamespace(dialect=SimpleNamespace(name="mssql"))
    with pytest.raises(UnsupportedDatabase) as raised:
        dialect_for(engine, field="connections.target", conn_id="warehouse")  # type: ignore[arg-type]
    assert str(raised.value) == ("connections.target: connection 'warehouse' is a mssql database; supported: "
                                 "mariadb, mysql, postgresql, sqlite")
    assert isinstance(raised.value, MigrateError)


def test_an_unsupported_uri_scheme_names_the_plan_field() -> None:
    with pytest.raises(UnsupportedDatabase, match=r"^connections\.target: connection 'dwh' is a oracle database; "
                                                  r"supported: mariadb, mysql, postgresql, sqlite$"):
        dialect_name_of_uri("oracle://u@h/db", "connections.target", "dwh")
    assert dialect_name_of_uri("postgres://u@h/db") == "postgresql"
    assert dialect_name_of_uri("sqlite:///x.db") == "sqlite"
    assert dialect_name_of_uri("mysql://root@h/db") == "mysql"
    assert dialect_name_of_uri("mariadb+pymysql://root@h/db") == "mariadb"
    assert dialect_name_of_uri("") == "postgresql"


def test_an_unsupported_dialect_name_is_a_migrate_error_not_a_traceback() -> None:
    with pytest.raises(UnsupportedDatabase, match="'oracle' is not supported yet"):
        dialect_named("oracle")


def test_what_a_dialect_cannot_do_is_a_migrate_error_not_not_implemented() -> None:
    from airflow_migrate_provider.core.dialects.base import Dialect

    class Bare(Dialect):
        name = "bare"
        transactional_ddl = True

        def is_transient(self, exc: BaseException) -> bool:
            return False

    bare = Bare()
    for call in (lambda: bare.table_definition(None, "t"), lambda: bare.async_url(None, None, None, None, None),  # type: ignore[arg-type]
                 lambda: bare.copy_between(None, "", {}, None, "t", "a")):  # type: ignore[arg-type]
        with pytest.raises(UnsupportedDatabase, match="not supported on bare databases"):
            call()


def test_sqlite_engine_gets_its_adapter() -> None:
    assert dialect_of(create_engine("sqlite://")).name == "sqlite"


def _can(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None
