"""The error hierarchy (errors.py) and its one retry mapping (DESIGN rule 11: retry only what can succeed).

Every class in errors.py must have a retry decision in RETRY below: a new class without one fails here.
"""

from __future__ import annotations

import inspect
from types import SimpleNamespace

import pytest
from sqlalchemy import exc as sa_exc

from airflow_migrate_provider import errors
from airflow_migrate_provider.errors import (
    BackfillFailed,
    BenchmarkError,
    ConnectionUnavailable,
    ControlFlow,
    ExpectationSuiteError,
    HealthCheckError,
    MigrateError,
    StepFailed,
    ThrottleDeferral,
    TransientBackfillFailed,
    TransientBenchmarkError,
    TransientConnectionUnavailable,
    TransientError,
    TransientHealthCheckError,
    TransientStepFailed,
    VerificationFailed,
    VerifySpecError,
    is_connection_error,
    should_retry,
)

# The decision per class: True = Airflow retries the task (AirflowException), False = it fails at once
# (AirflowFailException) and the run goes to rollback.
RETRY: dict[str, bool] = {
    "MigrateError": False,
    "TransientError": True,
    "PlanError": False,
    "PlanImportError": False,
    "ChecksumMismatch": False,
    "LockHeld": False,
    "LockLost": False,
    "RunRefused": False,  # `airflow-migrate run` only: another run holds the lock (exit 3), nothing ran
    "AirflowHomeRefused": False,  # `airflow-migrate run` only: an --airflow-home it must not reset (exit 2)
    "UnlockRefused": False,
    "VerificationFailed": False,
    "StepFailed": False,
    "TransientStepFailed": True,
    "RevertFailed": False,
    "PreflightFailed": False,
    "ConnectionUnavailable": False,
    "TransientConnectionUnavailable": True,
    "UnknownStepKind": False,  # the kind's code is missing here: install or upgrade the provider first
    "UnsupportedDatabase": False,  # no dialect for that database: a retry cannot add one
    "BackfillSpecError": False,
    "BackfillFailed": False,
    "TransientBackfillFailed": True,
    "BackupFailed": False,
    "RestoreFailed": False,
    "VerifySpecError": False,
    "VerifyInputError": False,
    "ExpectationSuiteError": False,
    "BenchmarkError": False,
    "TransientBenchmarkError": True,
    "HealthCheckError": False,
    "TransientHealthCheckError": True,
    "CaptureError": False,
    "TransientCaptureError": True,
    "CutoverFailed": False,
    "TransientCutoverFailed": True,
}
CONTROL_FLOW = {"ControlFlow", "ThrottleDeferral", "CutoverDeferral"}


def classes_of_errors_module() -> list[type[BaseException]]:
    return [obj for _, obj in inspect.getmembers(errors, inspect.isclass)
            if obj.__module__ == errors.__name__ and issubclass(obj, BaseException)]


ERROR_CLASSES = classes_of_errors_module()


def bare(cls: type[BaseException]) -> BaseException:
    """An instance without running the class's constructor (whose arguments differ per class)."""
    return BaseException.__new__(cls)


class Classifier:
    def __init__(self, transient: bool):
        self.answer, self.asked = transient, []

    def is_transient(self, exc: BaseException) -> bool:
        self.asked.append(exc)
        return self.answer


def test_the_module_is_introspected():
    names = {cls.__name__ for cls in ERROR_CLASSES}
    assert {"MigrateError", "StepFailed", "TransientStepFailed", "ThrottleDeferral"} <= names


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_class_is_a_migrate_error_or_documented_control_flow(cls):
    if cls.__name__ in CONTROL_FLOW:
        assert issubclass(cls, ControlFlow) and not issubclass(cls, MigrateError)
    else:
        assert issubclass(cls, MigrateError), f"{cls.__name__} must derive from MigrateError (or ControlFlow)"
    assert cls.__doc__ and cls.__doc__.strip(), f"{cls.__name__} needs a docstring saying when it is raised"


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_class_has_a_retry_decision(cls):
    if cls.__name__ in CONTROL_FLOW:
        assert should_retry(bare(cls)) is False  # not a failure: never translated, never retried
        return
    assert cls.__name__ in RETRY, (f"{cls.__name__}: decide whether Airflow retries it (DESIGN rule 11) and add "
                                   f"it to RETRY in this test; a transient class derives from TransientError")
    expected = RETRY[cls.__name__]
    assert should_retry(bare(cls)) is expected
    assert cls.transient is expected
    assert issubclass(cls, TransientError) is expected


def test_retry_table_names_only_existing_classes():
    assert set(RETRY) | CONTROL_FLOW == {cls.__name__ for cls in ERROR_CLASSES}


