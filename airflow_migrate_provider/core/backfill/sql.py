"""SQL text for one database: quoted identifiers, driver placeholders, plan SQL fragments kept verbatim.

The copy builds its statements as text because PostgreSQL's COPY takes no bound parameters: there the
values are rendered by psycopg itself (``mogrify``), everywhere else they are bound by the driver.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine


class SqlText:
    """Builds SQL for one engine's driver (``%(name)s`` for psycopg/PyMySQL, ``:name`` for sqlite3)."""

    def __init__(self, engine: Engine):
        self.dialect_name = engine.dialect.name
        self.driver = engine.dialect.driver
        self.pyformat = engine.dialect.paramstyle in ("pyformat", "format")
        self._preparer = engine.dialect.identifier_preparer

    def ident(self, name: str) -> str:
        """A column or (schema-qualified) table name, quoted by the database's own rules."""
        return ".".join(self._preparer.quote_identifier(part) for part in name.split("."))

    def fragment(self, plan_sql: str) -> str:
        """A SQL expression from the plan, verbatim (``%`` doubled where the driver reads it as a placeholder)."""
        return plan_sql.replace("%", "%%") if self.pyformat else plan_sql

    def param(self, name: str) -> str:
        return f"%({name})s" if self.pyformat else f":{name}"

    def row(self, items: list[str]) -> str:
        return items[0] if len(items) == 1 else f"({', '.join(items)})"

    def compare(self, exprs: list[str], op: str, values: tuple[Any, ...], params: dict[str, Any],
                prefix: str) -> str:
        """``(a, b) > (:p0, :p1)``: row-value comparison (PostgreSQL, SQLite ≥ 3.15, MySQL)."""
        names = []
        for i, value in enumerate(values):
            params[f"{prefix}{i}"] = value
            names.append(self.param(f"{prefix}{i}"))
        return f"{self.row(exprs)} {op} {self.row(names)}"

    @property
    def is_psycopg(self) -> bool:
        return self.dialect_name == "postgresql" and self.driver == "psycopg"
