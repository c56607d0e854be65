"""One error hierarchy for the whole provider, and the one place that decides what is worth retrying.

Every error carries a message a user can act on: what failed, where, and what to do. Every error class
derives from :class:`MigrateError`; whether retrying the same work can succeed is a property of the *class*
(``transient``, a class attribute), never of an instance:

- ``transient = False`` (the default): a failed verification, a checksum mismatch, a plan error, SQL the
  database rejects. Retrying cannot help; the Airflow task fails at once and the run goes to rollback.
- ``transient = True``: classes deriving from :class:`TransientError` — a lost connection, a lock
  timeout, a deadlock. Airflow retries the task (DESIGN rule 11).

Failures whose transience is known only when they happen (a database error) come in two classes, e.g.
:class:`StepFailed` and :class:`TransientStepFailed`. Build them with the ``from_db_error`` classmethod,
which asks the dialect (``dialect.is_transient(exc)``); the older call forms with a ``transient`` argument
(``StepFailed(step_id, action, statement, exc, True)``) still work and build the transient class.

:func:`should_retry` maps any exception to retry / no retry; the Airflow layer uses only it.

Control flow is not an error: :class:`ControlFlow` (e.g. :class:`ThrottleDeferral`, "free the worker slot
and come back later") is a separate root, so ``except MigrateError`` never swallows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from sqlalchemy import exc as sa_exc

if TYPE_CHECKING:
    from airflow_migrate_provider.plan.model import ThrottleRule

E = TypeVar("E", bound="MigrateError")


class TransientClassifier(Protocol):
    """What classifies a database error as transient: a dialect (``core.dialects``)."""

    def is_transient(self, exc: BaseException) -> bool: ...


def db_error_line(exc: BaseException) -> str:
    """The first line of a database error: the driver's own message (``exc.orig``) when there is one,
    without SQLAlchemy's SQL echo and background link."""
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ---------------------------------------------------------------------------------------------- roots


class MigrateError(Exception):
    """Root of every error raised by airflow-migrate-provider. ``transient`` (a class attribute) says
    whether retrying the same work later can succeed; see :func:`should_retry`."""

    transient: ClassVar[bool] = False


class TransientError(MigrateError):
    """Base (mixin) of every error that retrying can cure: connection lost, lock timeout, deadlock. A
    transient class derives from it and from the error it is a variant of (``TransientStepFailed``)."""

    transient: ClassVar[bool] = True


def _variant(cls: type[E], transient_cls: type[E], transient: bool | None) -> type[E]:
    """The class a constructor given ``transient`` builds: ``cls`` when None or when ``cls`` already is what
    was asked for, else the transient variant (a subclass of ``cls``)."""
    if transient is None or bool(transient) == cls.transient:
        return cls
    if transient and issubclass(transient_cls, cls):
        return transient_cls
    raise TypeError(f"{cls.__name__}(..., transient={transient!r}) is contradictory: whether an error is "
                    f"transient is its class; build {transient_cls.__name__} or its base class instead")


class ControlFlow(Exception):
    """Root of exceptions used for control flow, not failure: the engine asks its caller to do something
    (e.g. defer the task). Deliberately *not* a :class:`MigrateError`, so ``except MigrateError`` does not
    swallow it and :func:`should_retry` never sees it as a failure; only the caller that asked for it
    (``can_defer=True``) catches it."""


class ThrottleDeferral(ControlFlow):
    """A throttle pause has lasted ``defer_after_seconds``: under Airflow, free the worker slot until the
    metric is back under its max (raised only when the caller said it can defer)."""

    def __init__(self, rule: ThrottleRule, value: float, paused_s: float):
        self.rule, self.value, self.paused_s = rule, value, paused_s
        super().__init__(f"throttle '{rule.name}' still at {value:g} (max {rule.max:g}) after pausing "
                         f"{paused_s:.0f} s: deferring")


# ---------------------------------------------------------------------------------------------- plan


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


class PlanImportError(MigrateError):
    """Raised while Airflow parses a plan's DAG file for a broken plan (or a shim without its plan), so
    Airflow shows it as that file's import error, with every problem."""