def test_control_flow_is_not_swallowed_by_except_migrate_error():
    rule = SimpleNamespace(name="lag", max=5.0)
    with pytest.raises(ThrottleDeferral) as caught:
        try:
            raise ThrottleDeferral(rule, 9.0, 61.0)  # type: ignore[arg-type]
        except MigrateError:  # what operators, the CLI and rollback catch
            pytest.fail("ThrottleDeferral must not be caught as a MigrateError")
    assert str(caught.value) == "throttle 'lag' still at 9 (max 5) after pausing 61 s: deferring"
    assert caught.value.rule is rule and caught.value.paused_s == 61.0


def test_moved_classes_are_still_importable_from_their_old_modules():
    from airflow_migrate_provider.core.backfill import throttle
    from airflow_migrate_provider.core.verify import base, expectations, health, performance, structure

    assert throttle.ThrottleDeferral is errors.ThrottleDeferral
    assert base.VerifySpecError is errors.VerifySpecError
    assert structure.VerifyInputError is errors.VerifyInputError
    assert health.HealthCheckError is errors.HealthCheckError
    assert performance.BenchmarkError is errors.BenchmarkError
    assert expectations.ExpectationSuiteError is errors.ExpectationSuiteError


# -- bare SQLAlchemy errors (outside a step) ---------------------------------------------------------------------


def dbapi(cls: type[sa_exc.DBAPIError], message: str = "boom", invalidated: bool = False) -> sa_exc.DBAPIError:
    return cls("SELECT 1", {}, Exception(message), connection_invalidated=invalidated)


@pytest.mark.parametrize("exc", [
    dbapi(sa_exc.OperationalError, "server closed the connection unexpectedly"),
    dbapi(sa_exc.InterfaceError, "connection already closed"),
    sa_exc.DisconnectionError("pool found the connection dead"),
    sa_exc.TimeoutError("QueuePool limit reached"),
    dbapi(sa_exc.ProgrammingError, "terminating connection", invalidated=True),
], ids=["operational", "interface", "disconnection", "pool-timeout", "invalidated"])
def test_connection_level_sqlalchemy_errors_are_retried(exc):
    assert is_connection_error(exc) and should_retry(exc)


@pytest.mark.parametrize("exc", [
    dbapi(sa_exc.ProgrammingError, 'relation "migrate_ledger" does not exist'),
    dbapi(sa_exc.IntegrityError, "duplicate key value violates unique constraint"),
    dbapi(sa_exc.DataError, "value too long for type character varying(10)"),
    dbapi(sa_exc.NotSupportedError),
    sa_exc.NoSuchTableError("migrate_ledger"),
    sa_exc.ArgumentError("bad argument"),
    sa_exc.SQLAlchemyError("anything else"),
], ids=["programming", "integrity", "data", "not-supported", "no-such-table", "argument", "bare"])
def test_other_sqlalchemy_errors_are_not_retried(exc):
    assert not is_connection_error(exc) and should_retry(exc) is False


@pytest.mark.parametrize("exc", [ValueError("bug"), KeyError("x"), RuntimeError("y")])
def test_unknown_exceptions_are_not_classified_as_retryable(exc):
    assert should_retry(exc) is False


# -- the older call forms, and the factories ------------------------------------------------------------------


def test_step_failed_old_call_form_builds_the_class_the_flag_names():
    cause = dbapi(sa_exc.OperationalError, "canceling statement due to lock timeout\nDETAIL: more")
    failed = StepFailed("add_col", "apply", "  ALTER TABLE t ADD c int  ", cause, True)
    assert type(failed) is TransientStepFailed and isinstance(failed, StepFailed)
    assert failed.transient is True and should_retry(failed) is True
    assert (failed.step_id, failed.action, failed.statement) == ("add_col", "apply", "  ALTER TABLE t ADD c int  ")
    assert str(failed).startswith("apply of step 'add_col' failed: (builtins.Exception) canceling statement due "
                                  "to lock timeout\n  statement: ALTER TABLE t ADD c int")

    rejected = StepFailed("add_col", "apply", "ALTER TABLE t ADD c int", ValueError("syntax error"), False)
    assert type(rejected) is StepFailed and rejected.transient is False and should_retry(rejected) is False
    assert type(StepFailed("s", "revert", "x", ValueError(""), transient=True)) is TransientStepFailed
    assert type(StepFailed("s", "revert", "x", ValueError(""))) is StepFailed
    assert type(TransientStepFailed("s", "revert", "x", ValueError(""))) is TransientStepFailed
    assert str(StepFailed("s", "apply", "x", ValueError(""))).startswith("apply of step 's' failed: ValueError")


def test_a_contradictory_transient_flag_is_refused():
    with pytest.raises(TypeError, match="contradictory"):
        TransientStepFailed("s", "apply", "x", ValueError("e"), False)
    with pytest.raises(TypeError, match="contradictory"):
        TransientBackfillFailed("m", transient=False)


