"""What every backup strategy shares: the interface, the copy it makes, folder and size checks, the locked
transaction a consistent copy is taken in."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.backup.catalog import Backup, TableManifest
from airflow_migrate_provider.core.backup.tables import Fingerprint, TableDefinition
from airflow_migrate_provider.core.dialects import Dialect, dialect_of
from airflow_migrate_provider.errors import BackupFailed
from airflow_migrate_provider.masking import mask_text

log = logging.getLogger(__name__)
_PROGRESS_SECONDS = 5.0  # a long dump logs how much it has written this often

_SPACE_MARGIN = 1.1  # free space wanted, as a multiple of the tables' size on disk


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
    """One way to keep a copy of tables: check, create, hand back for a restore, drop."""

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
    def relations(self, conn: Connection, backup: Backup, tables: list[TableManifest],
                  rows_where: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
        """Inside ``conn``'s transaction: table → a relation (SQL) holding its backed-up rows. ``rows_where``:
        table → a condition on its rows (key columns unqualified); only the rows it holds are needed, a strategy
        that has to load the rows may load just those (it may also hand back more)."""

    def prepare_restore(self, conn: Connection, backup: Backup) -> None:  # noqa: B027 - optional hook
        """Before ``conn``'s transaction begins (SQLite: attach the backup file)."""

    def finish_restore(self, conn: Connection, backup: Backup) -> None:  # noqa: B027 - optional hook
        """After ``conn``'s transaction ended."""

    @abstractmethod
    def drop(self, engine: Engine, backup: Backup) -> None:
        """Remove the copy (retention); the manifest row stays, marked pruned."""

    def exists(self, engine: Engine, backup: Backup) -> bool:
        return True

    def _check_dialect(self, engine: Engine, refusal: str) -> Dialect:
        """The target's dialect; BackupFailed(``refusal``) when this strategy does not work on it."""
        dialect = dialect_of(engine)
        if self.name not in dialect.backup_strategies:
            raise BackupFailed(refusal.format(database=engine.dialect.name))
        return dialect

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


def run_client(args: list[str], env: dict[str, str], what: str, watch: Path | None = None) -> None:
    """Run a database client tool (pg_dump, mariadb-dump); while it runs, log every few seconds how much of
    ``watch`` it has written. BackupFailed (its error output masked) when it fails."""
    started = time.monotonic()
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
        while True:
            try:
                proc.wait(timeout=_PROGRESS_SECONDS)
                break
            except subprocess.TimeoutExpired:
                if watch is not None and watch.exists():
                    written, spent = watch.stat().st_size, time.monotonic() - started
                    log.info("backup: %s: %s written in %.0f s (%s/s)", what, human_size(written), spent,
                             human_size(int(written / max(spent, 1e-3))))
        stderr.seek(0)
        err = stderr.read().decode(errors="replace").strip()
    if proc.returncode != 0:
        raise BackupFailed(f"{what} failed: {mask_text(err) or f'exit code {proc.returncode}'}")


def relation_size(conn: Connection, table: str) -> int | None:
    return dialect_of(conn).relation_size(conn, table)


def tables_size(engine: Engine, tables: list[str]) -> int | None:
    with engine.connect() as conn:
        sizes = [relation_size(conn, t) for t in tables]
    return None if any(s is None for s in sizes) else sum(s for s in sizes if s is not None)


def locked(engine: Engine, dialect: Dialect, tables: list[str], lock_writes: bool, timeout_s: float = 30
           ) -> AbstractContextManager[Connection]:
    """A transaction that, with ``lock_writes``, blocks other sessions' writes to ``tables`` until it ends."""
    return dialect.write_lock(engine, tables if lock_writes else [], timeout_s)
