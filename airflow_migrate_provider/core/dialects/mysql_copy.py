"""MariaDB/MySQL copy fast path: ``LOAD DATA LOCAL INFILE`` fed through a named pipe, never a file on disk.

The client library reads the file the statement names (PyMySQL opens it by path), so the statement names a FIFO
in a private temporary directory and a feeder thread writes the rows into it while the statement runs. Rows are
text in one format, from either producer:

- MariaDB → MariaDB (:func:`copy_between`): the source server formats each row as one line
  (``CONCAT_WS(TAB, QUOTE(c1), HEX(b2), ...)``), read as bytes and passed on untouched: no value is parsed or
  built in Python, only one bytes object per row moves through it;
- any database → MariaDB (:func:`copy_rows_into`): Python values, one encoder per target column.

The format: fields separated by TAB, strings enclosed in single quotes with ``\\``, ``'`` and NUL escaped
(``QUOTE()``'s own escaping), the unquoted word ``NULL`` (or ``\\N``) for NULL, numbers and datetimes as their
text, binary values as hexadecimal, turned back into bytes by ``SET col = UNHEX(@var)``. Every value arrives
exactly (tabs, newlines, backslashes, quotes, unicode, ``\\N`` and ``NULL`` as strings, empty strings).

``LOAD DATA LOCAL`` turns data errors and duplicate keys into warnings (the server cannot stop the client's
stream); a load that leaves any warning raises, so the batch rolls back instead of keeping a converted value.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from airflow_migrate_provider.errors import UnsupportedDatabase

PIPE_WRITE_BYTES = 256 * 1024  # what the feeder hands the pipe at once
FLUSH_BYTES = 8 * 1024 * 1024  # Python rows buffered before one LOAD DATA statement sends them
FETCH_ROWS = 2_000  # source lines fetched at once
_BINARY_TYPES = ("binary", "varbinary", "tinyblob", "blob", "mediumblob", "longblob", "bit")
_DATETIME_TYPES = ("datetime", "timestamp")
_IDENT = re.compile(r"`(?:[^`]|``)*`|[^,\s]+")
_NULL = "\\N"


class LoadWarnings(sa_exc.DBAPIError):
    """A ``LOAD DATA LOCAL`` that left warnings (a value converted or truncated, a duplicate key skipped)."""

    def __init__(self, statement: str, warnings: list[tuple[Any, ...]]):
        shown = "; ".join(f"{level} {code}: {message}" for level, code, message in warnings[:3])
        orig = ValueError(f"the bulk load into MariaDB/MySQL was refused: {shown} (LOAD DATA LOCAL turns data "
                          f"errors and duplicate keys into warnings; nothing of this batch was kept)")
        super().__init__(statement, None, orig)


# -- the target's columns ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Layout:
    """The target columns of one load: quoted names and kinds (``binary``, ``datetime`` or ``value``)."""

    names: list[str]
    kinds: list[str]

    def load_sql(self, path: str, into: str) -> str:
        targets, sets = [], []
        for i, (name, kind) in enumerate(zip(self.names, self.kinds, strict=True)):
            if kind == "binary":
                targets.append(f"@am_{i}")
                sets.append(f"{name} = UNHEX(@am_{i})")
            else:
                targets.append(name)
        quoted_path = path.replace("\\", "\\\\").replace("'", "''")
        sql = (f"LOAD DATA LOCAL INFILE '{quoted_path}' INTO TABLE {into} CHARACTER SET utf8mb4 "
               f"FIELDS OPTIONALLY ENCLOSED BY '''' ({', '.join(targets)})")
        return sql + (f" SET {', '.join(sets)}" if sets else "")


def split_idents(columns: str) -> list[str]:
    """``\\`a\\`, \\`b c\\``` → the quoted names (commas inside backticks stay in their name)."""
    return _IDENT.findall(columns)


def _unquote(ident: str) -> str:
    return ident[1:-1].replace("``", "`") if ident.startswith("`") else ident


def _kind(column_type: str) -> str:
    base = column_type.lower().split("(")[0].strip()
    return "binary" if base in _BINARY_TYPES else "datetime" if base in _DATETIME_TYPES else "value"


def target_layout(tconn: Connection, into: str, columns: str) -> Layout:
    """The kinds of ``columns`` of table ``into`` (temporary tables included), from ``SHOW COLUMNS``."""
    types = {str(r[0]): str(r[1]) for r in tconn.exec_driver_sql(f"SHOW COLUMNS FROM {into}").all()}
    names = split_idents(columns)
    return Layout(names, [_kind(types.get(_unquote(n), "")) for n in names])


# -- the pipe ---------------------------------------------------------------------------------------------------
class _Feeder(threading.Thread):
    """Writes ``chunks`` into the FIFO at ``path``; remembers the first error (reading the source, or a reader that
    went away)."""

    def __init__(self, path: str, chunks: Iterable[bytes]):
        super().__init__(daemon=True, name="airflow-migrate-load-feeder")
        self.path, self.chunks = path, chunks
        self.error: BaseException | None = None
        self.rows_sent = 0

    def run(self) -> None:
        try:
            with open(self.path, "wb", buffering=0) as pipe:
                for chunk in self.chunks:
                    pipe.write(chunk)
        except BaseException as exc:  # re-raised by the loading thread (see load_stream)
            self.error = exc
        finally:
            close = getattr(self.chunks, "close", None)
            if close is not None:
                close()

    def release(self) -> None:
        """Unblock a feeder still waiting for a reader (the statement failed before opening the pipe)."""
        if not self.is_alive():
            return
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return
        os.close(fd)  # the feeder's open() returns; its next write gets EPIPE


def load_stream(tconn: Connection, layout: Layout, into: str, chunks: Iterable[bytes]) -> int:
    """Run ``LOAD DATA LOCAL INFILE`` into ``into`` on ``tconn``, its data written by a thread from ``chunks``;
    the rows loaded. A load that leaves warnings raises :class:`LoadWarnings` (the caller's transaction then
    rolls back); an error of the feeder (reading the source) is raised as it was."""
    require_local_infile(tconn)
    with tempfile.TemporaryDirectory(prefix="airflow-migrate-load-") as tmp:
        path = os.path.join(tmp, "rows.tsv")
        os.mkfifo(path, 0o600)
        feeder = _Feeder(path, chunks)
        feeder.start()
        statement = layout.load_sql(path, into)
        try:
            result = tconn.exec_driver_sql(statement.replace("%", "%%") if _pyformat(tconn) else statement)
            loaded = max(result.rowcount, 0)
        finally:
            feeder.release()
            feeder.join()
        if feeder.error is not None:
            raise feeder.error
        warnings = [tuple(r) for r in tconn.exec_driver_sql("SHOW WARNINGS LIMIT 3").all()]
        if warnings:
            raise LoadWarnings(statement, warnings)
        return loaded


def _pyformat(tconn: Connection) -> bool:
    return tconn.dialect.paramstyle in ("pyformat", "format")


def require_local_infile(tconn: Connection) -> None:
    """Raise an actionable error when this connection was opened without ``local_infile`` (PyMySQL then refuses
    the server's request for the file)."""
    raw = tconn.connection.driver_connection
    flag = getattr(raw, "client_flag", None)
    if flag is not None and not flag & 128:  # CLIENT.LOCAL_FILES
        raise UnsupportedDatabase(
            "copying into MariaDB/MySQL uses LOAD DATA LOCAL INFILE, but this connection was opened without "
            "local_infile: add local_infile=1 to the SQLAlchemy URL's query (Airflow connections made by this "
            "provider have it), and make sure the server allows it (SET GLOBAL local_infile = 1)")


# -- MariaDB → MariaDB: lines formatted by the source server ------------------------------------------------------
def _line_sql(select_sql: str, layout: Layout) -> str:
    fields = [f"IFNULL(HEX(am_rows.{name}), 'NULL')" if kind == "binary" else f"QUOTE(am_rows.{name})"
              for name, kind in zip(layout.names, layout.kinds, strict=True)]
    line = f"CONVERT(CONCAT_WS(CHAR(9 USING utf8mb4), {', '.join(fields)}) USING utf8mb4)"
    return f"SELECT CAST({line} AS BINARY) FROM ({select_sql}) AS am_rows"


def _source_lines(sconn: Connection, sql: str, params: dict[str, Any]) -> Iterator[bytes]:
    """Blocks of newline-terminated lines read from ``sconn`` with an unbuffered cursor."""
    raw = sconn.connection.driver_connection
    cursor = raw.cursor(_unbuffered_cursor_class(raw))
    try:
        cursor.execute(sql, params)
        buffer: list[bytes] = []
        size = 0
        while rows := cursor.fetchmany(FETCH_ROWS):
            buffer.append(b"\n".join([r[0] for r in rows]) + b"\n")
            size += len(buffer[-1])
            if size >= PIPE_WRITE_BYTES:
                yield b"".join(buffer)
                buffer, size = [], 0
        if buffer:
            yield b"".join(buffer)
    except sconn.dialect.loaded_dbapi.Error as exc:
        raise sa_exc.DBAPIError.instance(sql, params, exc, sconn.dialect.loaded_dbapi.Error) from exc
    finally:
        cursor.close()


def _unbuffered_cursor_class(raw: Any) -> Any:
    """The driver's unbuffered cursor (PyMySQL and mysqlclient both call it ``<package>.cursors.SSCursor``)."""
    package = type(raw).__module__.split(".")[0]
    return importlib.import_module(f"{package}.cursors").SSCursor


def copy_between(sconn: Connection, select_sql: str, params: dict[str, Any], tconn: Connection, into: str,
                 columns: str) -> int:
    """``select_sql``'s rows from a MariaDB/MySQL source into ``into`` (``columns``) on a MariaDB/MySQL target: the
    source server writes the load's lines, which go to the target as read."""
    layout = target_layout(tconn, into, columns)
    return load_stream(tconn, layout, into, _source_lines(sconn, _line_sql(select_sql, layout), params))


# -- any database → MariaDB: Python values -----------------------------------------------------------------------
def _quote(text: str) -> str:
    if "\\" in text or "'" in text or "\x00" in text:
        text = text.replace("\\", "\\\\").replace("'", "\\'").replace("\x00", "\\0")
    return f"'{text}'"


def _timedelta(value: timedelta) -> str:
    micros = abs(value) // timedelta(microseconds=1)
    seconds, micro = divmod(micros, 1_000_000)
    text = f"{'-' if value < timedelta(0) else ''}{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
    return text + (f".{micro:06d}" if micro else "")


def _datetime(value: datetime) -> str:
    if value.tzinfo is not None:  # sessions are in UTC (MysqlDialect.prepare)
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value.isoformat(sep=" ")


_BY_TYPE: dict[type, Callable[[Any], str]] = {
    str: _quote, int: str, bool: lambda v: "1" if v else "0", float: repr, Decimal: lambda v: format(v, "f"),
    datetime: _datetime, date: date.isoformat, time: time.isoformat, timedelta: _timedelta,
    dict: lambda v: _quote(json.dumps(v)), list: lambda v: _quote(json.dumps(v)),
    bytes: lambda v: _quote(v.decode()), bytearray: lambda v: _quote(bytes(v).decode()),
    memoryview: lambda v: _quote(v.tobytes().decode()),
}


def _value(value: Any) -> str:
    if value is None:
        return _NULL
    encode = _BY_TYPE.get(type(value))
    if encode is not None:
        return encode(value)
    for kind, found in _BY_TYPE.items():  # subclasses (a pendulum DateTime, an IntEnum)
        if isinstance(value, kind):
            return found(value)
    return _quote(str(value))


def _binary(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, str):
        value = value.encode()
    return bytes(value).hex()


def _datetime_text(value: Any) -> str:
    """A datetime column: text with a UTC offset (SQLite keeps ISO text) is converted to UTC like a datetime."""
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            return _quote(value)  # the server judges (a zero date, say)
        return _datetime(parsed) if parsed.tzinfo is not None else _quote(value)
    return _value(value)


_ENCODERS: dict[str, Callable[[Any], str]] = {"binary": _binary, "datetime": _datetime_text, "value": _value}


def encode_rows(rows: Iterable[tuple[Any, ...]], layout: Layout) -> bytes:
    """Rows of Python values as the load's lines."""
    encoders = [_ENCODERS[k] for k in layout.kinds]
    lines = ["\t".join([enc(v) for enc, v in zip(encoders, row, strict=True)]) for row in rows]
    return ("\n".join(lines) + "\n").encode() if lines else b""


@contextmanager
def copy_rows_into(tconn: Connection, into: str, columns: str) -> Iterator[Callable[[tuple[Any, ...]], None]]:
    """A writer of Python rows into ``into``: rows are encoded as they come and loaded about every 8 MiB and when
    the block ends (one ``LOAD DATA`` statement each, all in the caller's transaction)."""
    layout = target_layout(tconn, into, columns)
    pending: list[tuple[Any, ...]] = []
    blocks: list[bytes] = []
    size = 0

    def flush_rows() -> None:
        nonlocal size
        if pending:
            blocks.append(encode_rows(pending, layout))
            size += len(blocks[-1])
            pending.clear()

    def write_row(row: tuple[Any, ...]) -> None:
        pending.append(row)
        if len(pending) >= FETCH_ROWS:
            flush_rows()
            if size >= FLUSH_BYTES:
                load()

    def load() -> None:
        nonlocal size
        load_stream(tconn, layout, into, list(blocks))
        blocks.clear()
        size = 0

    yield write_row
    flush_rows()
    if blocks:
        load()


# -- keyset bounds -----------------------------------------------------------------------------------------------
_STRICT = {">": ">", ">=": ">", "<": "<", "<=": "<"}


def expand_row_comparison(exprs: list[str], op: str, values: list[str]) -> str:
    """``(a, b, c) op (x, y, z)`` written without a row value, which MariaDB/MySQL cannot range-scan:
    ``a > x OR (a = x AND (b > y OR (b = y AND c op z)))`` for ``op`` in ``>``, ``>=``, ``<``, ``<=``; ``=`` and
    ``<>`` as conjunctions/disjunctions of the columns."""
    if op == "=":
        return "(" + " AND ".join(f"{e} = {v}" for e, v in zip(exprs, values, strict=True)) + ")"
    if op in ("<>", "!="):
        return "(" + " OR ".join(f"{e} <> {v}" for e, v in zip(exprs, values, strict=True)) + ")"
    strict = _STRICT[op]
    text = f"{exprs[-1]} {op} {values[-1]}"
    for expr, value in zip(reversed(exprs[:-1]), reversed(values[:-1]), strict=True):
        text = f"{expr} {strict} {value} OR ({expr} = {value} AND ({text}))"
    return f"({text})"
