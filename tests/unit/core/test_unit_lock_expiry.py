"""The run lock in a real SQLite file: who holds it, re-entry, expiry and take-over, renewal, release.

Time is moved by replacing ``ledger.utcnow``; nothing sleeps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core import ledger as ledger_module
from airflow_migrate_provider.core.dialects import dialect_for
from airflow_migrate_provider.core.ledger import Ledger, RunIdentity, as_utc
from airflow_migrate_provider.errors import LockHeld, LockLost

TTL = 120
RUN_A = RunIdentity("migrate_users", "manual__run_a", 1, host="worker-1", pid=101)
RUN_B = RunIdentity("migrate_users", "scheduled__run_b", 1, host="worker-2", pid=202)


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2030, 1, 1, 12, 0, 0, tzinfo=timezone.utc)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(ledger_module, "utcnow", fake)
    return fake


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    eng = create_engine(f"sqlite:///{tmp_path / 'target.sqlite'}")
    dialect_for(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def ledger(engine: Engine) -> Ledger:
    led = Ledger(engine, "p")
    led.ensure()
    return led


def holder_run(ledger: Ledger) -> str | None:
    held = ledger.lock_holder()
    return held["holder_run"] if held else None


def test_ensure_creates_the_tables_and_is_idempotent(engine: Engine) -> None:
    led = Ledger(engine, "p")
    assert not led.exists()
    led.ensure()
    led.ensure()
    assert led.exists()
    assert led.lock_holder() is None


def test_first_acquire_takes_the_lock(ledger: Ledger, clock: Clock) -> None:
    lease = ledger.acquire_lock(RUN_A, TTL)
    assert lease.owner == RUN_A
    assert lease.plan_id == "p"
    assert lease.reentered is False
    assert lease.took_over_from is None
    assert lease.expires_at == clock.now + timedelta(seconds=TTL)
    held = ledger.lock_holder()
    assert held is not None
    assert held["holder_run"] == "migrate_users/manual__run_a"
    assert held["holder"] == RUN_A.describe()
    assert as_utc(held["expires_at"]) == lease.expires_at


def test_other_run_is_refused_while_the_lock_is_live(ledger: Ledger, clock: Clock) -> None:
    lease = ledger.acquire_lock(RUN_A, TTL)
    clock.advance(TTL - 1)
    with pytest.raises(LockHeld) as exc:
        ledger.acquire_lock(RUN_B, TTL)
    message = str(exc.value)
    assert "dag 'migrate_users' run 'manual__run_a' try 1 on worker-1 pid 101" in message
    assert lease.expires_at.isoformat() in message
    assert exc.value.plan_id == "p"
    assert holder_run(ledger) == "migrate_users/manual__run_a"  # unchanged


def test_same_run_reenters_on_a_new_try(ledger: Ledger, clock: Clock) -> None:
    first = ledger.acquire_lock(RUN_A, TTL)
    clock.advance(10)
    retry = RunIdentity(RUN_A.dag_id, RUN_A.run_id, try_number=2, host="worker-3", pid=303)
    lease = ledger.acquire_lock(retry, TTL)
    assert lease.reentered is True
    assert lease.took_over_from is None
    assert lease.token != first.token
    assert lease.expires_at == clock.now + timedelta(seconds=TTL)
    held = ledger.lock_holder()
    assert held is not None
    assert held["holder"] == retry.describe()
    # the acquisition time is that of the run, not of the retry
    assert as_utc(held["acquired_at"]) == first.expires_at - timedelta(seconds=TTL)


def test_reentry_invalidates_the_previous_try_lease(ledger: Ledger, clock: Clock) -> None:
    first = ledger.acquire_lock(RUN_A, TTL)
    ledger.acquire_lock(RunIdentity(RUN_A.dag_id, RUN_A.run_id, try_number=2), TTL)
    with pytest.raises(LockLost):
        ledger.renew_lock(first, TTL)


def test_expired_lock_is_taken_over_with_a_warning(
    ledger: Ledger, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    ledger.acquire_lock(RUN_A, TTL)
    clock.advance(TTL + 1)
    with caplog.at_level(logging.WARNING, logger=ledger_module.__name__):
        lease = ledger.acquire_lock(RUN_B, TTL)
    assert lease.took_over_from == RUN_A.describe()
    assert lease.reentered is False
    assert holder_run(ledger) == "migrate_users/scheduled__run_b"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    text = warnings[0].getMessage()
    assert "Took over the expired lock of plan 'p'" in text
    assert "run 'manual__run_a'" in text


def test_lock_expires_exactly_at_its_expiry_time(ledger: Ledger, clock: Clock) -> None:
    ledger.acquire_lock(RUN_A, TTL)
    clock.advance(TTL)
    assert ledger.acquire_lock(RUN_B, TTL).took_over_from == RUN_A.describe()


def test_taken_over_run_loses_its_lock_on_renewal(ledger: Ledger, clock: Clock) -> None:
    lease_a = ledger.acquire_lock(RUN_A, TTL)
    clock.advance(TTL + 1)
    ledger.acquire_lock(RUN_B, TTL)
    with pytest.raises(LockLost) as exc:
        ledger.renew_lock(lease_a, TTL)
    assert "plan 'p'" in str(exc.value)
    assert "run 'manual__run_a'" in str(exc.value)
    assert holder_run(ledger) == "migrate_users/scheduled__run_b"


def test_renewal_keeps_the_lock_alive(ledger: Ledger, clock: Clock) -> None:
    lease = ledger.acquire_lock(RUN_A, TTL)
    for _ in range(3):
        clock.advance(TTL - 10)
        lease = ledger.renew_lock(lease, TTL)
        assert lease.expires_at == clock.now + timedelta(seconds=TTL)
    clock.advance(TTL - 1)  # long past the first expiry, but within the renewed one
    with pytest.raises(LockHeld):
        ledger.acquire_lock(RUN_B, TTL)


def test_renewal_of_an_expired_but_untaken_lock_succeeds(ledger: Ledger, clock: Clock) -> None:
    lease = ledger.acquire_lock(RUN_A, TTL)
    clock.advance(TTL + 5)
    renewed = ledger.renew_lock(lease, TTL)
    assert renewed.expires_at == clock.now + timedelta(seconds=TTL)
    with pytest.raises(LockHeld):
        ledger.acquire_lock(RUN_B, TTL)


def test_release_by_a_non_holder_changes_nothing(ledger: Ledger, clock: Clock) -> None:
    ledger.acquire_lock(RUN_A, TTL)
    assert ledger.release_lock(RUN_B) is False
    assert holder_run(ledger) == "migrate_users/manual__run_a"
    with pytest.raises(LockHeld):
        ledger.acquire_lock(RUN_B, TTL)


def test_release_by_the_holder_frees_the_lock(ledger: Ledger, clock: Clock) -> None:
    ledger.acquire_lock(RUN_A, TTL)
    assert ledger.release_lock(RUN_A) is True
    assert ledger.lock_holder() is None
    assert ledger.release_lock(RUN_A) is False  # nothing left to release
    lease = ledger.acquire_lock(RUN_B, TTL)
    assert lease.took_over_from is None
    assert lease.reentered is False


def test_release_by_another_try_of_the_same_run(ledger: Ledger, clock: Clock) -> None:
    ledger.acquire_lock(RUN_A, TTL)
    assert ledger.release_lock(RunIdentity(RUN_A.dag_id, RUN_A.run_id, try_number=3)) is True
    assert ledger.lock_holder() is None


def test_locks_of_different_plans_are_independent(engine: Engine, ledger: Ledger, clock: Clock) -> None:
    other = Ledger(engine, "q")
    ledger.acquire_lock(RUN_A, TTL)
    lease = other.acquire_lock(RUN_B, TTL)
    assert lease.plan_id == "q"
    assert holder_run(ledger) == "migrate_users/manual__run_a"
    assert holder_run(other) == "migrate_users/scheduled__run_b"


def test_lock_is_shared_between_engines_on_the_same_file(tmp_path: Path, clock: Clock) -> None:
    url = f"sqlite:///{tmp_path / 'shared.sqlite'}"
    engines = [create_engine(url), create_engine(url)]
    try:
        for eng in engines:
            dialect_for(eng)
        first, second = Ledger(engines[0], "p"), Ledger(engines[1], "p")
        first.ensure()
        first.acquire_lock(RUN_A, TTL)
        with pytest.raises(LockHeld):
            second.acquire_lock(RUN_B, TTL)
    finally:
        for eng in engines:
            eng.dispose()


def test_as_utc() -> None:
    naive = datetime(2030, 1, 1, 12, 0)
    assert as_utc(naive) == datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
    aware = datetime(2030, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    assert as_utc(aware) is aware


def test_run_identity_describe_and_key() -> None:
    assert RUN_A.run_key == "migrate_users/manual__run_a"
    assert RUN_A.describe() == "dag 'migrate_users' run 'manual__run_a' try 1 on worker-1 pid 101"
    assert RunIdentity("d", "r", 2).describe() == "dag 'd' run 'r' try 2"
