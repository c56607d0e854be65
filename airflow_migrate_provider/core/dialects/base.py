"""The interface every dialect adapter implements: the one place that knows how databases differ.

An adapter is bound to a SQLAlchemy dialect (the driver's paramstyle and quoting rules) and answers every
database-specific question the engine has: SQL text (quoting, placeholders), introspection (see
:class:`~airflow_migrate_provider.core.dialects.catalog.InspectorCatalog`), upserts, the copy fast path,
row-hash SQL, table DDL for backups, restore specifics, a write lock that owns its transaction, snapshot reads,
transient error classification and the async URL. Code outside ``core/dialects`` asks the adapter, never its name.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from typing import Any, ClassVar

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.interfaces import Dialect as SADialect
from sqlalchemy.exc import SQLAlchemyError

from airflow_migrate_provider.core.dialects.catalog import InspectorCatalog
from airflow_migrate_provider.core.dialects.restore_hooks import RestoreHooks
from airflow_migrate_provider.core.dialects.types import ResumeHazard, TableDefinition, TypeInfo
from airflow_migrate_provider.errors import UnsupportedDatabase


def session_tag(host: str, pid: int) -> str:
    """The name a migration process gives its database sessions (PostgreSQL's application_name: at most 63
    characters), so that what a dead process still runs on the server can be found and ended."""
    import hashlib

    return "airflow-migrate:" + hashlib.sha1(f"{host}:{pid}".encode()).hexdigest()[:16]


class Dialect(InspectorCatalog, RestoreHooks, ABC):
    """What the engine needs to know about one kind of database.

    ``transactional_ddl`` decides whether a step's statements, its verification and its ledger record
    commit together (PostgreSQL, SQLite) or statement by statement with progress recorded (MySQL).
    """

    name: ClassVar[str]  # SQLAlchemy's dialect name
    label: ClassVar[str] = ""  # as users spell it: "PostgreSQL" (default: the name)
    transactional_ddl: ClassVar[bool]
    backup_strategies: ClassVar[tuple[str, ...]] = ("snapshot",)  # the backup strategies this database supports
    single_writer: ClassVar[bool] = False  # one writer per database: share one connection for read and write
    snapshot_reads: ClassVar[bool] = False  # a reader can keep a snapshot while others write (snapshot_reader)
    untyped_results: ClassVar[bool] = False  # result columns carry no types: sample a row to learn them
    gx_datasource: ClassVar[str] = "sql"  # Great Expectations' data source kind (ctx.data_sources.add_<kind>)
    conn_types: ClassVar[tuple[str, ...]] = ()  # Airflow connection types of this database
    sqlglot_name: ClassVar[str] = ""  # sqlglot's name for the dialect (parsing plan SQL); "" = generic
    # a factory of the SQLAlchemy type for times with sub-second precision, where DateTime is coarser
    precise_timestamp_type: ClassVar[Callable[[], Any] | None] = None

    def __init__(self, sa_dialect: SADialect | None = None):
        if sa_dialect is None:
            from sqlalchemy.dialects import registry
            from sqlalchemy.engine.default import DefaultDialect
            from sqlalchemy.exc import NoSuchModuleError

            try:
                sa_dialect = registry.load(self.name)()
            except NoSuchModuleError:
                sa_dialect = DefaultDialect()
        self.sa_dialect = sa_dialect
        self.driver: str = getattr(sa_dialect, "driver", "")
        self.pyformat = sa_dialect.paramstyle in ("pyformat", "format")
        self._preparer = sa_dialect.identifier_preparer
        if not self.label:
            self.label = self.name

    @classmethod
    def connection_url(cls, host: str | None, port: int | None, login: str | None, password: str | None,
                       schema: str | None, extra: dict[str, Any]) -> Any:
        """A SQLAlchemy URL for an Airflow connection of this database, or None to take the engine from the
        connection's provider hook (the default). For databases whose provider needs system libraries."""
        return None

    def unsupported(self, what: str) -> UnsupportedDatabase:
        """The error for something this database's adapter does not do (never a NotImplementedError)."""
        return UnsupportedDatabase(f"{what} is not supported on {self.label} databases")

    # -- engine and SQL text -----------------------------------------------------------------------
    def prepare(self, engine: Engine) -> None:
        """Adjust a freshly created engine (connection pragmas, transaction handling)."""

    def ident(self, name: str) -> str:
        """A column or (schema-qualified) table name, quoted by the database's own rules."""
        return ".".join(self._preparer.quote_identifier(part) for part in name.split("."))

    def fragment(self, plan_sql: str) -> str:
        """A SQL expression from the plan, verbatim (``%`` doubled where the driver reads it as a placeholder)."""
        return plan_sql.replace("%", "%%") if self.pyformat else plan_sql

    def param(self, name: str) -> str:
        """The driver's placeholder for the bound parameter ``name``."""
        return f"%({name})s" if self.pyformat else f":{name}"

    def row(self, items: list[str]) -> str:
        return items[0] if len(items) == 1 else f"({', '.join(items)})"

    def compare(self, exprs: list[str], op: str, values: tuple[Any, ...], params: dict[str, Any],
                prefix: str) -> str:
        """``(a, b) > (:p0, :p1)``: row-value comparison, the values bound into ``params``."""
        names = []
        for i, value in enumerate(values):
            params[f"{prefix}{i}"] = value
            names.append(self.param(f"{prefix}{i}"))
        return f"{self.row(exprs)} {op} {self.row(names)}"

    def in_list(self, tuples: list[str], width: int) -> str:
        """The inside of ``(k1, k2) IN (...)`` for rendered row values of ``width`` columns."""
        return ", ".join(tuples)

    def split(self, sql: str) -> list[str]:
        """Split a SQL text into single statements (drivers like sqlite3 run one at a time)."""
        import sqlparse  # only when a step's SQL is split (not at DAG-parse time)

        statements = [s.strip() for s in sqlparse.split(sql)]
        return [s.rstrip(";").rstrip() for s in statements if s and s.strip(";").strip()]

    def resume_hazard(self, statement: str) -> ResumeHazard | None:
        """Why ``statement`` of a step cannot run again after a crash between its commit and the ledger's record
        of it (None: it can, or, with transactional DDL, they commit together)."""
        return None

    def read_json_as_text(self, expr: str) -> str:
        """How to SELECT a JSON column so its numbers never pass through a Python float."""
        return expr

    def bytewise(self, expr: str, typname: str | None, category: str | None) -> str:
        """``expr`` so that text sorts in byte order (like Python's ``str``) for keyset paging and merging."""
        return expr

    def write_value(self, value: Any) -> Any:
        """A Python value as the driver binds it into an INSERT."""
        import json

        return json.dumps(value) if isinstance(value, (dict, list)) else value

    def key_value(self, value: Any) -> Any:
        """A key value read from another database, as a bound parameter equal to this database's key."""
        return value

    def bound_value(self, value: Any) -> Any:
        """A key value as a bound range bound that sorts like this database sorts its keys."""
        return value

    def upsert_clause(self, keys: list[str], others: list[str], excluded: str = "excluded") -> str:
        """What follows ``INSERT ... VALUES/SELECT`` so a row whose key exists is updated (quoted names)."""
        target = ", ".join(keys)
        if not others:
            return f" ON CONFLICT ({target}) DO NOTHING"
        return f" ON CONFLICT ({target}) DO UPDATE SET " + ", ".join(f"{c} = {excluded}.{c}" for c in others)

    # -- sessions and connections ------------------------------------------------------------------
    def in_memory(self, engine: Engine) -> bool:
        """True when the database lives in one connection (work on it cannot be spread over threads)."""
        return False

    def stable_session(self, conn: Connection, planner_hints: bool = False) -> None:
        """Make text forms of values independent of the session's settings (time zone, date style)."""

    def sample_keys(self, conn: Connection, keys: str, from_sql: str, where: str, table: bool, size: int,
                    seed: int) -> tuple[list[tuple[Any, ...]], str]:
        """Up to ``size`` rows of ``keys`` chosen at random, reproducibly for ``seed``; and how."""
        rows = conn.exec_driver_sql(f"SELECT {keys} FROM {from_sql}{where} ORDER BY RAND({int(seed)}) "
                                    f"LIMIT {int(size)}", {}).all()
        return [tuple(r) for r in rows], "ORDER BY RAND(seed) LIMIT"

    # -- errors --------------------------------------------------------------------------------------
    @abstractmethod
    def is_transient(self, exc: BaseException) -> bool:
        """True when retrying the same work later can succeed (connection lost, lock timeout, deadlock)."""

    # -- locks ---------------------------------------------------------------------------------------
    @contextmanager
    def write_lock(self, bind: Engine | Connection, tables: Sequence[str], timeout_s: float,
                   failed: Callable[[SQLAlchemyError], BaseException] | None = None) -> Iterator[Connection]:
        """Begin a transaction that blocks other sessions' writes to ``tables`` (plain names; reads go on),
        yield its connection, commit when the block ends (roll back on an error). Waits at most
        ``timeout_s`` for the lock. ``bind``: an engine (a connection is opened for the block) or a
        connection without an open transaction. With no tables, a plain transaction. A database error while
        taking the lock is raised as ``failed(error)`` when ``failed`` is given."""
        with ExitStack() as stack:
            conn = stack.enter_context(bind.connect()) if isinstance(bind, Engine) else bind
            stack.enter_context(self._lock_wait(conn, timeout_s))
            try:
                stack.enter_context(conn.begin())
                if tables:
                    self._lock_tables(conn, [self.ident(t) for t in tables], timeout_s)
            except SQLAlchemyError as exc:
                if failed is None:
                    raise
                raise failed(exc) from exc
            yield conn

    def _lock_wait(self, conn: Connection, timeout_s: float) -> AbstractContextManager[None]:
        """While it is open, taking ``conn``'s next transaction or lock waits at most ``timeout_s``."""
        return nullcontext()

    def _lock_tables(self, conn: Connection, quoted_tables: list[str], timeout_s: float) -> None:
        raise self.unsupported("locking tables against writes")

    def presence_lock(self, engine: Engine, name: str) -> AbstractContextManager[bool]:
        """While the block runs, hold a lock that the database itself releases when this session ends (a dead
        worker's included), named ``name``; yields whether this session got it (another one may hold it).
        Where the database has no such lock: yields False and holds nothing."""
        return nullcontext(False)

    def presence_held(self, engine: Engine, name: str) -> bool | None:
        """Whether some live session holds the presence lock ``name`` (None: this database cannot tell)."""
        return None

    # -- who holds the run lock: the working task's session -------------------------------------------
    @contextmanager
    def working_session(self, engine: Engine, name: str) -> Iterator[int | None]:
        """While a task of the lock's holder works: a session held open for the whole block (the presence lock
        ``name`` where the database has one), yielding its server-side id (None where the database has none).
        The server ends an idle session as soon as its client process dies, so a vanished id means a dead task."""
        with self.presence_lock(engine, name):
            yield None

    def backend_alive(self, engine: Engine, backend_id: int) -> bool | None:
        """Whether the server still has the session ``backend_id`` (None: this database cannot tell)."""
        return None

    def end_sessions(self, engine: Engine, host: str, pid: int, backend_id: int | None) -> list[int]:
        """End what a dead lock holder (process ``pid`` on ``host``) still runs on the server: a statement the
        server goes on executing after its client died. Returns the ids of the sessions ended."""
        return []

    def snapshot_reader(self, bind: Engine | Connection) -> AbstractContextManager[Connection]:
        """A read-only transaction whose reads all see the database as it was when the block was entered, even
        while other sessions write; rolled back when the block ends. ``bind``: an engine (a connection is opened
        for the block) or a connection without an open transaction (opened ahead, so that entering costs one
        round trip). Only where ``snapshot_reads`` is true; elsewhere read while writers are still locked out."""
        raise self.unsupported("reading at a snapshot")

    # -- copy fast path --------------------------------------------------------------------------------
    # how rows get into this database, for renderings: streamed from a source of the same kind, or from Python rows
    stream_text: ClassVar[str] = "binary COPY out of the source, binary COPY into the target"
    bulk_text: ClassVar[str] = "keyset SELECT batches, COPY into the target"

    @property
    def copy_fast_path(self) -> bool:
        """True when rows can be written with the database's bulk protocol (PostgreSQL COPY via psycopg, MariaDB
        LOAD DATA LOCAL INFILE): :meth:`copy_rows_into` works."""
        return False

    def streams_from(self, source: Dialect) -> bool:
        """True when :meth:`copy_between` moves rows from ``source``'s connections into this database with no value
        passing through Python (both sides speak the same bulk protocol)."""
        return self.copy_fast_path and source.copy_fast_path and type(source) is type(self)

    def stream_column(self, expr: str, target_type: str) -> str:
        """A source expression as :meth:`copy_between`'s SELECT must produce it for a column of ``target_type``
        (binary COPY needs the target's exact type: numeric → float8 or bigint → int fail otherwise)."""
        return f"CAST(({expr}) AS {target_type})"

    def clear_stage(self, tconn: Connection, stage: str) -> None:
        """Empty a staging table (see :meth:`stage_like`) inside the open transaction, committing nothing."""
        tconn.exec_driver_sql(f"TRUNCATE {stage}", {})

    def copy_between(self, sconn: Connection, select_sql: str, params: dict[str, Any], tconn: Connection,
                     into: str, columns: str) -> int:
        """Stream ``select_sql``'s rows from ``sconn`` into ``into`` (``columns``) on ``tconn``; row count."""
        raise self.unsupported("bulk copy")

    def copy_rows_into(self, tconn: Connection, into: str, columns: str
                       ) -> AbstractContextManager[Callable[[tuple[Any, ...]], None]]:
        """A writer of Python rows into ``into`` through the bulk protocol, flushed when the block ends."""
        raise self.unsupported("bulk copy")

    def stage_like(self, tconn: Connection, stage: str, table: str) -> None:
        """Create (if missing) a session-private empty table shaped like ``table``."""
        raise self.unsupported("staging tables")

    # -- hashing ---------------------------------------------------------------------------------------
    def column_hash_sql(self, exprs: tuple[str, str], typnames: tuple[str | None, str | None], rule: Any,
                        params: dict[str, Any], prefix: str) -> tuple[str, str] | None:
        """(source SQL, target SQL) hashing one compared column exactly in this database, or None."""
        return None

    def segment_hash_sql(self, fields: list[str], null_exprs: list[str],
                         version: tuple[int, ...] | None) -> str | None:
        """A summable 64-bit hash of one row: ``fields`` (from column_hash_sql) and which of ``null_exprs`` are
        NULL; ``version`` is the server's. None when this database does not hash rows in SQL."""
        return None

    def segment_bucket(self, key: str, lo: str, width: str, wide: bool) -> str:
        """SQL numbering the segment of an integer ``key``: ``floor((key - lo) / width)`` (``lo``, ``width``: bound
        parameters); ``wide``: the keys span 2^62 or more, so ``key - lo`` could overflow a bigint."""
        if wide:
            return f"floor((({key})::numeric - {lo}) / {width})"
        return f"(({key}) - {lo}) / {width}"

    def result_category(self, info: TypeInfo) -> str | None:
        """The coarse category (integer, number, text, datetime, bool, json, binary, other) of a result type."""
        return None

    def prefer_hash_grouping(self, conn: Connection) -> None:
        """Hint the planner that a grouped hash query has few groups (hash them rather than sort)."""

    def table_hash(self, conn: Connection, relation: str, quoted_columns: str) -> tuple[int, int, int] | None:
        """(rows, lo, hi): count and two 64-bit sums of row hashes over ``relation``, or None to hash in Python."""
        return None

    # -- DDL -------------------------------------------------------------------------------------------
    def table_definition(self, conn: Connection, table: str) -> TableDefinition:
        """The DDL that rebuilds an existing table, and a fingerprint of its structure."""
        raise self.unsupported("backing up tables")

    # -- async -----------------------------------------------------------------------------------------
    def async_url(self, host: str | None, port: int | None, login: str | None, password: str | None,
                  schema: str | None) -> Any:
        """An async SQLAlchemy URL (for triggers, which must not block the event loop)."""
        raise self.unsupported("waiting in the triggerer (async access)")

    def async_fragment(self, plan_sql: str) -> str:
        """Plan SQL for the async driver (``%`` doubled where it reads placeholders)."""
        return plan_sql.replace("%", "%%")