@pytest.mark.parametrize("transient", [True, False])
def test_step_failed_from_db_error_asks_the_dialect(transient):
    cause = dbapi(sa_exc.OperationalError)
    dialect = Classifier(transient)
    failed = StepFailed.from_db_error(dialect, "s", "apply", "SELECT 1", cause)
    assert dialect.asked == [cause]
    assert type(failed) is (TransientStepFailed if transient else StepFailed)


def test_other_old_call_forms():
    assert type(ConnectionUnavailable("db unreachable")) is TransientConnectionUnavailable  # the old default
    assert type(ConnectionUnavailable("conn 'x' is not defined", transient=False)) is ConnectionUnavailable
    assert type(TransientConnectionUnavailable("db unreachable")) is TransientConnectionUnavailable

    assert type(BackfillFailed("counts differ")) is BackfillFailed
    assert type(BackfillFailed("throttled too long", transient=True)) is TransientBackfillFailed

    health = HealthCheckError("metric 'm': cannot reach", "m", True)
    assert type(health) is TransientHealthCheckError and health.metric == "m" and str(health) == (
        "metric 'm': cannot reach")
    assert type(HealthCheckError("bad json_path", metric="m")) is HealthCheckError

    bench = BenchmarkError("query 'q' failed", query="q", transient=True)
    assert type(bench) is TransientBenchmarkError and bench.query == "q" and bench.transient is True
    assert type(BenchmarkError("no queries")) is BenchmarkError


def test_other_factories_ask_the_dialects():
    cause = dbapi(sa_exc.OperationalError)
    assert type(BackfillFailed.from_db_error("m", cause, Classifier(False), Classifier(True))) is (
        TransientBackfillFailed)
    assert type(BackfillFailed.from_db_error("m", cause, Classifier(False))) is BackfillFailed
    assert type(HealthCheckError.from_db_error("m", cause, Classifier(True), "lat")) is TransientHealthCheckError
    assert type(HealthCheckError.from_db_error("m", cause, None, "lat")) is HealthCheckError
    assert type(BenchmarkError.from_db_error("m", cause, Classifier(True), "q")) is TransientBenchmarkError
    assert type(BenchmarkError.from_db_error("m", cause, None, "q")) is BenchmarkError


# -- who uses the mapping ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raised", "wrapped"), [
    (BenchmarkError("benchmark query 'q' failed on the target: syntax error"), True),
    (ExpectationSuiteError(["expectations.table: table 'nope' does not exist"]), True),
    (VerifySpecError("key: column 'id' is not in source"), True),
    (TransientBenchmarkError("benchmark query 'q' failed on the target: connection lost"), False),
    (VerificationFailed("v", "(expectations)", "expectations need a table"), False),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else str(v))
def test_verify_step_names_the_plan_field_by_type(monkeypatch, raised, wrapped):
    from airflow_migrate_provider.core.verify import suite

    def fail(*_args: object) -> None:
        raise raised

    monkeypatch.setattr(suite, "_run_checks", fail)
    with pytest.raises(MigrateError) as caught:
        suite.run_verify_step(SimpleNamespace(id="v"), None, None)  # type: ignore[arg-type]
    if wrapped:
        assert type(caught.value) is VerifySpecError and caught.value.__cause__ is raised
        assert str(caught.value) == f"steps.v.{raised}"
    else:
        assert caught.value is raised


def test_airflow_layer_translates_by_should_retry():
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    from airflow_migrate_provider.operators.base import MigrationOperator, airflow_error

    assert type(airflow_error(TransientStepFailed("s", "apply", "x", ValueError("lost")))) is AirflowException
    assert type(airflow_error(StepFailed("s", "apply", "x", ValueError("syntax")))) is AirflowFailException
    lost = airflow_error(dbapi(sa_exc.OperationalError, "server closed the connection unexpectedly"))
    assert type(lost) is AirflowException and "server closed the connection" in str(lost)
    bug = airflow_error(dbapi(sa_exc.ProgrammingError, 'relation "migrate_ledger" does not exist'))
    assert type(bug) is AirflowFailException and "not retried" in str(bug) and "migrate_ledger" in str(bug)

    def defer() -> None:
        raise ThrottleDeferral(SimpleNamespace(name="lag", max=1.0), 2.0, 60.0)  # type: ignore[arg-type]

    with pytest.raises(ThrottleDeferral):  # control flow passes through untranslated
        MigrationOperator.translating_errors(None, defer)  # type: ignore[arg-type]
    with pytest.raises(AirflowFailException):
        MigrationOperator.translating_errors(None, lambda: (_ for _ in ()).throw(  # type: ignore[arg-type]
            dbapi(sa_exc.ProgrammingError)))
