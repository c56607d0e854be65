"""Watching a local run (``dag.test()``, as ``airflow-migrate run``/``demo`` do) from beside it.

``dag.test()`` has no scheduler, so two things a deployment gets for free are missing (AIRFLOW_NOTES §10):

- **Approval timeouts.** An ``ApprovalOperator`` parks its task in ``awaiting_input``; only the scheduler's sweep
  (``SchedulerJobRunner.check_awaiting_input_timeouts``) ends a wait that ran past the plan's
  ``approval.timeout_hours``. The watcher runs that sweep once one of the run's approvals is past its deadline:
  the approval task fails (``HITLTimeoutError``) and the run rolls back.
- **SIGTERM / SIGINT.** Each task run in-process installs Airflow's own SIGTERM handler (which calls the last
  task's ``on_kill`` and nothing else), so a signal used to leave ``dag.test()`` waiting forever. The watcher
  learns about signals through :func:`signal.set_wakeup_fd`, which keeps reporting them whatever Python handler
  is installed. On the first signal the run is stopped: :data:`STOP` is set (every migration task that has not
  started refuses to start, so the phase fails and the rollback teardown reverts what the run applied, then the
  outcome task releases the run lock) and an approval the run waits for is rejected. A task already running
  finishes first. A second signal (:data:`SAME_REQUEST_S` or more after the first) ends the process at once
  (exit 128 + signal), leaving the lock to expire or to ``airflow-migrate unlock``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from types import FrameType, SimpleNamespace
from typing import Any

log = logging.getLogger(__name__)

STOP = threading.Event()
"""Set while a local run in this process is being stopped: migration tasks refuse to start (``operators.base``)."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SETTLE_S = 1.0  # an answer submitted the instant a task parks is overwritten by dag.test() (AIRFLOW_NOTES §10)
RESUBMIT_S = 2.0  # so re-submit while the task still waits
POLL_S = 0.5
SAME_REQUEST_S = 2.0  # a signal repeated sooner than this after the first is the same request to stop
WATCHER = {"id": "airflow-migrate", "name": "airflow-migrate run (stopped by a signal)"}


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class SignalWatch:
    """Reports SIGTERM/SIGINT to another thread, whatever handler Airflow installs meanwhile (see the module
    doc). Active only when entered on the main thread (the only one that may set signal handlers)."""

    def __init__(self) -> None:
        self._reader: socket.socket | None = None
        self._writer: socket.socket | None = None
        self._previous: dict[int, Any] = {}
        self._previous_fd = -1

    def __enter__(self) -> SignalWatch:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._reader, self._writer = socket.socketpair()
        self._reader.setblocking(False)
        self._writer.setblocking(False)
        self._previous = {signum: signal.signal(signum, _noted) for signum in STOP_SIGNALS}
        self._previous_fd = signal.set_wakeup_fd(self._writer.fileno(), warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._reader is None or self._writer is None:
            return
        signal.set_wakeup_fd(self._previous_fd)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._reader.close()
        self._writer.close()

    def poll(self, timeout: float) -> list[int]:
        """The stop signals received since the last poll, waiting up to ``timeout`` seconds for one."""
        if self._reader is None:
            time.sleep(timeout)
            return []
        import select

        readable, _, _ = select.select([self._reader], [], [], timeout)
        if not readable:
            return []
        try:
            data = self._reader.recv(512)
        except (BlockingIOError, OSError):
            return []
        return [signum for signum in data if signum in STOP_SIGNALS]


def _noted(signum: int, frame: FrameType | None) -> None:
    """Our handler while nobody replaced it: the signal was written to the wakeup fd; the watcher acts."""


@dataclass
class WatchReport:
    """What the watcher did during the run."""

    timed_out: dict[str, float] = field(default_factory=dict)  # approval task id -> its timeout in hours
    interrupted: int | None = None  # the signal that stopped the run


class RunWatcher(threading.Thread):
    """Applies approval timeouts and stops the run on a signal while ``dag.test()`` runs ``dag_id``."""

    def __init__(self, dag_id: str, signals: SignalWatch, notify: Callable[[str], None],
                 timeout_hours: Callable[[str], float | None]):
        super().__init__(daemon=True, name=f"airflow-migrate-watch-{dag_id}")
        self.dag_id, self.signals, self.notify, self.timeout_hours = dag_id, signals, notify, timeout_hours
        self.report = WatchReport()
        self.finished = threading.Event()
        self.error: Exception | None = None  # the last error of a tick (logged once per kind)
        self._airflow: SimpleNamespace | None = None
        self._not_before: datetime | None = None
        self._first_seen: dict[str, float] = {}
        self._last_submit: dict[str, float] = {}
        self._stopping_since = 0.0

    def start(self) -> None:
        """Import on this (main) thread what the watcher needs: a thread importing Airflow's models while
        dag.test() imports them too deadlocks (AIRFLOW_NOTES §10)."""
        self._airflow = _airflow_api()
        self._not_before = self._airflow.timezone.utcnow()
        super().start()

    def run(self) -> None:
        while not self.finished.is_set():
            for signum in self.signals.poll(POLL_S):
                self._on_signal(signum)
            try:
                self._tick()
            except Exception as exc:  # e.g. SQLite busy while dag.test() writes: try again next tick
                if repr(exc) != repr(self.error):
                    log.warning("watching the run's approvals: %r (trying again)", exc)
                self.error = exc

    def _on_signal(self, signum: int) -> None:
        now = time.monotonic()
        if self.report.interrupted is not None and now - self._stopping_since < SAME_REQUEST_S:
            return  # the same request (e.g. `timeout` signals the process and then its group)
        if self.report.interrupted is not None:
            self.notify(f"{signal_name(signum)} again: stopping at once, without waiting for the rollback; the "
                        f"run lock stays until it expires (or `airflow-migrate unlock`)")
            os._exit(128 + signum)
        self.report.interrupted, self._stopping_since = signum, now
        STOP.set()
        self.notify(f"{signal_name(signum)} received: stopping the run; what it applied is rolled back and its "
                    f"lock released (send {signal_name(signum)} again to stop at once)")

    def _tick(self) -> None:
        api = self._airflow
        assert api is not None
        with api.create_session() as session:
            waiting = session.scalars(api.select(api.TI).join(api.TI.dag_run).where(
                api.TI.dag_id == self.dag_id, api.TI.state == api.AWAITING_INPUT,
                api.DagRun.run_after >= self._not_before)).all()
            now = time.monotonic()
            for ti in waiting:
                if self._settled(ti, now):
                    self._handle_waiting(session, ti, now)

    def _settled(self, ti: Any, now: float) -> bool:
        key = str(ti.id)
        if key not in self._first_seen:
            self._first_seen[key] = now
            hours = self.timeout_hours(ti.task_id)
            deadline = f"no answer within {hours:g} h fails the run and rolls back" if hours else "no timeout"
            self.notify(f"waiting for approval of {ti.task_id} ({deadline}); SIGTERM or Ctrl-C stops the run and "
                        f"rolls back")
        return now - self._first_seen[key] >= SETTLE_S

    def _handle_waiting(self, session: Any, ti: Any, now: float) -> None:
        key = str(ti.id)
        if now - self._last_submit.get(key, float("-inf")) < RESUBMIT_S:
            return
        if self.report.interrupted is not None:
            self._reject(session, ti)
        elif ti.trigger_timeout is not None and ti.trigger_timeout < self._airflow.timezone.utcnow():
            self.report.timed_out.setdefault(ti.task_id, self.timeout_hours(ti.task_id) or 0.0)
            session.commit()  # the sweep opens its own session and locks the row
            self._airflow.sweep(SimpleNamespace(log=log))
        else:
            return
        self._last_submit[key] = now

    def _reject(self, session: Any, ti: Any) -> None:
        """Answer Reject for the stopped run, as the REST endpoint records an answer (the task then fails:
        ``fail_on_reject``)."""
        api = self._airflow
        detail = session.get(api.HITLDetail, ti.id)
        if detail is None:
            return
        if detail.responded_at is None:
            detail.chosen_options = ["Reject"]
            detail.params_input = {}
            detail.responded_by = WATCHER
            detail.responded_at = api.timezone.utcnow()
            session.add(detail)
        api.handle_event_submit(api.TriggerEvent(detail.as_resume_event_payload()), task_instance=ti,
                                session=session)


def _airflow_api() -> SimpleNamespace:
    """What the watcher uses of Airflow, imported (and the ORM mappers configured) on the calling thread."""
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models import DagRun, import_all_models
    from airflow.models import TaskInstance as TI
    from airflow.models.hitl import HITLDetail
    from airflow.models.trigger import handle_event_submit  # as the REST endpoint (core_api .../public/hitl.py)
    from airflow.sdk import timezone
    from airflow.triggers.base import TriggerEvent
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select
    from sqlalchemy.orm import configure_mappers

    import_all_models()
    configure_mappers()
    return SimpleNamespace(
        sweep=SchedulerJobRunner.check_awaiting_input_timeouts, DagRun=DagRun, TI=TI, HITLDetail=HITLDetail,
        handle_event_submit=handle_event_submit, timezone=timezone, TriggerEvent=TriggerEvent,
        create_session=create_session, AWAITING_INPUT=TaskInstanceState.AWAITING_INPUT, select=select)


@contextmanager
def watching_run(dag: Any, notify: Callable[[str], None]) -> Iterator[WatchReport]:
    """While ``dag`` runs through dag.test() in this block: approval timeouts applied, SIGTERM/SIGINT stop the
    run (see the module doc). Yields the report, filled in as the run goes."""
    STOP.clear()
    with SignalWatch() as signals:
        watcher = RunWatcher(dag.dag_id, signals, notify, lambda task_id: _timeout_hours(dag, task_id))
        watcher.start()
        try:
            yield watcher.report
        finally:
            watcher.finished.set()
            watcher.join(timeout=10)
            STOP.clear()


def _timeout_hours(dag: Any, task_id: str) -> float | None:
    task = dag.task_dict.get(task_id)
    timeout = getattr(task, "response_timeout", None)
    return timeout.total_seconds() / 3600 if timeout is not None else None


def refuse_when_stopping(task_id: str) -> None:
    """In a migration task about to start: refuse while the local run is being stopped (:data:`STOP`)."""
    if STOP.is_set():
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"the local run was stopped (SIGTERM/SIGINT): task {task_id} did not start; "
                                   f"the rollback reverts what the run applied")


LOCK_REFUSAL_FILE = "refused_by_lock.json"  # in the run's report dir (core.context.report_dir)


def record_lock_refusal(dag_id: str, run_id: str, holder: str, expires_at: str) -> None:
    """Preflight found the plan locked by another run: note it beside the run's reports, so ``airflow-migrate
    run`` can tell a refused run from a failed migration."""
    import json

    from airflow_migrate_provider.core.context import report_dir

    path = report_dir(dag_id, run_id) / LOCK_REFUSAL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"holder": holder, "expires_at": expires_at}), encoding="utf-8")


def lock_refusal(dag_id: str, run_id: str) -> dict[str, str] | None:
    """{holder, expires_at} when the run's preflight was refused the plan's lock, else None."""
    import json

    from airflow_migrate_provider.core.context import report_dir

    path = report_dir(dag_id, run_id) / LOCK_REFUSAL_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
