"""The three ways to keep a copy of tables, each knowing how to check it can run, make the copy with the
fingerprints of what it copied, hand the copy back as a readable relation for a restore, and drop it.

- ``snapshot``: ``CREATE TABLE airflow_migrate_bak_<id>_<n> AS SELECT * FROM <table>`` in the same database.
- ``pg_dump``: a custom-format archive of the tables, dumped from a snapshot exported by the transaction that
  fingerprints them, so dump and manifest see the same rows; verified by loading each table back.
- ``sqlite_backup``: the database file copied with SQLite's online backup API; restores ATTACH it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.backup.catalog import Backup, TableManifest
from airflow_migrate_provider.core.backup.tables import (
    Fingerprint,
    TableDefinition,
    fingerprint,
    quote_table,
    split_name,
)
from airflow_migrate_provider.core.dialects import Dialect
from airflow_migrate_provider.errors import BackupFailed, RestoreFailed, db_error_line
from airflow_migrate_provider.masking import mask_text

log = logging.getLogger(__name__)
SNAPSHOT_PREFIX = "airflow_migrate_bak_"
_ATTACHED = "airflow_migrate_restore"
_SPACE_MARGIN = 1.1  # free space wanted, as a multiple of the tables' size on disk
_PROGRESS_SECONDS = 5.0  # a long pg_dump logs how much it has written this often


def default_location() -> str:
    configured = os.environ.get("AIRFLOW_MIGRATE_BACKUPS")
    if configured:
        return configured
    home = os.environ.get("AIRFLOW_HOME") or os.path.expanduser("~/airflow")
    return os.path.join(home, "migration_backups")


def human_size(size: int | None) -> str:
    if size is None:
        return "size unknown"
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


class Copy:
    """What ``Strategy.create`` made: where each table went and the fingerprints taken."""

    def __init__(self) -> None:
        self.stored_as: dict[str, str] = {}
        self.live: dict[str, Fingerprint] = {}  # the tables, when they were copied (or just after)
        self.copied: dict[str, Fingerprint] = {}  # the copies
        self.size_bytes: int | None = None


class Strategy(ABC):
    name: str

    def __init__(self, location: str | None = None):
        self.location = location

    def describe_location(self, backup_id: str) -> str:
        return "snapshot tables in the target database"

    @abstractmethod
    def check(self, engine: Engine, present: list[str]) -> None:
        """Raise ``BackupFailed`` when the backup cannot be made (before anything is copied)."""

    @abstractmethod
    def create(self, engine: Engine, dialect: Dialect, backup_id: str, present: dict[str, TableDefinition],
               lock_writes: bool) -> Copy:
        """Copy the tables and fingerprint both the live tables and the copies."""

    @abstractmethod
    @contextmanager
    def relations(self, conn: Connection, backup: Backup, tables: list[TableManifest]) -> Iterator[dict[str, str]]:
        """Inside ``conn``'s transaction: table → a relation (SQL) holding its backed-up rows."""

    def prepare_restore(self, conn: Connection, backup: Backup) -> None:  # noqa: B027 - optional hook
        """Before ``conn``'s transaction begins (SQLite: attach the backup file)."""

    def finish_restore(self, conn: Connection, backup: Backup) -> None:  # noqa: B027 - optional hook
        """After ``conn``'s transaction ended."""

    @abstractmethod
    def drop(self, engine: Engine, backup: Backup) -> None:
        """Remove the copy (retention); the manifest row stays, marked pruned."""

    def exists(self, engine: Engine, backup: Backup) -> bool:
        return True

    # -- shared helpers ---------------------------------------------------------------------------
    def _check_folder(self, needed: int | None) -> Path:
        folder = Path(self.location or default_location())
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise BackupFailed(f"backup location '{folder}' is not writable: {exc.strerror or exc}. Set the "
                               f"plan's backup.location (or $AIRFLOW_MIGRATE_BACKUPS) to a writable folder; "
                               f"nothing was changed.") from exc
        free = shutil.disk_usage(folder).free
        if needed is not None and free < needed * _SPACE_MARGIN:
            raise BackupFailed(f"backup location '{folder}' has {human_size(free)} free but the tables take "
                               f"{human_size(needed)}: free space or point backup.location elsewhere; nothing "
                               f"was changed.")
        return folder


