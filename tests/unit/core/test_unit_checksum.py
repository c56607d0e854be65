"""What a step will run: its checksum (what the ledger compares) and its statements per dialect."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.dialects import Dialect, dialect_named
from airflow_migrate_provider.core.kinds.schema import actions_for, is_truthy
from airflow_migrate_provider.core.steps import step_checksum
from airflow_migrate_provider.errors import MigrateError
from airflow_migrate_provider.plan.model import SchemaStep


def make_step(**overrides: Any) -> SchemaStep:
    data: dict[str, Any] = {
        "id": "create_table",
        "up": "CREATE TABLE t (a int);",
        "down": "DROP TABLE t;",
        "verify": "SELECT count(*) = 1 FROM t",
        "verify_down": "SELECT 1",
    }
    data.update(overrides)
    return SchemaStep.model_validate(data)


class NonTransactionalDialect(Dialect):
    """A MySQL-like dialect: DDL commits implicitly."""

    name = "mysqlish"
    transactional_ddl = False

    def prepare(self, engine: Engine) -> None:
        return None

    def is_transient(self, exc: BaseException) -> bool:
        return False


# -- step_checksum ------------------------------------------------------------------------------------


def test_checksum_is_a_stable_sha256_hex() -> None:
    checksum = step_checksum(make_step())
    assert checksum == step_checksum(make_step())
    assert len(checksum) == 64
    assert int(checksum, 16) >= 0


def test_checksum_value_is_pinned() -> None:
    # Applied steps are compared against checksums stored in target databases by earlier versions:
    # changing the algorithm would make every applied step look edited.
    step = SchemaStep.model_validate({"id": "s", "up": "CREATE TABLE t (a int)", "down": "DROP TABLE t",
                                      "verify": "SELECT 1"})
    assert step_checksum(step) == "a0f0bb3be0c5969be3503c37fd84a08b4f3af968dbd388860e32ccf89570b602"


@pytest.mark.parametrize(
    "variant",
    [
        {"up": "CREATE TABLE t (a int);   \t"},  # trailing whitespace
        {"up": "\n\n  CREATE TABLE t (a int);\n\n"},  # leading / trailing blank lines
        {"up": ["CREATE TABLE t (a int);\n"]},  # list form of the same text
        {"down": "DROP TABLE t;\n"},
        {"verify": "SELECT count(*) = 1 FROM t   \n"},
    ],
)
def test_checksum_ignores_insignificant_whitespace(variant: dict[str, Any]) -> None:
    assert step_checksum(make_step(**variant)) == step_checksum(make_step())


def test_checksum_ignores_trailing_whitespace_inside_multiline_sql() -> None:
    a = make_step(up="CREATE TABLE t (\n    a int\n);\n")
    b = make_step(up="CREATE TABLE t (   \n    a int\t\n);   \n\n")
    assert step_checksum(a) == step_checksum(b)


def test_checksum_ignores_crlf_line_endings() -> None:
    a = make_step(up="CREATE TABLE t (\n    a int\n);\n")
    b = make_step(up="CREATE TABLE t (\r\n    a int\r\n);\r\n")
    assert step_checksum(a) == step_checksum(b)


@pytest.mark.parametrize(
    "change",
    [
        {"up": "CREATE TABLE t (a bigint);"},
        {"up": ["CREATE TABLE t (a int);", "CREATE INDEX i ON t (a);"]},
        {"down": "DROP TABLE IF EXISTS t;"},
        {"verify": "SELECT count(*) = 2 FROM t"},
        {"verify": ["SELECT count(*) = 1 FROM t", "SELECT 1"]},
        {"verify_down": "SELECT 0"},
        {"verify_down": []},
        {"up": "CREATE TABLE t (\n  a int);"},  # leading whitespace of a line is significant
    ],
)
def test_checksum_changes_when_sql_changes(change: dict[str, Any]) -> None:
    assert step_checksum(make_step(**change)) != step_checksum(make_step())


def test_checksum_distinguishes_which_field_holds_the_sql() -> None:
    a = make_step(verify="SELECT 1", verify_down="SELECT 2")
    b = make_step(verify="SELECT 2", verify_down="SELECT 1")
    assert step_checksum(a) != step_checksum(b)


def test_checksum_distinguishes_splitting_sql_across_list_items() -> None:
    a = make_step(up=["CREATE TABLE a (x int);", "CREATE TABLE b (x int);"])
    b = make_step(up=["CREATE TABLE a (x int);\nCREATE TABLE b (x int);"])
    assert step_checksum(a) != step_checksum(b)


@pytest.mark.parametrize(
    "change",
    [
        {"description": "Now with a description"},
        {"tags": ["ddl", "users"]},
        {"transactional": False},
    ],
)
def test_checksum_unaffected_by_metadata(change: dict[str, Any]) -> None:
    assert step_checksum(make_step(**change)) == step_checksum(make_step())


# -- actions_for --------------------------------------------------------------------------------------

PLPGSQL = """\
CREATE FUNCTION touch_updated_at() RETURNS trigger AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER t_touch BEFORE UPDATE ON t FOR EACH ROW EXECUTE FUNCTION touch_updated_at();
"""


def test_multi_statement_sql_is_split() -> None:
    step = make_step(up="CREATE TABLE a (x int);\nCREATE TABLE b (x int);\n\nCREATE INDEX i ON a (x);\n",
                     down=["DROP INDEX i;", "DROP TABLE b; DROP TABLE a;"])
    actions = actions_for(step, dialect_named("sqlite"))
    assert actions.statements("do") == ["CREATE TABLE a (x int)", "CREATE TABLE b (x int)", "CREATE INDEX i ON a (x)"]
    assert actions.statements("undo") == ["DROP INDEX i", "DROP TABLE b", "DROP TABLE a"]


def test_dollar_quoted_function_body_stays_one_statement() -> None:
    actions = actions_for(make_step(up=PLPGSQL), dialect_named("postgresql"))
    assert len(actions.statements("do")) == 2
    function, trigger = actions.statements("do")
    assert function.startswith("CREATE FUNCTION touch_updated_at()")
    assert "NEW.updated_at := now();\n  RETURN NEW;\nEND;\n$$ LANGUAGE plpgsql" in function
    assert trigger.startswith("CREATE TRIGGER t_touch")
    assert not trigger.endswith(";")


def test_tagged_dollar_quotes_stay_one_statement() -> None:
    sql = "CREATE FUNCTION one() RETURNS int AS $body$ SELECT 1; SELECT 2; $body$ LANGUAGE sql; SELECT 3"
    actions = actions_for(make_step(up=sql), dialect_named("postgresql"))
    assert actions.statements("do") == [
        "CREATE FUNCTION one() RETURNS int AS $body$ SELECT 1; SELECT 2; $body$ LANGUAGE sql",
        "SELECT 3",
    ]


def test_semicolons_inside_strings_and_identifiers_do_not_split() -> None:
    sql = "INSERT INTO t (a) VALUES ('a;b'), ('it''s; fine');\nSELECT \"odd;name\" FROM t;"
    actions = actions_for(make_step(up=sql), dialect_named("sqlite"))
    assert actions.statements("do") == ["INSERT INTO t (a) VALUES ('a;b'), ('it''s; fine')", 'SELECT "odd;name" FROM t']


def test_sqlite_trigger_body_stays_one_statement() -> None:
    sql = ("CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 1; UPDATE t SET a = 2; END;\n"
           "SELECT 1;")
    actions = actions_for(make_step(up=sql), dialect_named("sqlite"))
    assert actions.statements("do") == [
        "CREATE TRIGGER tr AFTER INSERT ON t BEGIN UPDATE t SET a = 1; UPDATE t SET a = 2; END", "SELECT 1"]


def test_empty_statements_are_dropped() -> None:
    actions = actions_for(make_step(up="CREATE TABLE t (a int);;\n\n;\n"), dialect_named("postgresql"))
    assert actions.statements("do") == ["CREATE TABLE t (a int)"]


def test_verify_queries_are_not_split_but_lose_their_final_semicolon() -> None:
    step = make_step(verify=["  SELECT count(*) = 1 FROM t;  \n", "SELECT 1"], verify_down="SELECT 0;")
    actions = actions_for(step, dialect_named("postgresql"))
    assert actions.checks("do") == ["SELECT count(*) = 1 FROM t", "SELECT 1"]
    assert actions.checks("undo") == ["SELECT 0"]


@pytest.mark.parametrize("name", ["postgresql", "sqlite"])
def test_transactional_defaults_to_true_on_transactional_ddl_dialects(name: str) -> None:
    dialect = dialect_named(name)
    assert dialect.transactional_ddl is True
    assert actions_for(make_step(), dialect).transactional is True


def test_transactional_defaults_to_false_without_transactional_ddl() -> None:
    assert actions_for(make_step(), NonTransactionalDialect()).transactional is False


@pytest.mark.parametrize("flag", [True, False])
@pytest.mark.parametrize("dialect", [dialect_named("postgresql"), dialect_named("sqlite"), NonTransactionalDialect()],
                         ids=["postgresql", "sqlite", "non-transactional"])
def test_step_flag_overrides_dialect_default(flag: bool, dialect: Dialect) -> None:
    assert actions_for(make_step(transactional=flag), dialect).transactional is flag


def test_irreversible_flag_is_carried() -> None:
    step = make_step(down=[], irreversible=True)
    actions = actions_for(step, dialect_named("sqlite"))
    assert actions.irreversible is True
    assert actions.statements("undo") == []


def test_actions_round_trip_through_json() -> None:
    from airflow_migrate_provider.core.actions import ActionPlan

    actions = actions_for(make_step(up=PLPGSQL), dialect_named("postgresql"))
    assert ActionPlan.from_json(actions.to_json()) == actions


def test_unknown_dialect_name_is_a_clear_error() -> None:
    with pytest.raises(MigrateError, match="dialect 'oracle' is not supported yet"):
        dialect_named("oracle")


# -- is_truthy ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, 1, 2, -1, 0.5, Decimal("1"), "t", "T", "true", "yes", "y", "1", " on ",
                                   "anything"])
def test_truthy(value: object) -> None:
    assert is_truthy(value) is True


@pytest.mark.parametrize("value", [False, 0, 0.0, Decimal("0"), None, "", "   ", "f", "F", "false", "FALSE",
                                   " false ", "0", "no", "n", "off"])
def test_falsy(value: object) -> None:
    assert is_truthy(value) is False
