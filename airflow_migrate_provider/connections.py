"""Connections given to the CLI: ``--conn ID=URI``, ``--conn ID=env:VAR`` and ``--conn-file FILE``.

A password on the command line is visible to every user of the machine (``ps``) for the whole run, so the
CLI offers two ways that keep it off: ``env:VAR`` reads the URI from an environment variable, and a
connection file (mode 0600) holds ``ID=URI`` lines or a JSON/YAML map. ``AIRFLOW_CONN_<ID>`` variables work as
well (Airflow's own). Every URI is checked here, so a malformed one is reported as what it is (never as "not
defined"), and no message quotes a password.
"""

from __future__ import annotations

import json
import os
import re
import stat
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import yaml

from airflow_migrate_provider.errors import MigrateError
from airflow_migrate_provider.masking import mask_uri

ENV_PREFIX = "env:"
CONN_FILE_LIMIT = 1 << 20  # bytes; a connection file is a handful of lines
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_CONN_ID = re.compile(r"[A-Za-z0-9_.\-]+")
_LINE = re.compile(r"\s*(?P<id>[^=\s]+)\s*=\s*(?P<uri>\S.*?)\s*")


class ConnectionOptionError(MigrateError):
    """A ``--conn``/``--conn-file`` value that cannot be used: malformed URI, unset variable, unsafe file.
    A usage error (``exit_code`` 2); the message says what to fix and never quotes a password."""

    exit_code: ClassVar[int] = 2


def uri_problem(uri: str) -> str | None:
    """What is malformed in a connection URI (a phrase naming the part, never quoting the password), or None."""
    if not uri.strip():
        return "is empty"
    if any(c.isspace() for c in uri.strip()) or uri != uri.strip():
        return "contains whitespace (percent-encode it, e.g. a space as %20)"
    if not _SCHEME.match(uri):
        userinfo = " (user:password@host/db is not a URI on its own)" if "@" in uri else ""
        return f"has no scheme: write it as postgresql://..., mysql://... or sqlite:///...{userinfo}"
    return _netloc_problem(uri) or _scheme_problem(uri)


def _netloc_problem(uri: str) -> str | None:
    try:
        parts = urlsplit(uri)
    except ValueError:  # the only one urlsplit raises: a '[' or ']' that does not enclose an IPv6 address
        return "has a malformed host: a '[' or ']' that does not enclose an IPv6 address (write [::1])"
    hostinfo = parts.netloc.rpartition("@")[2]
    if hostinfo.count("[") != hostinfo.count("]"):
        return "has a malformed host: an unclosed '[' (an IPv6 address is written [::1])"
    try:
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError:
        port = hostinfo.rpartition("]")[2].rpartition(":")[2]
        return f"has a malformed port '{port}': it must be a number from 1 to 65535"
    return None


def _scheme_problem(uri: str) -> str | None:
    from airflow_migrate_provider.core.dialects import SUPPORTED, dialect_name_of_uri

    try:
        dialect_name_of_uri(uri)
    except MigrateError:
        scheme = uri.split("://", 1)[0]
        return (f"has scheme '{scheme}', which is not a database this provider supports "
                f"({', '.join(SUPPORTED)}; postgres:// works too)")
    return None


def check_uri(conn_id: str, uri: str, origin: str = "--conn") -> None:
    """ConnectionOptionError when ``uri`` is malformed, naming the connection and where it came from."""
    problem = uri_problem(uri)
    if problem:
        raise ConnectionOptionError(f"{origin}: the URI of connection '{conn_id}' {problem}")


def check_uris(connections: dict[str, str]) -> None:
    for conn_id, uri in connections.items():
        check_uri(conn_id, uri)


