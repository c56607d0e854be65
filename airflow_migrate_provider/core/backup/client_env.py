"""What a database client tool we start (pg_dump, pg_restore, mariadb-dump) gets of our environment: only what
it needs. A worker's environment holds every ``AIRFLOW_CONN_*`` URI (passwords included), Airflow's secrets and
cloud credentials; a child inherits none of them. The connection's password reaches ``pg_dump`` in a private
(0600) password file that exists while the tool runs, never on its command line or in its environment."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# where programs and libraries are, the locale and time zone (messages, encodings), temporary files, and HOME
# (libpq looks for ~/.pgpass and ~/.postgresql/root.crt there)
BASE_VARIABLES = frozenset({"PATH", "HOME", "TZ", "LANG", "LANGUAGE", "TMPDIR", "LD_LIBRARY_PATH"})
# libpq's own settings the worker may rely on (PGSSLMODE, PGSSLROOTCERT, PGSERVICEFILE, PGCONNECT_TIMEOUT, ...)
LIBPQ_PREFIX = "PG"
# replaced by the connection's own password, never passed on
LIBPQ_PASSWORD_VARIABLES = frozenset({"PGPASSWORD", "PGPASSFILE"})


def base_environment() -> dict[str, str]:
    """PATH, HOME, TMPDIR, the locale (LANG, LANGUAGE, LC_*) and TZ of this process, nothing else."""
    env = {k: v for k, v in os.environ.items() if k in BASE_VARIABLES or k.startswith("LC_")}
    env.setdefault("PATH", os.defpath)
    return env


def libpq_environment(passfile: str | None) -> dict[str, str]:
    """:func:`base_environment` plus the worker's ``PG*`` settings; with ``passfile`` (the connection has a
    password), that file instead of any ``PGPASSWORD``/``PGPASSFILE`` of the worker."""
    env = base_environment()
    env.update({k: v for k, v in os.environ.items() if k.startswith(LIBPQ_PREFIX) and k.isupper()})
    if passfile is not None:
        for name in LIBPQ_PASSWORD_VARIABLES:
            env.pop(name, None)
        env["PGPASSFILE"] = passfile
    return env


def _passfile_field(value: str) -> str:
    """A field of a libpq password file: backslashes and colons escaped."""
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def pg_passfile(password: str | None) -> Iterator[str | None]:
    """A password file (mode 0600, libpq format) matching any host, port, database and user, holding
    ``password``; removed when the block ends. None when there is no password."""
    if not password:
        yield None
        return
    fd, path = tempfile.mkstemp(prefix="airflow-migrate-", suffix=".pgpass")  # mkstemp creates it 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(f"*:*:*:*:{_passfile_field(password)}\n")
        yield path
    finally:
        Path(path).unlink(missing_ok=True)