def _relation_size(conn: Connection, table: str) -> int | None:
    if conn.dialect.name == "postgresql":
        return int(conn.execute(text("SELECT pg_total_relation_size(CAST(:t AS regclass))"),
                                {"t": quote_table(conn, table)}).scalar() or 0)
    try:
        return int(conn.execute(text("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = :n"),
                                {"n": split_name(table)[1]}).scalar() or 0)
    except Exception:
        return None


def tables_size(engine: Engine, tables: list[str]) -> int | None:
    with engine.connect() as conn:
        sizes = [_relation_size(conn, t) for t in tables]
    return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


@contextmanager
def _locked(engine: Engine, dialect: Dialect, tables: list[str], lock_writes: bool, timeout_s: float = 30
            ) -> Iterator[Connection]:
    """A transaction that, with ``lock_writes``, blocks other sessions' writes to ``tables`` until it ends."""
    with engine.connect() as conn, dialect.lock_wait(conn, timeout_s), conn.begin():
        if lock_writes and tables:
            dialect.lock_against_writes(conn, [quote_table(conn, t) for t in tables], timeout_s)
        yield conn


class SnapshotStrategy(Strategy):
    name = "snapshot"

    def check(self, engine: Engine, present: list[str]) -> None:
        if engine.dialect.name not in ("postgresql", "sqlite"):
            raise BackupFailed(f"snapshot backups of {engine.dialect.name} databases are not supported yet")

    @staticmethod
    def snapshot_name(backup_id: str, index: int, table: str) -> str:
        schema, _ = split_name(table)
        name = f"{SNAPSHOT_PREFIX}{backup_id.replace('-', '_').lower()}_{index}"
        return f"{schema}.{name}" if schema else name

    def create(self, engine: Engine, dialect: Dialect, backup_id: str, present: dict[str, TableDefinition],
               lock_writes: bool) -> Copy:
        copy = Copy()
        with _locked(engine, dialect, list(present), lock_writes) as conn:
            for index, (table, definition) in enumerate(present.items()):
                started = time.monotonic()
                name = self.snapshot_name(backup_id, index, table)
                cols = ", ".join(conn.dialect.identifier_preparer.quote_identifier(c) for c in definition.insertable)
                conn.execute(text(f"CREATE TABLE {quote_table(conn, name)} AS SELECT {cols} "
                                  f"FROM {quote_table(conn, table)}"))
                copy.stored_as[table] = name
                log.info("backup: copied %s into %s in %.1f s", table, name, time.monotonic() - started)
            if lock_writes:  # consistent: fingerprint under the same lock
                self._fingerprint(conn, present, copy)
        if not lock_writes:
            with engine.connect() as conn, conn.begin():
                self._fingerprint(conn, present, copy)
        with engine.connect() as conn:
            sizes = [_relation_size(conn, name) for name in copy.stored_as.values()]
        copy.size_bytes = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
        return copy

    @staticmethod
    def _fingerprint(conn: Connection, present: dict[str, TableDefinition], copy: Copy) -> None:
        for table, definition in present.items():
            copy.copied[table] = fingerprint(conn, quote_table(conn, copy.stored_as[table]), definition.insertable)
            copy.live[table] = fingerprint(conn, quote_table(conn, table), definition.insertable)

    @contextmanager
    def relations(self, conn: Connection, backup: Backup, tables: list[TableManifest]) -> Iterator[dict[str, str]]:
        yield {t.table: quote_table(conn, t.stored_as) for t in tables}

    def drop(self, engine: Engine, backup: Backup) -> None:
        with engine.begin() as conn:
            for t in backup.tables:
                if t.stored_as:
                    conn.execute(text(f"DROP TABLE IF EXISTS {quote_table(conn, t.stored_as)}"))

    def exists(self, engine: Engine, backup: Backup) -> bool:
        from airflow_migrate_provider.core.backup.tables import table_exists

        with engine.connect() as conn:
            return all(table_exists(conn, t.stored_as) for t in backup.tables if t.present)


