"""``pg_dump``: a custom-format archive of the tables, dumped from a snapshot exported by the transaction that
fingerprints them, so dump and manifest see the same rows; verified by loading each table back."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.backup.catalog import Backup, TableManifest
from airflow_migrate_provider.core.backup.client_env import libpq_environment, pg_passfile
from airflow_migrate_provider.core.backup.strategy import (
    Copy,
    Strategy,
    default_location,
    human_size,
    run_client,
    tables_size,
)
from airflow_migrate_provider.core.backup.tables import TableDefinition, fingerprint, quote_table, split_name
from airflow_migrate_provider.core.dialects import Dialect
from airflow_migrate_provider.errors import BackupFailed, RestoreFailed
from airflow_migrate_provider.masking import mask_text

log = logging.getLogger(__name__)


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
        self._check_dialect(engine, "backup strategy pg_dump needs a PostgreSQL target, not {database}; "
                                    "use `snapshot` or `sqlite_backup`")
        self.tool("pg_dump")
        self.tool("pg_restore")
        self._check_folder(tables_size(engine, present))

    @staticmethod
    @contextmanager
    def _libpq(engine: Engine) -> Iterator[tuple[str, dict[str, str]]]:
        """A connection string without the password, and the minimal environment of the tool: the password is
        in a private password file (``client_env``) that exists until the block ends."""
        url = engine.url
        parts = {"host": url.host, "port": url.port, "user": url.username, "dbname": url.database}
        parts.update({k: v for k, v in url.query.items() if isinstance(v, str)})
        dsn = " ".join(f"{k}='{_conninfo_value(v)}'" for k, v in parts.items() if v is not None)
        with pg_passfile(str(url.password) if url.password else None) as passfile:
            yield dsn, libpq_environment(passfile)

    def _run(self, args: list[str], env: dict[str, str], what: str, watch: Path | None = None) -> None:
        run_client(args, env, what, watch)

    def create(self, engine: Engine, dialect: Dialect, backup_id: str, present: dict[str, TableDefinition],
               lock_writes: bool) -> Copy:
        path = Path(self.describe_location(backup_id))
        copy = Copy()
        if not present:  # every table is one a step creates: no file (pg_dump without -t dumps the whole database)
            copy.size_bytes = 0
            return copy
        started = time.monotonic()
        try:
            # the exported snapshot lives as long as this transaction
            with self._libpq(engine) as (dsn, env), engine.connect() as plain, dialect.write_lock(
                    plain.execution_options(isolation_level="REPEATABLE READ"),
                    list(present) if lock_writes else [], 30) as conn:
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
                copy.copied[table] = fingerprint(conn, staged[table], definition.insertable, definition.primary_key)
        return copy

    @contextmanager
    def relations(self, conn: Connection, backup: Backup, tables: list[TableManifest],
                  rows_where: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
        if tables and not Path(backup.location).is_file():
            raise RestoreFailed(f"backup file '{backup.location}' of backup {backup.id} is missing")
        yield self._stage(conn, backup.location, tables, rows_where or {})

    def _stage(self, conn: Connection, location: str, tables: list[TableManifest],
               rows_where: dict[str, str] | None = None) -> dict[str, str]:
        """Load each table's rows from the archive into a temporary table (dropped at commit); of a table in
        ``rows_where``, only the rows its condition holds for (COPY … WHERE: the rest are parsed, not stored)."""
        prep = conn.dialect.identifier_preparer
        staged: dict[str, str] = {}
        for index, manifest in enumerate(tables):
            name = f"airflow_migrate_stage_{index}"
            cols = [c for c in manifest.table_definition.columns if not c.generated]
            conn.execute(text(f"CREATE TEMPORARY TABLE {name} ("
                              + ", ".join(f"{prep.quote_identifier(c.name)} {c.type}" for c in cols)
                              + ") ON COMMIT DROP"))
            self._load(conn, location, manifest.stored_as, name, (rows_where or {}).get(manifest.table))
            staged[manifest.table] = name
        return staged

    def _load(self, conn: Connection, location: str, table: str, into: str, where: str | None = None) -> None:
        """Stream the table's COPY block of ``pg_restore --data-only`` into ``into``. Reading an archive needs no
        connection: the tool gets no credentials."""
        env = libpq_environment(None)
        env.pop("PGPASSWORD", None)
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
                        condition = f" WHERE {where}" if where else ""
                        with cur.copy(f"COPY {into} {columns} FROM STDIN{condition}") as block:
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
