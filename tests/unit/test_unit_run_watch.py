"""run_watch without a DAG: signals reach the watcher whatever handler Airflow installs, a stopping run's tasks
refuse to start, and a lock refusal is recorded where `airflow-migrate run` looks for it."""

from __future__ import annotations

import os
import signal

import pytest

from airflow_migrate_provider.run_watch import (
    STOP,
    SignalWatch,
    lock_refusal,
    record_lock_refusal,
    refuse_when_stopping,
)

pytestmark = pytest.mark.timeout(30)


def test_a_signal_is_reported_even_after_another_handler_replaced_ours():
    previous = signal.getsignal(signal.SIGTERM)
    with SignalWatch() as watch:
        replaced: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, frame: replaced.append(signum))  # as each Airflow task does
        os.kill(os.getpid(), signal.SIGTERM)

        assert watch.poll(2.0) == [signal.SIGTERM]
        assert replaced == [signal.SIGTERM]
        assert watch.poll(0.05) == []  # reported once
    assert signal.getsignal(signal.SIGTERM) is previous  # handlers restored on exit


def test_sigint_is_reported_and_does_not_raise_keyboard_interrupt():
    with SignalWatch() as watch:
        os.kill(os.getpid(), signal.SIGINT)
        assert watch.poll(2.0) == [signal.SIGINT]


def test_tasks_refuse_to_start_only_while_the_run_stops():
    from airflow.sdk.exceptions import AirflowFailException

    STOP.clear()
    refuse_when_stopping("steps.a")  # not stopping: nothing happens
    STOP.set()
    try:
        with pytest.raises(AirflowFailException, match=r"task steps\.b did not start"):
            refuse_when_stopping("steps.b")
    finally:
        STOP.clear()


def test_a_lock_refusal_is_read_back_for_its_run_only(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_MIGRATE_REPORTS", str(tmp_path))

    record_lock_refusal("plan_a", "manual__1", "dag 'x' run 'y' try 1", "2030-01-01T00:00:00+00:00")

    assert lock_refusal("plan_a", "manual__1") == {"holder": "dag 'x' run 'y' try 1",
                                                  "expires_at": "2030-01-01T00:00:00+00:00"}
    assert lock_refusal("plan_a", "manual__2") is None
