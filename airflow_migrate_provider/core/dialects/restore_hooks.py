"""What a restore from backup asks the database adapter; the defaults suit a database with no sequences to
carry over and no cascades to guard (SQLite overrides the foreign-key handling).

Where DDL commits on its own (``Dialect.transactional_ddl`` false: MySQL/MariaDB) the restore cannot drop and
re-create a table inside its transaction. It stages instead (core/backup/staged_restore.py): each rebuilt table is
built and filled under a staging name, the rows of every restored table are synchronised and checked (foreign keys
by query, see ``foreign_key_links``; the staged and synchronised tables against the manifest) in one transaction,
which rolls back on any failure while the live tables are untouched; only then one atomic ``rename_tables`` swaps
the staged tables in (the old ones parked, dropped afterwards) and ``move_foreign_keys`` points other tables' keys
at the restored tables again."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.dialects.types import RawForeignKey, TableDefinition
from airflow_migrate_provider.errors import UnsupportedDatabase


def _no_segment_restore(hooks: RestoreHooks) -> UnsupportedDatabase:
    """Only reached if a restore asks for segments where ``segment_sums`` said there are none (a bug)."""
    return UnsupportedDatabase(f"segment restores are not supported on {getattr(hooks, 'label', 'this')} databases "
                               f"(segment_sums returned None)")


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

    def delete_diff_sql(self, qt: str, diff: str, match: str) -> str:
        """DELETE the rows of ``qt`` whose keys ``diff`` (alias ``d``) flags ``extra``; ``match``: qt's key = d's."""
        return f"DELETE FROM {qt} USING {diff} AS d WHERE d.extra AND {match}"

    def update_diff_sql(self, qt: str, columns: list[str], source: str, diff: str, target_match: str,
                        source_match: str) -> str:
        """UPDATE ``qt``'s quoted ``columns`` to the values in ``source`` (alias ``b``) for the keys ``diff`` (alias
        ``d``) flags neither extra nor missing; the matches: the table's key = d's, b's key = d's."""
        cols = ", ".join(columns)
        return (f"UPDATE {qt} SET ({cols}) = ROW({', '.join(f'b.{c}' for c in columns)}) FROM {source} AS b "
                f"JOIN {diff} AS d ON {source_match} WHERE NOT d.extra AND NOT d.missing AND {target_match}")

    # -- segment restores (core/backup/segments.py): cost grows with what changed ----------------------------
    segment_bits: ClassVar[int] = 0

    def segment_sums(self, conn: Connection, relation: str, quoted_columns: str, quoted_keys: str,
                     both_seeds: bool) -> list[tuple[int, int, int, int]] | None:
        """(segment, rows, seed-0 hash sum, seed-1 hash sum) per non-empty segment of ``relation``, rows spread
        over ``2 ** segment_bits`` segments by their primary key; None where the database cannot hash in SQL
        (then restores compare whole tables)."""
        return None

    def quick_segment_sums(self, conn: Connection, relation: str, columns: list[str],
                           keys: list[str]) -> tuple[str, list[list[int]]] | None:
        """(scheme, [segment, rows, hash sum] per non-empty segment) of ``relation``: a pass much cheaper than
        ``segment_sums`` (a 64-bit hash of each row's typed values, never equal for values whose text differs
        except by a 64-bit collision), over the same segments; None where the database has no such hash."""
        return None

    def segment_filter(self, keys: list[str], segments: list[int]) -> str:
        """A condition on a row (its key columns, unqualified) that holds for the rows in ``segments``."""
        raise _no_segment_restore(self)

    def stage_segments(self, conn: Connection, relation: str, quoted_columns: str, quoted_keys: str,
                       segments: list[int], name: str) -> str:
        """A temporary table named ``name`` of the rows of ``relation`` in ``segments``."""
        raise _no_segment_restore(self)

    def segment_diff(self, conn: Connection, definition: TableDefinition, live: str, source: str,
                     index: int) -> str | None:
        """``diff_keys`` between the staged live rows ``live`` and the staged backed-up rows ``source``."""
        raise _no_segment_restore(self)

    def refuse_segment_cascades(self, conn: Connection, table: str, definition: TableDefinition, live: str,
                                source: str, restoring: set[str]) -> None:
        """``refuse_cascades`` limited to the rows of the differing segments (``live``)."""

    def rows_differing(self, conn: Connection, live: str, source: str, quoted_columns: str) -> int:
        """How many rows of the two relations have no equal row in the other (duplicates counted)."""
        raise _no_segment_restore(self)

    def lock_for_restore(self, conn: Connection, tables: list[str], timeout_s: float) -> None:
        """Inside the restore's transaction: block other sessions' writes to ``tables`` until it ends."""

    def rows_written(self, conn: Connection, table: str) -> int | None:
        """Rows this transaction wrote to ``table`` (triggers and cascades included), or None if unknown."""
        return None

    # -- staged restores (where DDL is not transactional) ----------------------------------------------
    def foreign_key_links(self, conn: Connection, restoring: set[str], dropping: set[str],
                          rebuilt: dict[str, TableDefinition]) -> list[tuple[str, RawForeignKey]]:
        """(child table, key) of each foreign key the restored tables must satisfy afterwards: the rebuilt tables'
        backed-up keys and the live keys from or to a restored table, whose rows a staged restore checks by query
        (its session has the database's own checks off)."""
        return []

    def rename_tables(self, conn: Connection, renames: list[tuple[str, str]]) -> None:
        """Rename (quoted old, quoted new) pairs, all or none."""
        for old, new in renames:
            conn.exec_driver_sql(f"ALTER TABLE {old} RENAME TO {new}")

    def move_foreign_keys(self, conn: Connection, parked: str, live: str, skip: set[str]) -> None:
        """After ``live`` was renamed to ``parked`` and its restored version took its name: point the foreign keys
        of other tables (not those in ``skip``) that followed the rename back at ``live``."""
