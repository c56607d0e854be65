"""Answering an ApprovalOperator from a background thread while dag.test() runs (AIRFLOW_NOTES §10)."""

from __future__ import annotations

import threading
import time
from datetime import datetime

ANSWER_TIMEOUT_S = 90.0  # how long the responder waits for the approval task before rejecting to end the run


def _preload_orm() -> None:
    """Required before the thread starts, or it deadlocks against dag.test()'s lazy imports (AIRFLOW_NOTES §10)."""
    from airflow.models import import_all_models
    from sqlalchemy.orm import configure_mappers

    import_all_models()
    configure_mappers()


class Responder(threading.Thread):
    """Answers ``task_id`` of ``dag_id`` with ``choice`` once it awaits input, as the REST endpoint does
    (HITLDetail fields, then ``handle_event_submit``). ``choice=None``: the task must never be asked; if it is, it
    is rejected (and recorded in ``answered``). Any other task of the DAG awaiting input is rejected too. If
    ``task_id`` is still unanswered after ``timeout`` seconds, it rejects whatever awaits input from then on (so
    dag.test() ends rather than hangs) and records ``timed_out``, which fails the test in ``finish()``.

    Race with dag.test(): the task parks itself in ``awaiting_input`` from inside ``_run_task``, which then writes
    the state it got back (``ti.set_state(taskrun_result.ti.state)``) onto the row. A response submitted between
    the two is overwritten and the run waits forever. So a task is answered only after it has been seen waiting
    for ``SETTLE_S``, and the resume is submitted again while it still waits (``submits`` counts them)."""

    SETTLE_S = 1.0
    RESUBMIT_S = 2.0

    def __init__(self, dag_id: str, task_id: str, choice: str | None, timeout: float = ANSWER_TIMEOUT_S):
        super().__init__(daemon=True, name=f"approval-responder-{dag_id}")
        self.dag_id, self.task_id, self.choice, self.timeout = dag_id, task_id, choice, timeout
        self.not_before: datetime | None = None
        self.stop = threading.Event()
        self.answered: list[tuple[str, str]] = []  # (task_id, option) recorded as the response
        self.submits = 0
        self.timed_out = False
        self.error: BaseException | None = None
        self._first_seen: dict[str, float] = {}
        self._last_submit: dict[str, float] = {}

    def start(self) -> None:
        from airflow.sdk import timezone

        _preload_orm()
        self.not_before = timezone.utcnow()
        super().start()

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        try:
            while not self.stop.is_set():
                answered = any(task_id == self.task_id for task_id, _ in self.answered)
                if self.choice is not None and not answered and not self.timed_out and time.monotonic() > deadline:
                    self.timed_out = True
                self._poll()
                self.stop.wait(0.2)
        except BaseException as exc:  # reported by finish(), never swallowed
            self.error = exc

    def _option_for(self, task_id: str) -> str:
        if task_id == self.task_id and self.choice is not None and not self.timed_out:
            return self.choice
        return "Reject"  # not expected to wait, or past the deadline: end the run

    def _poll(self) -> None:
        from airflow.models import DagRun
        from airflow.models import TaskInstance as TI
        from airflow.models.hitl import HITLDetail
        from airflow.models.trigger import handle_event_submit  # as in api_fastapi/.../routes/public/hitl.py
        from airflow.sdk import timezone
        from airflow.triggers.base import TriggerEvent
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState
        from sqlalchemy import select

        with create_session() as session:
            waiting = session.scalars(select(TI).join(TI.dag_run).where(
                TI.dag_id == self.dag_id, TI.state == TaskInstanceState.AWAITING_INPUT,
                DagRun.run_after >= self.not_before)).all()
            now = time.monotonic()
            for ti in waiting:
                key = str(ti.id)
                if now - self._first_seen.setdefault(key, now) < self.SETTLE_S:
                    continue
                if now - self._last_submit.get(key, float("-inf")) < self.RESUBMIT_S:
                    continue
                detail = session.get(HITLDetail, ti.id)
                if detail is None:
                    continue
                if detail.responded_at is None:
                    option = self._option_for(ti.task_id)
                    detail.chosen_options = [option]
                    detail.params_input = {}
                    detail.responded_by = {"id": "pytest", "name": "pytest"}
                    detail.responded_at = timezone.utcnow()
                    session.add(detail)
                    self.answered.append((ti.task_id, option))
                handle_event_submit(TriggerEvent(detail.as_resume_event_payload()), task_instance=ti,
                                    session=session)
                self._last_submit[key] = now
                self.submits += 1

    def finish(self) -> None:
        """After dag.test() returned: stop polling, and fail the test clearly on a timeout or an error."""
        self.stop.set()
        self.join(timeout=10)
        assert not self.is_alive(), "the approval responder thread did not stop"
        if self.error is not None:
            raise AssertionError(f"the approval responder failed: {self.error!r}") from self.error
        assert not self.timed_out, (
            f"{self.task_id} of {self.dag_id} was not awaiting input within {self.timeout:g} s; to end the run, "
            f"the responder answered {self.answered or 'nothing'}")
