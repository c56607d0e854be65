"""``airflow-migrate unlock``: drop a dead run's lock by hand, recorded in the ledger.

A run that died keeps its lock until the lock expires (or until the next run sees at once that it is dead: its
process gone on the same host, its database session gone). ``unlock`` is the manual way out: it shows the holder,
refuses when the holder looks alive unless forced, and writes who unlocked, when, and the old holder to the
ledger history. The next migration run then inherits what the dead run applied, as after a takeover.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Callable
from typing import Any

from airflow_migrate_provider.core.ledger import HolderState, Ledger, as_utc, holder_state
from airflow_migrate_provider.errors import UnlockRefused


def unlocking_user() -> str:
    """user@host of whoever runs the command, for the ledger."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        user = "unknown-user"
    return f"{user}@{socket.gethostname()}"


def describe_holder(held: dict[str, Any], state: HolderState) -> str:
    """The holder, until when, and what is known of whether it is alive."""
    until = as_utc(held["expires_at"]).isoformat(timespec="seconds")
    known = state.describe() or "no task of that run is working right now; lock not expired"
    return f"{held['holder']} (lock until {until}; {known})"


def refuse_alive(plan_id: str, described: str, state: HolderState) -> None:
    """UnlockRefused when the holder is (or may be) alive."""
    if state.gone:
        return
    why = ("it is alive" if state.alive else
           "its lock has not expired and nothing tells whether it is alive (it may be between two tasks)")
    raise UnlockRefused(
        f"plan '{plan_id}' is locked by {described}: {why}, so it was not unlocked. Wait for that run to end, "
        f"or, if you know it is dead (its worker on another host is gone), run again with --force.")


def unlock_plan(ledger: Ledger, *, force: bool, confirm: Callable[[str], bool], by: str | None = None) -> str:
    """Drop the plan's lock after ``confirm(question)``; refuses a live holder unless ``force``. What was done."""
    held = ledger.lock_holder() if ledger.exists() else None
    if held is None:
        return f"plan '{ledger.plan_id}': the lock is free; nothing to unlock"
    state = holder_state(ledger.engine, held)
    described = describe_holder(held, state)
    if not force:
        refuse_alive(ledger.plan_id, described, state)
    if not confirm(f"Unlock plan '{ledger.plan_id}', locked by {described}?"):
        raise UnlockRefused(f"plan '{ledger.plan_id}': not unlocked (not confirmed); it is still locked by "
                            f"{described}")
    by = by or unlocking_user()
    ledger.unlock(by, held)
    return (f"plan '{ledger.plan_id}': unlocked by {by}; it was locked by {described}. Recorded in the ledger "
            f"history. The next run inherits what that run applied: if the next run fails, its rollback reverts "
            f"those steps too.")