# ---------------------------------------------------------------------------------------------- ledger, lock


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
    """Another run holds the migration lock for this plan and target (fail fast: DESIGN rule 4)."""

    def __init__(self, plan_id: str, holder: str, expires_at: str):
        self.plan_id, self.holder, self.expires_at = plan_id, holder, expires_at
        super().__init__(
            f"plan '{plan_id}' is locked by {holder} until {expires_at}; only one run at a time may migrate "
            f"a target. Wait for that run to finish. If it died, the next run takes the lock over as soon as it "
            f"sees that (its process gone on this host, its database session gone, or the lock expired), or drop "
            f"the lock with `airflow-migrate unlock PLAN --conn ...`."
        )


class LockLost(MigrateError):
    """This run's lock expired or was taken over while it was working."""


class RunRefused(MigrateError):
    """``airflow-migrate run`` did not start the migration because another run holds the plan's lock. Not a
    failed migration: nothing was applied, and the CLI exits with its own code (``exit_code``)."""

    exit_code: ClassVar[int] = 3

    def __init__(self, plan_id: str, holder: str, expires_at: str, plan_path: str):
        self.plan_id, self.holder, self.expires_at = plan_id, holder, expires_at
        super().__init__(
            f"refused: plan '{plan_id}' is locked by {holder} (the lock expires at {expires_at}); nothing was run. "
            f"Wait for that run to finish, or if it died, run `airflow-migrate unlock {plan_path} --conn ...` "
            f"(or wait until the lock expires), then run again."
        )


class AirflowHomeRefused(MigrateError):
    """``--airflow-home`` names a directory this command did not create: resetting its metadata DB could wipe
    a real Airflow deployment's. A usage error (``exit_code`` 2)."""

    exit_code: ClassVar[int] = 2


# ---------------------------------------------------------------------------------------------- steps


class VerificationFailed(MigrateError):
    """A verify query did not return a truthy first column, or raised."""

    def __init__(self, step_id: str, query: str, detail: str):
        self.step_id, self.query, self.detail = step_id, query, detail
        super().__init__(f"verification of step '{step_id}' failed: {detail}\n  query: {query.strip()}")


class StepFailed(MigrateError):
    """A step's SQL raised in the database and retrying cannot help (the database rejected it).

    Build it with :meth:`from_db_error`, which picks :class:`TransientStepFailed` when the dialect says
    the error is transient. ``StepFailed(step_id, action, statement, cause, transient)`` also still works.
    """

    def __new__(cls, step_id: str, action: str, statement: str, cause: BaseException,
                transient: bool | None = None) -> StepFailed:
        return super().__new__(_variant(cls, TransientStepFailed, transient))

    def __init__(self, step_id: str, action: str, statement: str, cause: BaseException,
                 transient: bool | None = None):
        self.step_id, self.action, self.statement = step_id, action, statement
        first_line = str(cause).strip().splitlines()[0] if str(cause).strip() else type(cause).__name__
        super().__init__(
            f"{action} of step '{step_id}' failed: {first_line}\n  statement: {statement.strip()[:500]}"
        )

    @classmethod
    def from_db_error(cls, dialect: TransientClassifier, step_id: str, action: str, statement: str,
                      cause: BaseException) -> StepFailed:
        """``StepFailed`` or ``TransientStepFailed``, as ``dialect.is_transient(cause)`` says."""
        return cls(step_id, action, statement, cause, dialect.is_transient(cause))


class TransientStepFailed(StepFailed, TransientError):
    """A step's SQL failed for a reason retrying can cure (connection lost, lock timeout, deadlock)."""


class RevertFailed(MigrateError):
    """Rolling back a step did not succeed; the target needs an operator's attention."""


class PreflightFailed(MigrateError):
    """One or more preflight checklist items did not hold."""

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__("preflight failed:\n" + "\n".join(f"  - {f}" for f in failures))


# ---------------------------------------------------------------------------------------------- connections


class ConnectionUnavailable(MigrateError):
    """A connection named by the plan is not usable as configured: its connection id is not defined, or it
    is not a database. Retrying cannot help; fix the connection.

    Its transient variant :class:`TransientConnectionUnavailable` is for a database that cannot be reached
    now. Note the older call form's default: ``ConnectionUnavailable(message)`` builds the *transient*
    variant (as before); pass ``transient=False``, or name the class you mean.
    """

    def __new__(cls, message: str, transient: bool | None = True) -> ConnectionUnavailable:
        return super().__new__(_variant(cls, TransientConnectionUnavailable, transient))

    def __init__(self, message: str, transient: bool | None = True):
        super().__init__(message)


