"""PostgreSQL COPY between two psycopg 3 connections, with no per-row Python beyond one libpq call.

psycopg's ``Copy`` iterator costs about five Python calls per row; reading ``COPY ... TO STDOUT`` straight
from libpq (one ``get_copy_data`` per row) and writing ~128 KiB blocks (psycopg's own write size) halves
the copy process's CPU, which on a small machine is CPU the two database servers get back.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from typing import Any

WRITE_BYTES = 128 * 1024  # psycopg splits larger writes into blocks of this size anyway


def copy_out_blocks(connection: Any, statement: str) -> Iterator[bytes]:
    """Run ``statement`` (a ``COPY ... TO STDOUT``) on a psycopg connection; yield its data in blocks.

    Leaves the connection usable whatever happens: on an early exit it cancels the COPY and drains it.
    """
    from psycopg import errors, pq

    pgconn = connection.pgconn
    encoding = connection.info.encoding
    pgconn.send_query(statement.encode(encoding))
    result = pgconn.get_result()
    if result is None or result.status != pq.ExecStatus.COPY_OUT:
        _drain_results(pgconn)
        raise errors.error_from_result(result, encoding=encoding)
    finished = False
    try:
        buffer = bytearray()
        while True:
            nbytes, data = pgconn.get_copy_data(0)
            if nbytes < 0:  # -1: done; -2: failed (the error comes with the final result)
                break
            buffer += data
            if len(buffer) >= WRITE_BYTES:
                yield bytes(buffer)
                buffer.clear()
        if buffer:
            yield bytes(buffer)
        finished = True
    finally:
        if not finished:
            connection.cancel()
            while pgconn.get_copy_data(0)[0] >= 0:
                pass
        final = pgconn.get_result()
        _drain_results(pgconn)
    if final is not None and final.status != pq.ExecStatus.COMMAND_OK:
        raise errors.error_from_result(final, encoding=encoding)


def _drain_results(pgconn: Any) -> None:
    while pgconn.get_result() is not None:
        pass


@contextmanager
def as_sqlalchemy_error(statement: str) -> Iterator[None]:
    """psycopg errors raised by COPY on the raw connection, as the SQLAlchemy errors everything else raises
    (so classification as transient or not, and the messages, are the same on every path)."""
    import psycopg
    from sqlalchemy import exc as sa_exc

    try:
        yield
    except psycopg.Error as exc:
        raise sa_exc.DBAPIError.instance(statement, None, exc, psycopg.Error) from exc


def copy_between(sconn: Any, select_sql: str, params: dict[str, Any], tconn: Any, into: str, columns: str) -> int:
    """Binary ``COPY (select) TO STDOUT`` on the source streamed into ``COPY into FROM STDIN`` on the target
    (SQLAlchemy connections on psycopg 3); no value is parsed in Python."""
    import psycopg

    src_pg = sconn.connection.driver_connection
    tgt_pg = tconn.connection.driver_connection
    copy_out = psycopg.ClientCursor(src_pg).mogrify(f"COPY ({select_sql}) TO STDOUT (FORMAT BINARY)", params)
    copy_in = f"COPY {into} ({columns}) FROM STDIN (FORMAT BINARY)"
    with as_sqlalchemy_error(copy_out), tgt_pg.cursor() as tcur:
        with tcur.copy(copy_in) as sink, closing(copy_out_blocks(src_pg, copy_out)) as blocks:
            for block in blocks:
                sink.write(block)
        return max(tcur.rowcount, 0)


@contextmanager
def copy_rows_into(tconn: Any, into: str, columns: str) -> Iterator[Callable[[tuple[Any, ...]], None]]:
    """Text COPY of Python rows (PostgreSQL parses each value); JSON values written as JSON text."""
    copy_in = f"COPY {into} ({columns}) FROM STDIN"
    pg = tconn.connection.driver_connection
    with as_sqlalchemy_error(copy_in), pg.cursor() as cur, cur.copy(copy_in) as sink:
        yield lambda row: sink.write_row([json.dumps(v) if isinstance(v, (dict, list)) else v for v in row])