def _from_environment(conn_id: str, variable: str, origin: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", variable):
        raise ConnectionOptionError(f"{origin}: connection '{conn_id}': '{ENV_PREFIX}{variable}' does not name an "
                                    f"environment variable (letters, digits and _)")
    uri = os.environ.get(variable)
    if uri is None:
        raise ConnectionOptionError(f"{origin}: connection '{conn_id}': environment variable {variable} is not "
                                    f"set (export {variable}=postgresql://user:password@host:5432/db first)")
    return uri


def resolve(conn_id: str, value: str, origin: str = "--conn") -> str:
    """The URI for ``value``: itself, or the environment variable ``env:VAR`` names; checked."""
    if not _CONN_ID.fullmatch(conn_id):
        raise ConnectionOptionError(f"{origin}: '{conn_id[:60]}' is not a connection id (letters, digits, _ . -)")
    uri = _from_environment(conn_id, value[len(ENV_PREFIX):], origin) if value.startswith(ENV_PREFIX) else value
    check_uri(conn_id, uri, origin)
    return uri


def parse_conn_option(value: str) -> tuple[str, str]:
    """``ID=URI`` or ``ID=env:VAR`` → (id, URI)."""
    conn_id, sep, rest = value.partition("=")
    if not sep or not conn_id or not rest:
        shown = conn_id if sep else mask_uri(value)
        raise ConnectionOptionError(f"--conn expects ID=URI or ID=env:VARIABLE, got '{shown[:60]}'")
    return conn_id, resolve(conn_id, rest)


def _check_file_mode(path: Path, warn: Callable[[str], None]) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o007:
        raise ConnectionOptionError(f"--conn-file {path}: other users may read it (mode {mode:04o}) and it holds "
                                    f"passwords: run `chmod 600 {path}` first")
    if mode & 0o070:
        warn(f"--conn-file {path}: its group may read it (mode {mode:04o}); `chmod 600 {path}` keeps it private")


def _read(path: Path) -> str:
    try:
        if path.stat().st_size > CONN_FILE_LIMIT:
            raise ConnectionOptionError(f"--conn-file {path}: larger than {CONN_FILE_LIMIT} bytes; it should hold "
                                        f"a few ID=URI lines")
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)[:120]
        raise ConnectionOptionError(f"--conn-file {path}: cannot read it: {reason}") from exc


def _lines(text: str) -> list[tuple[int, str]]:
    return [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and
            not line.lstrip().startswith("#")]


def _parse_lines(path: Path, lines: list[tuple[int, str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for number, line in lines:
        match = _LINE.fullmatch(line)
        if match is None:
            raise ConnectionOptionError(f"{path}:{number}: expected ID=URI")
        found[match["id"]] = resolve(match["id"], match["uri"], f"{path}:{number}")
    return found


def _parse_map(path: Path, text: str) -> dict[str, str]:
    try:
        data = json.loads(text) if text.lstrip().startswith("{") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f":{line + 1}" if line is not None else f":{exc.lineno}" if hasattr(exc, "lineno") else ""
        raise ConnectionOptionError(f"{path}{where}: neither ID=URI lines nor a JSON/YAML map of "
                                    f"connection id to URI") from None
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConnectionOptionError(f"{path}: expected ID=URI lines or a JSON/YAML map of connection id to URI "
                                    f"(strings)")
    return {conn_id: resolve(conn_id, uri, str(path)) for conn_id, uri in data.items()}


def load_conn_file(path: str | Path, warn: Callable[[str], None]) -> dict[str, str]:
    """{id: URI} from a connection file: ``ID=URI`` lines (``#`` comments; ``env:VAR`` allowed), or a JSON or
    YAML map. A file other users may read is refused; one the group may read is warned about."""
    path = Path(path)
    if not path.is_file():
        raise ConnectionOptionError(f"--conn-file {path}: no such file")
    _check_file_mode(path, warn)
    text = _read(path)
    lines = _lines(text)
    if lines and _LINE.fullmatch(lines[0][1]) and "=" in lines[0][1].split(":", 1)[0]:  # ID=URI, not id: URI
        return _parse_lines(path, lines)
    return _parse_map(path, text)


def gather(options: list[str], conn_file: str | Path | None, warn: Callable[[str], None]) -> dict[str, str]:
    """Every connection given on the command line: the file's first, then ``--conn`` (which wins)."""
    connections = load_conn_file(conn_file, warn) if conn_file else {}
    for value in options:
        conn_id, uri = parse_conn_option(value)
        connections[conn_id] = uri
    return connections