class TransientConnectionUnavailable(ConnectionUnavailable, TransientError):
    """A database named by the plan cannot be reached now; retrying may succeed."""


class UnknownStepKind(MigrateError):
    """A step or a ledger row names a step kind nothing registered (a row written by a newer provider version,
    or a plug-in kind that is not installed here)."""


class UnsupportedDatabase(MigrateError):
    """A connection named by the plan is a kind of database the provider has no dialect for (e.g. mssql). The
    message starts with the plan field, names the connection and lists the supported databases."""


# ---------------------------------------------------------------------------------------------- backfill


class BackfillSpecError(MigrateError):
    """A backfill step does not fit the real source and target tables; found before any row is copied."""

    def __init__(self, step_id: str, problems: list[str]):
        self.step_id, self.problems = step_id, problems
        super().__init__(f"backfill step '{step_id}' cannot start (nothing was copied):\n"
                         + "\n".join(f"  - {p}" for p in problems))


class BackfillFailed(MigrateError):
    """A backfill phase stopped for a reason clearing the task cannot cure as is: counts differ, a batch
    the database rejects, a lock held over its limit. :class:`TransientBackfillFailed` is the variant a
    retry can cure; ``BackfillFailed(message, transient=True)`` builds it, as does :meth:`from_db_error`."""

    def __new__(cls, message: str, transient: bool | None = None) -> BackfillFailed:
        return super().__new__(_variant(cls, TransientBackfillFailed, transient))

    def __init__(self, message: str, transient: bool | None = None):
        super().__init__(message)

    @classmethod
    def from_db_error(cls, message: str, cause: BaseException, *dialects: TransientClassifier) -> BackfillFailed:
        """Transient when any of ``dialects`` (source, target) classifies ``cause`` as transient."""
        return cls(message, any(d.is_transient(cause) for d in dialects))


class TransientBackfillFailed(BackfillFailed, TransientError):
    """A backfill phase stopped where retrying can succeed: throttled too long, a lock not granted in time,
    a connection lost. The copy resumes from its last checkpoint."""


# ---------------------------------------------------------------------------------------------- dual-write


class CaptureError(MigrateError):
    """Change capture cannot start or went wrong: a table without a primary key, a change table another run left,
    capture triggers missing, a replay the database rejects, a lag that never came under its threshold."""


class TransientCaptureError(CaptureError, TransientError):
    """A capture or replay step stopped where retrying can succeed (connection lost, lock timeout); the replay
    resumes from its checkpoint."""


class CutoverFailed(MigrateError):
    """A cutover stopped: the lock held past its budget, rows or counts differ at the switch, the tables diverge, a
    switch or smoke check failed, the window closed. Rollback switches back (if it switched) and replays back."""

    def __new__(cls, message: str, transient: bool | None = None) -> CutoverFailed:
        return super().__new__(_variant(cls, TransientCutoverFailed, transient))

    def __init__(self, message: str, transient: bool | None = None):
        super().__init__(message)


class TransientCutoverFailed(CutoverFailed, TransientError):
    """A cutover could not take its lock in time or lost a connection before switching: a retry can succeed."""


class CutoverDeferral(ControlFlow):
    """The cutover window is closed (or too close to closing): under Airflow, wait deferred until ``until``."""

    def __init__(self, until: Any, why: str):
        self.until, self.why = until, why
        super().__init__(why)


# ---------------------------------------------------------------------------------------------- backup


class BackupFailed(MigrateError):
    """A backup could not be made or verified; no step that changes data may run without it."""


class RestoreFailed(MigrateError):
    """Restoring tables from a backup failed, or the restored tables do not match the backup's manifest."""


# ---------------------------------------------------------------------------------------------- verify


class VerifySpecError(MigrateError):
    """A check cannot run as declared: a table or column that does not exist, incompatible key types, a rule
    that does not fit the column's type. The message starts with the plan field to edit."""


