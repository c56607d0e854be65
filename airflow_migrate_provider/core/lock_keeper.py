"""Keeps a run's lock alive while a long task works, so only a dead run's lock ever expires."""

from __future__ import annotations

import logging
import os
import socket
import threading
from types import TracebackType

from airflow_migrate_provider.core.dialects import dialect_of
from airflow_migrate_provider.core.ledger import Lease, Ledger
from airflow_migrate_provider.errors import LockLost, MigrateError

log = logging.getLogger(__name__)


class LockKeeper:
    """Renews ``lease`` every ttl/3 seconds in a background thread until the block exits.

    Work calls :meth:`check` before committing anything: if a renewal found the lock gone, the work
    stops instead of racing another run.

    While the block runs, the lock row names this process (host, pid) and a database session held open for the
    block: if the process dies, another run sees it at once and takes over without waiting for the expiry. On a
    normal exit the row stops naming them (between tasks only the expiry tells whether the run is alive).
    """

    def __init__(self, ledger: Ledger, lease: Lease, ttl_seconds: int):
        self.ledger, self.lease, self.ttl = ledger, lease, ttl_seconds
        self.interval = max(1.0, ttl_seconds / 3)
        self._stop = threading.Event()
        self._lost: LockLost | None = None
        self._thread = threading.Thread(target=self._renew_loop, name="migrate-lock-keeper", daemon=True)

    def __enter__(self) -> LockKeeper:
        self._presence = dialect_of(self.ledger.engine).working_session(self.ledger.engine,
                                                                       self.ledger.presence_name)
        backend = self._presence.__enter__()
        try:
            self.ledger.mark_working(self.lease, socket.gethostname(), os.getpid(), backend)
        except BaseException:
            self._presence.__exit__(None, None, None)
            raise
        self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval + 5)
        try:
            self.ledger.mark_idle(self.lease)
        except Exception as error:  # the expiry still frees the lock; never hide the block's own error
            log.warning("Could not record that this task stopped working for the lock (it expires anyway): %s",
                        error)
        finally:
            self._presence.__exit__(exc_type, exc, tb)

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.lease = self.ledger.renew_lock(self.lease, self.ttl)
            except LockLost as exc:
                self._lost = exc
                log.error("%s", exc)
                return
            except (MigrateError, Exception) as exc:  # a failed renewal is retried next interval
                log.warning("Could not renew the migration lock (will retry): %s", exc)

    def check(self) -> None:
        """Raise LockLost if the lock was lost since the work began."""
        if self._lost is not None:
            raise self._lost
