"""PostgreSQL COPY between two psycopg 3 connections, with no per-row Python beyond one libpq call.

psycopg's ``Copy`` iterator costs about five Python calls per row; reading ``COPY ... TO STDOUT`` straight
from libpq (one ``get_copy_data`` per row) and writing ~128 KiB blocks (psycopg's own write size) halves
the copy process's CPU, which on a small machine is CPU the two database servers get back.
"""

from __future__ import annotations

from collections.abc import Iterator
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