class SqliteBackupStrategy(Strategy):
    name = "sqlite_backup"

    def describe_location(self, backup_id: str) -> str:
        return str(Path(self.location or default_location()) / f"{backup_id}.sqlite")

    def check(self, engine: Engine, present: list[str]) -> None:
        if engine.dialect.name != "sqlite":
            raise BackupFailed(f"backup strategy sqlite_backup needs a SQLite target, not {engine.dialect.name}; "
                               f"use `snapshot` (or `pg_dump` on PostgreSQL)")
        with engine.connect() as conn:
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar() or 0
            page_size = conn.exec_driver_sql("PRAGMA page_size").scalar() or 0
        self._check_folder(int(pages) * int(page_size))

    def create(self, engine: Engine, dialect: Dialect, backup_id: str, present: dict[str, TableDefinition],
               lock_writes: bool) -> Copy:
        path = Path(self.describe_location(backup_id))
        copy = Copy()
        started = time.monotonic()
        try:
            with engine.connect() as conn, ExitStack() as stack:
                # lock_writes: another session holds the write lock (BEGIN IMMEDIATE) while the file is copied and
                # fingerprints the live tables under it. The online backup cannot run from a connection that holds
                # the write lock itself: it retries "busy" forever.
                locked = stack.enter_context(_locked(engine, dialect, list(present), True)) if lock_writes else None
                dest = sqlite3.connect(str(path))
                try:
                    conn.connection.driver_connection.backup(dest, pages=1024, progress=_sqlite_progress(path))
                finally:
                    dest.close()
                if locked is not None:
                    self._fingerprint_live(locked, present, copy)
        except (sqlite3.Error, OSError) as exc:
            path.unlink(missing_ok=True)
            raise BackupFailed(f"copying the database file to '{path}' failed: {exc}; nothing was changed") from exc
        log.info("backup: database file copied to %s in %.1f s", path, time.monotonic() - started)
        if not lock_writes:
            with engine.connect() as conn:
                self._fingerprint_live(conn, present, copy)
        from sqlalchemy import create_engine

        copied = create_engine(f"sqlite:///{path}")
        try:
            with copied.connect() as conn:
                for table, definition in present.items():
                    copy.copied[table] = fingerprint(conn, quote_table(conn, table), definition.insertable)
        finally:
            copied.dispose()
        copy.stored_as = {table: table for table in present}
        copy.size_bytes = path.stat().st_size
        return copy

    @staticmethod
    def _fingerprint_live(conn: Connection, present: dict[str, TableDefinition], copy: Copy) -> None:
        for table, definition in present.items():
            copy.live[table] = fingerprint(conn, quote_table(conn, table), definition.insertable)

    def prepare_restore(self, conn: Connection, backup: Backup) -> None:
        if not Path(backup.location).is_file():
            raise RestoreFailed(f"backup file '{backup.location}' of backup {backup.id} is missing")
        conn.connection.driver_connection.execute(f"ATTACH DATABASE ? AS {_ATTACHED}", (backup.location,))

    def finish_restore(self, conn: Connection, backup: Backup) -> None:
        conn.connection.driver_connection.execute(f"DETACH DATABASE {_ATTACHED}")

    @contextmanager
    def relations(self, conn: Connection, backup: Backup, tables: list[TableManifest]) -> Iterator[dict[str, str]]:
        prep = conn.dialect.identifier_preparer
        yield {t.table: f"{_ATTACHED}.{prep.quote_identifier(split_name(t.stored_as)[1])}" for t in tables}

    def drop(self, engine: Engine, backup: Backup) -> None:
        Path(backup.location).unlink(missing_ok=True)

    def exists(self, engine: Engine, backup: Backup) -> bool:
        return Path(backup.location).is_file()


def _sqlite_progress(path: Path) -> Any:
    last = [time.monotonic()]

    def progress(status: int, remaining: int, total: int) -> None:
        if time.monotonic() - last[0] >= 2 and total:
            last[0] = time.monotonic()
            log.info("backup: %s: %.0f%% of %d pages copied", path.name, 100 * (total - remaining) / total, total)

    return progress


