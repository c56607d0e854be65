"""``mariadb_dump``: the tables' rows as a SQL file written by ``mariadb-dump`` (or ``mysqldump``) in one consistent
snapshot (``--single-transaction``); verified by loading each table back into a temporary table. The connection,
password included, reaches the tool in a private option file (never on its command line or in its environment)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection, Engine
from sqlalchemy.engine.url import URL

from airflow_migrate_provider.core.backup.catalog import Backup, TableManifest
from airflow_migrate_provider.core.backup.client_env import base_environment
from airflow_migrate_provider.core.backup.strategy import (
    Copy,
    Strategy,
    default_location,
    human_size,
    locked,
    run_client,
    tables_size,
)
from airflow_migrate_provider.core.backup.tables import TableDefinition, fingerprint, quote_table, split_name
from airflow_migrate_provider.core.dialects import Dialect
from airflow_migrate_provider.errors import BackupFailed, RestoreFailed

log = logging.getLogger(__name__)
TOOLS = ("mariadb-dump", "mysqldump")
TOOL_VARIABLE = "AIRFLOW_MIGRATE_MARIADB_DUMP"
# the URL's query keys the client tools understand, as option file keys
_CLIENT_OPTIONS = {"unix_socket": "socket", "ssl_ca": "ssl-ca", "ssl_cert": "ssl-cert", "ssl_key": "ssl-key",
                   "connect_timeout": "connect-timeout"}
_DUMP_OPTIONS = ("--single-transaction", "--no-create-info", "--skip-triggers", "--complete-insert", "--hex-blob",
                 "--skip-comments", "--skip-add-locks", "--skip-disable-keys", "--no-tablespaces", "--tz-utc",
                 "--default-character-set=utf8mb4")
_INSERT = re.compile(rb"^INSERT INTO (`(?:[^`]|``)+`) ")


def find_tool() -> str:
    """``$AIRFLOW_MIGRATE_MARIADB_DUMP``, else ``mariadb-dump``, else ``mysqldump`` on PATH."""
    configured = os.environ.get(TOOL_VARIABLE)
    if configured and os.access(configured, os.X_OK):
        return configured
    for name in TOOLS:
        found = shutil.which(name)
        if found:
            return found
    raise BackupFailed(f"backup strategy mariadb_dump needs the `mariadb-dump` (or `mysqldump`) program on the "
                       f"worker, and neither is on PATH: install the MariaDB or MySQL client tools (e.g. `apt-get "
                       f"install mariadb-client`) or set ${TOOL_VARIABLE}; nothing was changed.")


def _option_value(value: object) -> str:
    """A value for a MySQL option file: quoted, backslashes and line breaks escaped."""
    text = str(value).replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    quote = "'" if '"' in text and "'" not in text else '"'
    return f"{quote}{text}{quote}"


def option_file_text(url: URL) -> str:
    """The ``[client]`` section that connects the tool the way ``url`` connects us (password included)."""
    items: dict[str, object] = {"user": url.username, "password": url.password, "host": url.host, "port": url.port}
    items.update({_CLIENT_OPTIONS[k]: v for k, v in url.query.items() if k in _CLIENT_OPTIONS and isinstance(v, str)})
    lines = ["[client]", *(f"{k}={_option_value(v)}" for k, v in items.items() if v not in (None, ""))]
    return "\n".join(lines) + "\n"


def child_environment() -> dict[str, str]:
    """All the tool needs from our environment: where programs are, the locale and time zone (no credentials,
    no MYSQL_* settings: the option file is the only one it reads)."""
    return base_environment()


@contextmanager
def option_file(url: URL) -> Iterator[str]:
    """A private (mode 0600) option file with the connection, removed when the block ends."""
    fd, path = tempfile.mkstemp(prefix="airflow-migrate-", suffix=".cnf")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(option_file_text(url))
        yield path
    finally:
        Path(path).unlink(missing_ok=True)


def dump_command(tool: str, defaults: str, database: str, tables: list[str], path: Path) -> list[str]:
    """``--defaults-file`` must come first; it is the only option file read (no ~/.my.cnf surprises)."""
    return [tool, f"--defaults-file={defaults}", *_DUMP_OPTIONS, f"--result-file={path}", database, "--", *tables]


class MariadbDumpStrategy(Strategy):
    """``mariadb-dump --single-transaction`` of the tables' rows; restores load each table's INSERTs into a
    temporary table, so the rest of the restore is the same as for any strategy."""

    name = "mariadb_dump"

    def describe_location(self, backup_id: str) -> str:
        return str(Path(self.location or default_location()) / f"{backup_id}.sql")

    def check(self, engine: Engine, present: list[str]) -> None:
        self._check_dialect(engine, "backup strategy mariadb_dump needs a MariaDB or MySQL target, not {database}; "
                                    "use `snapshot` (or `pg_dump` on PostgreSQL, `sqlite_backup` on SQLite)")
        find_tool()
        database = engine.url.database
        elsewhere = [t for t in present if split_name(t)[0] not in (None, database)]
        if not database or elsewhere:
            which = ", ".join(elsewhere) or "the connection names no database"
            raise BackupFailed(f"backup strategy mariadb_dump backs up tables of the connection's own database "
                               f"({database or 'none set'}); {which}: set the connection's schema to their "
                               f"database, or use `snapshot`; nothing was changed.")
        self._check_folder(tables_size(engine, present))

    def create(self, engine: Engine, dialect: Dialect, backup_id: str, present: dict[str, TableDefinition],
               lock_writes: bool) -> Copy:
        path = Path(self.describe_location(backup_id))
        copy = Copy()
        if not present:  # every table is one a step creates: no file
            copy.size_bytes = 0
            return copy
        started = time.monotonic()
        copy.stored_as = {t: split_name(t)[1] for t in present}
        try:
            # with lock_writes the writers wait until the dump and the live fingerprints are done; without, a
            # write between the dump's snapshot and the fingerprints fails the verification (nothing kept)
            with locked(engine, dialect, list(present), lock_writes) as conn, option_file(engine.url) as defaults:
                run_client(dump_command(find_tool(), defaults, str(engine.url.database), list(copy.stored_as.values()),
                                        path), child_environment(), f"mariadb-dump of {', '.join(present)}",
                           watch=path)
                for table, definition in present.items():
                    copy.live[table] = fingerprint(conn, quote_table(conn, table), definition.insertable)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        copy.size_bytes = path.stat().st_size
        log.info("backup: mariadb-dump wrote %s (%s) in %.1f s", path, human_size(copy.size_bytes),
                 time.monotonic() - started)
        self._fingerprint_copy(engine, path, present, copy)
        return copy

    def _fingerprint_copy(self, engine: Engine, path: Path, present: dict[str, TableDefinition], copy: Copy) -> None:
        manifests = [TableManifest(t, True, definition=d.to_json(), stored_as=copy.stored_as[t])
                     for t, d in present.items()]
        with engine.connect() as conn:
            try:
                staged = self._stage(conn, str(path), manifests)
                for table, definition in present.items():
                    copy.copied[table] = fingerprint(conn, staged[table], definition.insertable)
            finally:
                _drop_staged(conn, len(manifests))

    @contextmanager
    def relations(self, conn: Connection, backup: Backup, tables: list[TableManifest],
                  rows_where: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
        if tables and not Path(backup.location).is_file():
            raise RestoreFailed(f"backup file '{backup.location}' of backup {backup.id} is missing")
        try:
            yield self._stage(conn, backup.location, tables)
        finally:
            _drop_staged(conn, len(tables))

    def _stage(self, conn: Connection, location: str, tables: list[TableManifest]) -> dict[str, str]:
        """Each table's rows from the file in a temporary table (the session's own): table → its name."""
        prep = conn.dialect.identifier_preparer
        staged: dict[str, str] = {}
        into: dict[bytes, str] = {}
        for index, manifest in enumerate(tables):
            name = _staged_name(index)
            cols = manifest.table_definition.columns  # generated ones too, as plain columns: the dump may have them
            conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {name}")
            conn.exec_driver_sql(f"CREATE TEMPORARY TABLE {name} ("
                                 + ", ".join(f"{prep.quote_identifier(c.name)} {c.type}" for c in cols) + ")",
                                 execution_options={"no_parameters": True})
            staged[manifest.table] = name
            into[prep.quote_identifier(manifest.stored_as).encode()] = name
        if into:
            _load(conn, location, into)
        return staged

    def drop(self, engine: Engine, backup: Backup) -> None:
        Path(backup.location).unlink(missing_ok=True)

    def exists(self, engine: Engine, backup: Backup) -> bool:
        return not any(t.present for t in backup.tables) or Path(backup.location).is_file()


def _staged_name(index: int) -> str:
    return f"airflow_migrate_stage_{index}"


def _drop_staged(conn: Connection, count: int) -> None:
    for index in range(count):  # DROP TEMPORARY TABLE neither commits nor ends the transaction
        conn.exec_driver_sql(f"DROP TEMPORARY TABLE IF EXISTS {_staged_name(index)}")


def _load(conn: Connection, location: str, into: dict[bytes, str]) -> None:
    """Run the file's INSERT statements of the tables in ``into`` (quoted name → temporary table) against their
    temporary tables. A statement starts a line and ends the line that ends with ``;`` (line breaks inside values
    are escaped, so lines break only between rows)."""
    cursor: Any = conn.connection.driver_connection.cursor()
    try:
        for target, statement in _statements(location, into):
            cursor.execute((b"INSERT INTO " + target + statement).decode("utf-8"))
    finally:
        cursor.close()


def _statements(location: str, into: dict[bytes, str]) -> Iterator[tuple[bytes, bytes]]:
    """(temporary table, the INSERT after its table name) for each INSERT of a table in ``into``."""
    target: bytes | None = None
    parts: list[bytes] = []
    with open(location, "rb") as dump:
        for line in dump:
            if target is None:
                found = _INSERT.match(line)
                if found is None or found.group(1) not in into:
                    continue
                target, line = into[found.group(1)].encode(), line[found.end(1):]
            parts.append(line)
            if line.rstrip().endswith(b";"):
                yield target, b"".join(parts).rstrip().rstrip(b";")
                target, parts = None, []
