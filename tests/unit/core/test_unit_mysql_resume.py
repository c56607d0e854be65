"""Which statements of a schema step on MySQL/MariaDB can run a second time after a crash (mysql_resume.py)."""

from __future__ import annotations

import pytest

from airflow_migrate_provider.core.dialects import dialect_named

RESUMABLE = [
    "INSERT INTO t (id) VALUES (1)",
    "UPDATE t SET note = 'CREATE TABLE x (id int)'",  # a quoted statement is data
    "DELETE FROM t WHERE id > 5",
    "CREATE TABLE IF NOT EXISTS t (id INT PRIMARY KEY)",
    "create or replace view v as select 1",
    "CREATE INDEX IF NOT EXISTS ix ON t (a)",
    "CREATE UNIQUE INDEX IF NOT EXISTS ux ON t (a)",
    "DROP TABLE IF EXISTS t",
    "DROP INDEX IF EXISTS ix ON t",
    "ALTER TABLE t ADD COLUMN IF NOT EXISTS c INT, MODIFY d BIGINT",
    "ALTER TABLE t DROP COLUMN IF EXISTS c",
    "ALTER TABLE t MODIFY c VARCHAR(40) NOT NULL",
    "ALTER TABLE t ADD CONSTRAINT IF NOT EXISTS fk FOREIGN KEY (a) REFERENCES u (id)",
    "RENAME TABLE IF EXISTS a TO b",
    "/* a comment */ -- another\nINSERT INTO t VALUES (2)",
    "TRUNCATE TABLE staging",
]
NOT_RESUMABLE = [
    ("CREATE TABLE t (id INT)", "CREATE TABLE IF NOT EXISTS"),
    ("create index ix on t (a)", "CREATE INDEX IF NOT EXISTS"),
    ("DROP TABLE t", "DROP TABLE IF EXISTS"),
    ("DROP INDEX ix ON t", "DROP INDEX IF EXISTS"),
    ("ALTER TABLE t ADD COLUMN c INT", "IF NOT EXISTS"),
    ("ALTER TABLE t MODIFY d INT, DROP COLUMN c", "IF EXISTS"),
    ("ALTER TABLE t ADD CONSTRAINT fk FOREIGN KEY (a) REFERENCES u (id)", "IF NOT EXISTS"),
    ("ALTER TABLE t CHANGE a b INT", "IF EXISTS"),
    ("RENAME TABLE a TO b", "RENAME TABLE IF EXISTS"),
    ("CREATE TRIGGER trg AFTER INSERT ON t FOR EACH ROW SET @x = 1", "CREATE TRIGGER IF NOT EXISTS"),
]


@pytest.mark.parametrize("statement", RESUMABLE)
def test_mariadb_statements_that_can_run_twice(statement: str) -> None:
    assert dialect_named("mariadb").resume_hazard(statement) is None


@pytest.mark.parametrize(("statement", "fix"), NOT_RESUMABLE)
def test_mariadb_statements_that_cannot_run_twice_name_the_guarded_form(statement: str, fix: str) -> None:
    hazard = dialect_named("mariadb").resume_hazard(statement)
    assert hazard is not None and hazard.fix is not None and fix in hazard.fix


def test_mysql_has_no_guarded_index_ddl_so_it_is_a_note_not_a_fix() -> None:
    hazard = dialect_named("mysql").resume_hazard("CREATE INDEX ix ON t (a)")
    assert hazard is not None and hazard.fix is None and "MySQL has no IF NOT EXISTS" in hazard.why
    assert dialect_named("mysql").label == "MySQL" and dialect_named("mariadb").label == "MariaDB"


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
def test_transactional_ddl_needs_no_guards(dialect: str) -> None:
    assert dialect_named(dialect).resume_hazard("CREATE TABLE t (id INT)") is None


def test_validate_with_mariadb_dialect_points_at_the_step_line(tmp_path, cli) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text("id: p\nconnections: {target: db}\nsteps:\n  - id: s\n    up: CREATE TABLE t (id INT);\n"
                    "    down: DROP TABLE IF EXISTS t\n    verify: SELECT 1\n")
    assert cli("validate", plan).returncode == 0  # no dialect: nothing to say about resuming
    result = cli("validate", plan, "--dialect", "mariadb")
    assert result.returncode == 1
    assert f"{plan}:5:5: step 's' up statement 1 (CREATE TABLE t (id INT))" in result.stderr
    assert "CREATE TABLE IF NOT EXISTS" in result.stderr and "down" not in result.stderr