class VerifyInputError(VerifySpecError):
    """A check cannot run as asked (no such table or column, a query where a table is needed, a rule that
    does not fit the column's type). The message starts with the field to edit."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class ExpectationSuiteError(VerifySpecError):
    """The suite cannot be run as given: bad shape, unknown expectation, bad kwargs, missing table.
    Carries every problem found, each naming its field (``expectations.suite[2].type: ...``)."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__(problems[0] if len(problems) == 1 else
                         "expectation suite is not valid:\n" + "\n".join(f"  - {p}" for p in problems))


class BenchmarkError(MigrateError):
    """A benchmark query could not be run (or the benchmark is set up wrong), and running it again cannot
    help. :class:`TransientBenchmarkError` is the variant where it can (connection lost, lock timeout);
    :meth:`from_db_error` picks it."""

    def __new__(cls, message: str, query: str | None = None, transient: bool | None = None) -> BenchmarkError:
        return super().__new__(_variant(cls, TransientBenchmarkError, transient))

    def __init__(self, message: str, query: str | None = None, transient: bool | None = None):
        self.query = query
        super().__init__(message)

    @classmethod
    def from_db_error(cls, message: str, cause: BaseException, dialect: TransientClassifier | None,
                      query: str | None = None) -> BenchmarkError:
        """Transient when ``dialect`` (None: unknown, not transient) classifies ``cause`` as transient."""
        return cls(message, query, dialect is not None and dialect.is_transient(cause))


class TransientBenchmarkError(BenchmarkError, TransientError):
    """A benchmark query failed where running it again can succeed (connection lost, lock timeout)."""


class HealthCheckError(MigrateError):
    """A health metric could not be read or the gate is set up wrong, and reading it again cannot help.
    :class:`TransientHealthCheckError` is the variant where it can (endpoint unreachable, timeout, HTTP 5xx,
    connection lost); ``HealthCheckError(message, metric, transient)`` and :meth:`from_db_error` pick it."""

    def __new__(cls, message: str, metric: str | None = None, transient: bool | None = None) -> HealthCheckError:
        return super().__new__(_variant(cls, TransientHealthCheckError, transient))

    def __init__(self, message: str, metric: str | None = None, transient: bool | None = None):
        self.metric = metric
        super().__init__(message)

    @classmethod
    def from_db_error(cls, message: str, cause: BaseException, dialect: TransientClassifier | None,
                      metric: str | None = None) -> HealthCheckError:
        """Transient when ``dialect`` (None: unknown, not transient) classifies ``cause`` as transient."""
        return cls(message, metric, dialect is not None and dialect.is_transient(cause))


class TransientHealthCheckError(HealthCheckError, TransientError):
    """A health metric could not be read now; reading it again may succeed."""


# ---------------------------------------------------------------------------------------------- retry


CONNECTION_ERRORS: tuple[type[sa_exc.SQLAlchemyError], ...] = (
    sa_exc.OperationalError,  # server gone, connection reset, lock/statement timeout, deadlock, SQLite busy
    sa_exc.InterfaceError,  # the driver's connection is closed or broken
    sa_exc.DisconnectionError,  # the pool found the connection dead
    sa_exc.TimeoutError,  # no pooled connection free in time
)


def is_connection_error(exc: BaseException) -> bool:
    """True for a SQLAlchemy error at the connection level (lost, refused, timed out, invalidated): the
    same work can succeed on a new connection. A ``ProgrammingError``, ``IntegrityError``, ... is not."""
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, CONNECTION_ERRORS)


def should_retry(exc: BaseException) -> bool:
    """Retry only what can succeed on retry (DESIGN rule 11): the one mapping of failures to retry / no
    retry, used by the Airflow layer for every task.

    - a :class:`MigrateError`: its class's ``transient`` (the :class:`TransientError` classes);
    - a bare SQLAlchemy error (outside a step, e.g. reading the ledger): only a connection-level error
      (:func:`is_connection_error`); anything else is a bug or a damaged table, and a retry repeats it;
    - anything else, including :class:`ControlFlow` (not a failure, must not reach here): no.
    """
    if isinstance(exc, MigrateError):
        return type(exc).transient
    if isinstance(exc, sa_exc.SQLAlchemyError):
        return is_connection_error(exc)
    return False


class UnlockRefused(MigrateError):
    """``airflow-migrate unlock`` did not drop the lock: its holder is alive (without --force), or nobody confirmed."""
