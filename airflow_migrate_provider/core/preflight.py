"""Preflight: the checklist items that can be checked mechanically, before anything changes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.context import RunContext
from airflow_migrate_provider.core.dialects import Dialect, dialect_of
from airflow_migrate_provider.core.kinds import kind_of
from airflow_migrate_provider.core.ledger import Lease, Ledger, RunIdentity
from airflow_migrate_provider.errors import ConnectionUnavailable, PreflightFailed, db_error_line
from airflow_migrate_provider.plan.model import Plan

log = logging.getLogger(__name__)


@dataclass
class PreflightReport:
    passed: list[str] = field(default_factory=list)
    lease: Lease | None = None


def check_reachable(engine: Engine, role: str, conn_id: str) -> None:
    """SELECT 1 on the database, or ConnectionUnavailable naming the connection id (never its URI)."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except sa_exc.SQLAlchemyError as exc:
        raise ConnectionUnavailable(
            f"the {role} database (Airflow connection '{conn_id}') is unreachable: "
            f"{db_error_line(exc)}. Check the connection's host, port and "
            f"credentials, and that the database server is running."
        ) from exc


def plan_checklist(plan: Plan) -> list[str]:
    """Checklist failures visible in the plan itself (the model enforces most; each kind double-checks)."""
    return [failure for step in plan.steps for failure in kind_of(step).checklist(step)]


def dialect_checklist(plan: Plan, dialect: Dialect) -> list[str]:
    """What each step's SQL means on the target's database: problems (returned) and notes (logged)."""
    failures = []
    for step in plan.steps:
        problems, notes = kind_of(step).dialect_checklist(step, dialect)
        failures += [message for _, message in problems]
        for _, note in notes:
            log.warning("preflight note: %s", note)
    return failures


def ledger_consistency(plan: Plan, ledger: Ledger) -> list[str]:
    """Applied steps whose declaration was edited in the plan afterwards (read-only kinds may be edited)."""
    failures = []
    applied = ledger.applied()
    for step in plan.steps:
        row, kind = applied.get(step.id), kind_of(step)
        if row is None or kind.read_only:
            continue
        checksum = kind.checksum(step)
        if row.checksum != checksum:
            failures.append(
                f"step '{step.id}' was applied by {row.by} but its SQL has been edited since (checksum "
                f"{row.checksum[:12]} in the ledger, {checksum[:12]} in the plan): restore the "
                f"original SQL and add a new step, or revert it first"
            )
    return failures


def run_preflight(plan: Plan, target: Engine, ledger: Ledger, who: RunIdentity,
                  source: Engine | None = None, target_conn_id: str | None = None) -> PreflightReport:
    """Check everything that can be checked before the first change; take the run lock.

    Raises ConnectionUnavailable or LockHeld at once (nothing else is meaningful then), otherwise
    PreflightFailed listing every checklist item that does not hold.
    """
    report = PreflightReport()
    check_reachable(target, "target", target_conn_id or plan.connections.target)
    if source is not None and plan.connections.separate_source:
        check_reachable(source, "source", plan.connections.separate_source)
    report.passed.append("connections reachable")

    failures = plan_checklist(plan)
    if not failures:
        report.passed.append("every reversible step has a down; every step has a verify")
    on_target = dialect_checklist(plan, dialect_of(target))
    failures += on_target
    if not on_target:
        report.passed.append("every statement can be resumed after a crash")

    ledger.ensure()
    report.lease = ledger.acquire_lock(who, plan.lock_ttl_seconds)  # LockHeld: fail fast, naming the holder
    how = ("re-entered" if report.lease.reentered else
           f"taken over from {report.lease.took_over_from}" if report.lease.took_over_from else "acquired")
    report.passed.append(f"run lock {how} until {report.lease.expires_at.isoformat(timespec='seconds')}")

    edited = ledger_consistency(plan, ledger)
    failures += edited
    if not edited:
        report.passed.append("ledger consistent with the plan (no applied step was edited)")
    if failures:
        ledger.release_lock(who)  # nothing will run: don't make the next attempt wait for the lock
        raise PreflightFailed(failures)
    for item in report.passed:
        log.info("preflight ok: %s", item)
    return report


def before_run(plan: Plan, ctx: RunContext) -> list[str]:
    """Each step kind's preflight hook (a health gate's baseline, say), once the lock is held: what was done."""
    done = []
    for step in plan.steps:
        item = kind_of(step).before_run(ctx, step)
        if item is not None and item not in done:
            done.append(item)
    return done
