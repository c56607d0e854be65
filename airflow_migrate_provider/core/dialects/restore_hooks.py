"""What a restore from backup asks the database adapter; the defaults suit a database with no sequences to
carry over and no cascades to guard (SQLite overrides the foreign-key handling)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.dialects.types import TableDefinition


class RestoreHooks:
    """Restore specifics. ``insert_overriding`` follows an INSERT's column list so identity columns take the
    backed-up values; ``main_schema`` prefixes an unqualified DROP where an attached copy could shadow it."""

    insert_overriding: ClassVar[str] = ""
    drop_cascade: ClassVar[str] = ""
    main_schema: ClassVar[str] = ""

    @contextmanager
    def restore_session(self, conn: Connection) -> Iterator[None]:
        """Around a restore's transaction on ``conn`` (SQLite: foreign keys off, since the rows come back in
        dependency order only within the transaction)."""
        yield

    def check_restored_foreign_keys(self, conn: Connection) -> None:
        """Inside the restore's transaction: raise RestoreFailed when restored rows break foreign keys."""

    def before_rebuild(self, conn: Connection, table: str, definition: TableDefinition, exists: bool,
                       rebuilt: list[str]) -> dict[str, Any]:
        """Before ``table`` is dropped for a rebuild: remember what the new table must continue (identity
        positions) and detach what would go with it. Returns state for the later hooks."""
        return {"external_fks": [], "handed_out": {}, "sequences": []}

    def before_create(self, conn: Connection, table: str,
                      definition: TableDefinition, state: dict[str, Any]) -> None:
        """After the old table is dropped, before it is created anew (re-create sequences it owned)."""

    def after_fill(self, conn: Connection, table: str, state: dict[str, Any]) -> None:
        """After the table's rows are back: sequences continue past them."""

    def after_constraints(self, conn: Connection, table: str,
                          definition: TableDefinition) -> None:
        """After every rebuilt table has its rows and foreign keys (sequence ownership)."""

    def diff_keys(self, conn: Connection, table: str, definition: TableDefinition, source: str,
                  index: int) -> str | None:
        """A temporary table of the keys whose rows differ from the backup (``extra``/``missing`` flags), or
        None to synchronise with generic statements."""
        return None

    def refuse_cascades(self, conn: Connection, table: str, definition: TableDefinition, source: str,
                        restoring: set[str]) -> None:
        """Raise RestoreFailed when deleting the rows the backup lacks would cascade into other tables."""
