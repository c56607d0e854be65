"""Which tables a plan writes, for ``backup.tables: auto``: each step's kind says (a schema step by parsing
its ``up`` SQL with :func:`tables_written_by_sql`, a backfill by naming its target)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import sqlglot
from sqlglot import exp
from sqlglot.optimizer.normalize_identifiers import normalize_identifiers

from airflow_migrate_provider.core.dialects import dialect_named
from airflow_migrate_provider.errors import BackupFailed
from airflow_migrate_provider.plan.model import BACKUP_PREFIX, Plan


@dataclass
class Touched:
    """Tables in the order the plan first writes them, and the step that does."""

    tables: dict[str, str] = field(default_factory=dict)  # table → first step writing it

    def add(self, table: str, step_id: str) -> None:
        if not table.split(".")[-1].lower().startswith(BACKUP_PREFIX):
            self.tables.setdefault(table, step_id)


def _table_name(node: exp.Expression | None) -> str | None:
    while isinstance(node, exp.Schema):
        node = node.this
    if not isinstance(node, exp.Table) or not node.name:
        return None
    return f"{node.db}.{node.name}" if node.db else node.name


def _all_named(nodes: list[exp.Expression | None]) -> list[str] | Literal[False]:
    names = [_table_name(n) for n in nodes]
    return [n for n in names if n] if names and all(names) else False


def _written_by(statement: exp.Expression) -> list[str] | Literal[False]:
    """The tables a statement writes; [] when it writes no table; False when they cannot be told."""
    if isinstance(statement, exp.Create):
        kind = (statement.args.get("kind") or "").upper()
        if kind == "INDEX":
            index = statement.this
            return _all_named([index.args.get("table") if isinstance(index, exp.Index) else None])
        if kind == "TABLE":
            return _all_named([statement.this])
        return []  # views, functions, sequences: no table data
    if isinstance(statement, exp.Drop):
        kind = (statement.args.get("kind") or "").upper()
        if kind != "TABLE":
            return []
        # sqlglot ≥ 26 lists the tables in `tables` (DROP TABLE a, b); older versions keep one in `this`
        return _all_named(statement.args.get("tables") or [statement.this])
    if isinstance(statement, exp.Alter):
        kind = (statement.args.get("kind") or "TABLE").upper()
        if kind != "TABLE":
            return []  # ALTER INDEX / VIEW / SEQUENCE …: no table data
        renamed = [a.this for a in statement.args.get("actions") or [] if isinstance(a, exp.AlterRename)]
        if isinstance(statement.this, exp.Table) and statement.this.db:  # RENAME TO keeps the table's schema
            renamed = [exp.table_(r.name, db=statement.this.db) if isinstance(r, exp.Table) and not r.db else r
                       for r in renamed]
        return _all_named([statement.this, *renamed])
    if isinstance(statement, exp.Insert | exp.Update | exp.Delete | exp.Merge):
        return _all_named([statement.this])
    if isinstance(statement, exp.TruncateTable):
        return _all_named(list(statement.expressions))
    if isinstance(statement, exp.Select | exp.Comment | exp.Grant):
        return []
    return False  # Command (DO blocks, COPY, CALL …) and anything else: unknown


def touched_tables(plan: Plan, dialect: str) -> Touched:
    """Every table the plan's steps write, asking each step's kind. Raises ``BackupFailed`` naming the
    statement when one cannot be analysed, so the user lists ``backup.tables`` instead of a table silently
    going unprotected."""
    from airflow_migrate_provider.core.kinds import kind_of

    touched = Touched()
    for step in plan.steps:
        for table in kind_of(step).touched_tables(step, dialect):
            touched.add(table, step.id)
    return touched


def tables_written_by_sql(step_id: str, sqls: list[str], dialect: str) -> list[str]:
    """The tables SQL texts write, in order (sqlglot), or ``BackupFailed`` naming a statement it cannot tell."""
    read = dialect_named(dialect).sqlglot_name or None
    tables: list[str] = []
    for sql in sqls:
        try:
            statements = [s for s in sqlglot.parse(sql, read=read) if s is not None]
        except sqlglot.errors.ParseError as exc:
            raise _unknown(step_id, sql, str(exc).splitlines()[0]) from exc
        for statement in statements:
            # unquoted names in the database's own letter case (PostgreSQL: `UPDATE Users` writes users)
            statement = normalize_identifiers(statement, dialect=read)
            written = _written_by(statement)
            if written is False:
                raise _unknown(step_id, statement.sql(dialect=read), "no table could be read from it")
            tables += [t for t in written if t not in tables]
    return tables


def _unknown(step_id: str, sql: str, why: str) -> BackupFailed:
    flat = " ".join(sql.split())
    return BackupFailed(
        f"backup.tables is `auto` but step '{step_id}' has a statement whose written table cannot be told "
        f"({why}): {flat[:120]}. List the tables to back up in the plan's `backup.tables`.")
