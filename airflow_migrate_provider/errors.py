"""One error hierarchy for the whole provider.

Every error carries a message a user can act on: what failed, where, and what to do. The Airflow layer
decides from the type whether a failure is worth retrying (see ``operators.failures``).
"""

from __future__ import annotations

from dataclasses import dataclass


class MigrateError(Exception):
    """Root of every error raised by airflow-migrate-provider."""


def db_error_line(exc: BaseException) -> str:
    """The first line of a database error: the driver's own message (``exc.orig``) when there is one,
    without SQLAlchemy's SQL echo and background link."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass(frozen=True)
class PlanProblem:
    """One problem found in a plan file, located as precisely as the YAML allows."""

    path: str
    line: int
    column: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}: {self.message}"


class PlanError(MigrateError):
    """The plan file is not a valid migration plan. Carries *all* problems found, not just the first."""

    def __init__(self, problems: list[PlanProblem]):
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ChecksumMismatch(MigrateError):
    """A step that is applied in the target was edited in the plan afterwards."""

    def __init__(self, plan_id: str, step_id: str, applied: str, current: str, applied_by: str):
        self.plan_id, self.step_id = plan_id, step_id
        self.applied_checksum, self.current_checksum = applied, current
        super().__init__(
            f"step '{step_id}' of plan '{plan_id}' was applied by {applied_by} with checksum {applied[:12]}, "
            f"but its SQL in the plan now has checksum {current[:12]}. Applied steps must not be edited: "
            f"restore the step's original SQL and add a new step for the change, or revert the step first "
            f"(rollback) and then apply the edited version."
        )


class LockHeld(MigrateError):
    """Another run holds the migration lock for this plan and target."""

    def __init__(self, plan_id: str, holder: str, expires_at: str):
        self.plan_id, self.holder, self.expires_at = plan_id, holder, expires_at
        super().__init__(
            f"plan '{plan_id}' is locked by {holder} until {expires_at}; only one run at a time may migrate "
            f"a target. Wait for that run to finish, or if it died, for the lock to expire."
        )


class LockLost(MigrateError):
    """This run's lock expired or was taken over while it was working."""


class VerificationFailed(MigrateError):
    """A verify query did not return a truthy first column, or raised."""

    def __init__(self, step_id: str, query: str, detail: str):
        self.step_id, self.query, self.detail = step_id, query, detail
        super().__init__(f"verification of step '{step_id}' failed: {detail}\n  query: {query.strip()}")


class StepFailed(MigrateError):
    """A step's SQL raised in the database. ``transient`` says whether retrying can help."""

    def __init__(self, step_id: str, action: str, statement: str, cause: BaseException, transient: bool):
        self.step_id, self.action, self.statement, self.transient = step_id, action, statement, transient
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(
            f"{action} of step '{step_id}' failed: {first_line}\n  statement: {statement.strip()[:500]}"
        )


class RevertFailed(MigrateError):
    """Rolling back a step did not succeed; the target needs an operator's attention."""


class ConnectionUnavailable(MigrateError):
    """A database named by the plan cannot be reached (``transient``: retrying may help), or its
    connection id is not defined / not a database (not transient)."""

    def __init__(self, message: str, transient: bool = True):
        self.transient = transient
        super().__init__(message)


class PreflightFailed(MigrateError):
    """One or more preflight checklist items did not hold."""

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__("preflight failed:\n" + "\n".join(f"  - {f}" for f in failures))


class BackfillSpecError(MigrateError):
    """A backfill step does not fit the real source and target tables; found before any row is copied."""

    def __init__(self, step_id: str, problems: list[str]):
        self.step_id, self.problems = step_id, problems
        super().__init__(f"backfill step '{step_id}' cannot start (nothing was copied):\n"
                         + "\n".join(f"  - {p}" for p in problems))


class BackfillFailed(MigrateError):
    """A backfill phase stopped: throttled too long, lock held too long, counts differ, or a batch failed.
    ``transient`` says whether clearing/retrying the task can succeed as is."""

    def __init__(self, message: str, transient: bool = False):
        self.transient = transient
        super().__init__(message)


class BackupFailed(MigrateError):
    """A backup could not be made or verified; no step that changes data may run without it."""


class RestoreFailed(MigrateError):
    """Restoring tables from a backup failed, or the restored tables do not match the backup's manifest."""