class PgDumpStrategy(Strategy):
    """``pg_dump -Fc`` of the tables from an exported snapshot; restores stream ``pg_restore --data-only`` of
    each table into a temporary table, so the rest of the restore is the same as for any strategy."""

    name = "pg_dump"

    def describe_location(self, backup_id: str) -> str:
        return str(Path(self.location or default_location()) / f"{backup_id}.dump")

    @staticmethod
    def tool(name: str) -> str:
        configured = os.environ.get(f"AIRFLOW_MIGRATE_{name.upper()}")
        found = configured if configured and os.access(configured, os.X_OK) else shutil.which(name)
        if not found:
            raise BackupFailed(f"backup strategy pg_dump needs the `{name}` program on the worker, and it is not "
                               f"on PATH: install the PostgreSQL client tools (e.g. `apt-get install "
                               f"postgresql-client`) or set $AIRFLOW_MIGRATE_{name.upper()}; nothing was changed.")
        return found

    def check(self, engine: Engine, present: list[str]) -> None:
        if engine.dialect.name != "postgresql":
            raise BackupFailed(f"backup strategy pg_dump needs a PostgreSQL target, not {engine.dialect.name}; "
                               f"use `snapshot` or `sqlite_backup`")
        self.tool("pg_dump")
        self.tool("pg_restore")
        self._check_folder(tables_size(engine, present))

    @staticmethod
    def _libpq(engine: Engine) -> tuple[str, dict[str, str]]:
        """A connection string without the password, and the environment carrying it."""
        url = engine.url
        parts = {"host": url.host, "port": url.port, "user": url.username, "dbname": url.database}
        parts.update({k: v for k, v in url.query.items() if isinstance(v, str)})
        dsn = " ".join(f"{k}='{_conninfo_value(v)}'" for k, v in parts.items() if v is not None)
        env = {**os.environ}
        if url.password:
            env["PGPASSWORD"] = str(url.password)
        return dsn, env

    def _run(self, args: list[str], env: dict[str, str], what: str, watch: Path | None = None) -> None:
        """Run a client tool; while it runs, log every few seconds how much of ``watch`` it has written."""
        started = time.monotonic()
        with tempfile.TemporaryFile() as stderr:
            proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
            while True:
                try:
                    proc.wait(timeout=_PROGRESS_SECONDS)
                    break
                except subprocess.TimeoutExpired:
                    if watch is not None and watch.exists():
                        written = watch.stat().st_size
                        log.info("backup: %s: %s written in %.0f s (%s/s)", what, human_size(written),
                                 time.monotonic() - started,
                                 human_size(int(written / max(time.monotonic() - started, 1e-3))))
            stderr.seek(0)
            err = stderr.read().decode(errors="replace").strip()
        if proc.returncode != 0:
            raise BackupFailed(f"{what} failed: {mask_text(err) or f'exit code {proc.returncode}'}")

    def create(self, engine: Engine, dialect: Dialect, backup_id: str, present: dict[str, TableDefinition],
               lock_writes: bool) -> Copy:
        path = Path(self.describe_location(backup_id))
        dsn, env = self._libpq(engine)
        copy = Copy()
        if not present:  # every table is one a step creates: no file (pg_dump without -t dumps the whole database)
            copy.size_bytes = 0
            return copy
        started = time.monotonic()
        try:
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    if lock_writes:
                        dialect.lock_against_writes(conn, [quote_table(conn, t) for t in present], 30)
                    snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar()
                    copy.stored_as = {t: _qualified(conn, t) for t in present}
                    patterns = [arg for t in present for arg in ("-t", _pg_pattern(copy.stored_as[t]))]
                    self._run([self.tool("pg_dump"), "--format=custom", "--no-owner", f"--snapshot={snapshot}",
                               f"--file={path}", *patterns, dsn], env, f"pg_dump of {', '.join(present)}",
                              watch=path)
                    for table, definition in present.items():
                        copy.live[table] = fingerprint(conn, quote_table(conn, table), definition.insertable)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        copy.size_bytes = path.stat().st_size
        log.info("backup: pg_dump wrote %s (%s) in %.1f s", path, human_size(copy.size_bytes),
                 time.monotonic() - started)
        with engine.connect() as conn, conn.begin():
            manifests = [TableManifest(t, True, definition=d.to_json(), stored_as=copy.stored_as[t])
                         for t, d in present.items()]
            staged = self._stage(conn, str(path), manifests)
            for table, definition in present.items():
                copy.copied[table] = fingerprint(conn, staged[table], definition.insertable)
        return copy

    @contextmanager
    def relations(self, conn: Connection, backup: Backup, tables: list[TableManifest]) -> Iterator[dict[str, str]]:
        if tables and not Path(backup.location).is_file():
            raise RestoreFailed(f"backup file '{backup.location}' of backup {backup.id} is missing")
        yield self._stage(conn, backup.location, tables)

    def _stage(self, conn: Connection, location: str, tables: list[TableManifest]) -> dict[str, str]:
        """Load each table's rows from the archive into a temporary table (dropped at commit)."""
        prep = conn.dialect.identifier_preparer
        staged: dict[str, str] = {}
        for index, manifest in enumerate(tables):
            name = f"airflow_migrate_stage_{index}"
            cols = [c for c in manifest.table_definition.columns if not c.generated]
            conn.execute(text(f"CREATE TEMPORARY TABLE {name} ("
                              + ", ".join(f"{prep.quote_identifier(c.name)} {c.type}" for c in cols)
                              + ") ON COMMIT DROP"))
            self._load(conn, location, manifest.stored_as, name)
            staged[manifest.table] = name
        return staged

    def _load(self, conn: Connection, location: str, table: str, into: str) -> None:
        """Stream the table's COPY block of ``pg_restore --data-only`` into ``into``."""
        _, env = self._libpq(conn.engine)
        schema, name = split_name(table)
        args = [self.tool("pg_restore"), "--data-only", "--file=-", f"--table={name}",
                *([f"--schema={schema}"] if schema else []), location]
        proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdout is not None and proc.stderr is not None
        try:
            lines = iter(proc.stdout)
            with conn.connection.driver_connection.cursor() as cur:
                for line in lines:
                    if line.startswith(b"COPY ") and line.rstrip().endswith(b"FROM stdin;"):
                        columns = line[line.index(b"(") : line.rindex(b")") + 1].decode()
                        with cur.copy(f"COPY {into} {columns} FROM STDIN") as block:
                            buffer = bytearray()
                            for row in lines:
                                if row == b"\\.\n":
                                    break
                                buffer += row
                                if len(buffer) >= 1 << 20:
                                    block.write(bytes(buffer))
                                    buffer.clear()
                            block.write(bytes(buffer))
            err = proc.stderr.read()
        finally:
            proc.wait()
        if proc.returncode != 0:
            raise RestoreFailed(f"pg_restore of {table} from {location} failed: "
                                f"{mask_text(err.decode(errors='replace').strip())}")

    def drop(self, engine: Engine, backup: Backup) -> None:
        Path(backup.location).unlink(missing_ok=True)

    def exists(self, engine: Engine, backup: Backup) -> bool:
        return not any(t.present for t in backup.tables) or Path(backup.location).is_file()


def _conninfo_value(value: object) -> str:
    """A libpq conninfo value inside single quotes: backslashes and quotes escaped."""
    return str(value).replace("\\", "\\\\").replace("'", "\\'")


def _qualified(conn: Connection, table: str) -> str:
    """schema.name of a table as PostgreSQL resolves it on the search path."""
    return conn.execute(text("SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n "
                             "ON n.oid = c.relnamespace WHERE c.oid = CAST(:t AS regclass)"),
                        {"t": quote_table(conn, table)}).scalar()


def _pg_pattern(table: str) -> str:
    return ".".join(f'"{p}"' for p in split_name(table) if p)


STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (SnapshotStrategy, PgDumpStrategy, SqliteBackupStrategy)}


def strategy_named(name: str, location: str | None) -> Strategy:
    return STRATEGIES[name](location)


def db_error(exc: BaseException) -> str:
    return mask_text(db_error_line(exc))
