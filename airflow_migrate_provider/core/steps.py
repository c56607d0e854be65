"""Apply, revert and verify one schema step, recording every attempt in the ledger.

What a step will do is data before it is done: :func:`actions_for` turns a step into the exact list of
statements that are executed, rendered by ``airflow-migrate render`` and written to the ledger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, CursorResult, Engine

from airflow_migrate_provider.core.dialects import Dialect
from airflow_migrate_provider.core.ledger import HistoryRow, Ledger, RunIdentity
from airflow_migrate_provider.errors import (
    ChecksumMismatch,
    MigrateError,
    StepFailed,
    VerificationFailed,
    db_error_line,
)
from airflow_migrate_provider.plan.model import (
    READ_ONLY_KINDS,
    BackfillStep,
    HealthGateStep,
    Plan,
    SchemaStep,
    VerifyStep,
)

AnyStep = SchemaStep | BackfillStep | VerifyStep | HealthGateStep

if TYPE_CHECKING:
    from airflow_migrate_provider.core.backfill.runner import BackfillRunner

log = logging.getLogger(__name__)
FALSY_TEXT = {"", "0", "f", "false", "no", "n", "off"}


class LockCheck(Protocol):
    def check(self) -> None: ...


class _NoLockCheck:
    def check(self) -> None:
        return None


@dataclass(frozen=True)
class StepActions:
    """The statements of one step, split for the target's dialect."""

    up: list[str]
    down: list[str]
    verify: list[str]
    verify_down: list[str]
    transactional: bool
    irreversible: bool

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> StepActions:
        return cls(**data)


@dataclass
class StepResult:
    """What happened to one step, for logs and the run summary."""

    step_id: str
    outcome: str  # applied | already_applied | reverted | verified
    duration_s: float = 0.0
    statements: int = 0
    verified: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One log line: the step, what happened, how long, and what was verified."""
        checks = "; ".join(_one_line(q) for q in self.verified) or "nothing"
        done = f"{self.statements} statement{'s' if self.statements != 1 else ''}; " if self.statements else ""
        return (f"step '{self.step_id}' {self.outcome.replace('_', ' ')} in {self.duration_s:.2f} s "
                f"({done}verified {len(self.verified)}: {checks})")


def _one_line(sql: str, width: int = 90) -> str:
    flat = " ".join(sql.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def step_checksum(step: AnyStep) -> str:
    """SHA-256 of what a step does to data: a schema step's SQL (up, down, verify, verify_down), insensitive
    to trailing whitespace; a backfill's source, target, columns and key (not its batch/throttle tuning)."""
    if isinstance(step, BackfillStep):
        return backfill_checksum(step)
    if not isinstance(step, SchemaStep):  # read-only kinds: their whole declaration
        what = step.model_dump(mode="json", exclude={"description", "tags"})
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()
    def norm(sqls: list[str]) -> list[str]:
        return ["\n".join(line.rstrip() for line in s.strip().splitlines()) for s in sqls]

    canonical = json.dumps({"up": norm(step.up), "down": norm(step.down), "verify": norm(step.verify),
                            "verify_down": norm(step.verify_down)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def backfill_checksum(step: BackfillStep) -> str:
    what = step.model_dump(mode="json", include={"source", "target", "columns", "key", "watermark", "append_only"})
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def actions_for(step: SchemaStep, dialect: Dialect) -> StepActions:
    """The statements a step runs on ``dialect``, in order."""
    def split_all(sqls: list[str]) -> list[str]:
        return [stmt for sql in sqls for stmt in dialect.split(sql)]

    return StepActions(
        up=split_all(step.up), down=split_all(step.down),
        verify=[v.strip().rstrip(";") for v in step.verify],
        verify_down=[v.strip().rstrip(";") for v in step.verify_down],
        transactional=dialect.transactional_ddl if step.transactional is None else step.transactional,
        irreversible=step.irreversible,
    )


def run_sql(conn: Connection, sql: str) -> CursorResult[Any]:
    """Run plan SQL exactly as written: no parameter parsing, so ``LIKE '%@%'`` or jsonb ``?`` stay literal
    (psycopg would otherwise read ``%`` as a placeholder)."""
    return conn.exec_driver_sql(sql, execution_options={"no_parameters": True})


def is_truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in FALSY_TEXT
    return bool(value)


class StepRunner:
    """Runs steps against one target engine on behalf of one Airflow task try."""

    def __init__(self, engine: Engine, dialect: Dialect, ledger: Ledger, who: RunIdentity,
                 lock: LockCheck | None = None, *, plan: Plan | None = None, source: Engine | None = None):
        self.engine, self.dialect, self.ledger, self.who = engine, dialect, ledger, who
        self.lock: LockCheck = lock or _NoLockCheck()
        self.plan, self.source = plan, source

    def backfill(self, step: BackfillStep, **options: Any) -> BackfillRunner:
        """The runner of a backfill step, reading from the plan's source (the target when it has none)."""
        from airflow_migrate_provider.core.backfill.runner import BackfillRunner

        return BackfillRunner(self.ledger.plan_id, step, self.source or self.engine, self.engine, self.ledger,
                              self.who, self.lock, **options)

    # -- queries --------------------------------------------------------------------------------
    def run_verify(self, conn: Connection, step_id: str, queries: list[str]) -> list[str]:
        """Run verify queries; each must return a truthy first column. Returns the queries that passed."""
        passed = []
        for query in queries:
            try:
                row = run_sql(conn, query).first()
            except sa_exc.SQLAlchemyError as exc:
                raise VerificationFailed(step_id, query, f"the query raised: {db_error_line(exc)}") from exc
            if row is None:
                raise VerificationFailed(step_id, query, "the query returned no rows")
            if not is_truthy(row[0]):
                raise VerificationFailed(step_id, query, f"the query returned {row[0]!r}, expected a true value")
            passed.append(query)
        return passed

    def _execute(self, conn: Connection, step_id: str, action: str, statement: str) -> None:
        try:
            run_sql(conn, statement)
        except sa_exc.SQLAlchemyError as exc:
            raise StepFailed(step_id, action, statement, exc, self.dialect.is_transient(exc)) from exc

    # -- apply ----------------------------------------------------------------------------------
    def apply(self, step: SchemaStep) -> StepResult:
        """Apply ``step`` unless the ledger says it is applied already (then a no-op)."""
        checksum = step_checksum(step)
        actions = actions_for(step, self.dialect)
        previous = self.ledger.applied().get(step.id)
        resume_from = 0
        if previous is not None:
            if previous.checksum != checksum:
                raise ChecksumMismatch(self.ledger.plan_id, step.id, previous.checksum, checksum, previous.by)
            if previous.status == "applied":
                log.info("step '%s' already applied by %s at %s; nothing to do", step.id, previous.by,
                         previous.finished_at)
                return StepResult(step.id, "already_applied")
            resume_from = previous.progress  # a non-transactional step stopped part way
            log.info("step '%s' resumes after statement %d of %d (stopped in %s)", step.id, resume_from,
                     len(actions.up), previous.by)
        try:
            return self._run(step.id, "apply", checksum, actions, actions.up, actions.verify, resume_from)
        except StepFailed:
            # Tasks of one run may race to re-apply a step a rollback reverted (several cleared chunk tasks
            # of a backfill, say): if another one applied it meanwhile, this one has nothing left to do.
            now = self.ledger.applied().get(step.id)
            if now is not None and now.status == "applied" and now.checksum == checksum:
                log.info("step '%s' was applied meanwhile by %s; nothing to do", step.id, now.by)
                return StepResult(step.id, "already_applied")
            raise

    def apply_through(self, plan: Plan, step_id: str) -> list[StepResult]:
        """Bring the target to the state right after ``step_id``: apply, in plan order, every step up to it
        that is not applied. Clearing only a failed task after a rollback reverted its predecessors thus
        re-applies them first instead of failing on their missing changes."""
        step = plan.step(step_id)
        results = self.apply_before(plan, step_id)
        results.append(self.backfill(step).run() if isinstance(step, BackfillStep) else self.apply(step))
        return results

    def apply_before(self, plan: Plan, step_id: str) -> list[StepResult]:
        """Apply, in plan order, every step before ``step_id`` that is not applied in the target."""
        applied = self.ledger.applied()
        results = []
        for step in plan.steps:
            if step.id == step_id:
                return results
            if step.kind in READ_ONLY_KINDS:
                continue  # verifications change nothing a later step depends on
            if step.id in applied and applied[step.id].status == "applied":
                continue
            if step.id in applied and isinstance(step, SchemaStep):
                continue  # a partly applied non-transactional step: apply() resumes it below only when asked
            log.warning("earlier step '%s' is not applied in the target (reverted by a rollback?); "
                        "applying it first", step.id)
            results.append(self.backfill(step).run() if isinstance(step, BackfillStep) else self.apply(step))
        raise KeyError(f"plan '{plan.id}' has no step '{step_id}'")

    def revert(self, applied: HistoryRow) -> StepResult:
        """Revert a step with the down SQL recorded when it was applied (not the plan's current text).

        A non-transactional down that stopped part way (a failed or interrupted revert after ``applied``)
        resumes after the last statement it committed instead of re-running committed statements.
        """
        if applied.actions.get("kind") == "backfill":
            return self.backfill(self._plan_step(applied.step_id)).revert(applied)
        if applied.actions.get("kind") in READ_ONLY_KINDS:
            return self._record_noop_revert(applied)
        actions = StepActions.from_json(applied.actions)
        resume_from = 0
        if not actions.transactional:
            for row in reversed(self.ledger.rows(applied.step_id)):
                if row.id <= applied.id:
                    break
                if row.action == "revert" and row.status in ("failed", "running") and row.progress > 0:
                    resume_from = row.progress
                    log.info("revert of step '%s' resumes after statement %d of %d (stopped in %s)",
                             applied.step_id, resume_from, len(actions.down), row.by)
                    break
        return self._run(applied.step_id, "revert", applied.checksum, actions, actions.down,
                         actions.verify_down, resume_from)

    def _run(self, step_id: str, action: str, checksum: str, actions: StepActions, statements: list[str],
             verify: list[str], resume_from: int) -> StepResult:
        done_status = "applied" if action == "apply" else "reverted"
        row_id, started = self.ledger.start(step_id, action, checksum, actions.to_json(), self.who)
        t0 = time.monotonic()
        try:
            if actions.transactional:
                with self.engine.begin() as conn:
                    for statement in statements:
                        self._execute(conn, step_id, action, statement)
                    passed = self.run_verify(conn, step_id, verify)
                    self.lock.check()
                    self.ledger.finish(row_id, done_status, started_at=started, verified=json.dumps(passed),
                                       conn=conn)
            else:
                for index, statement in enumerate(statements[resume_from:], start=resume_from + 1):
                    self.lock.check()
                    with self.engine.begin() as conn:
                        self._execute(conn, step_id, action, statement)
                        self.ledger.record_progress(row_id, index, conn=conn)
                with self.engine.begin() as conn:
                    passed = self.run_verify(conn, step_id, verify)
                self.ledger.finish(row_id, done_status, started_at=started, verified=json.dumps(passed))
        except MigrateError as exc:
            self.ledger.finish(row_id, "failed", started_at=started, error=str(exc))
            raise
        except sa_exc.SQLAlchemyError as exc:  # e.g. the commit itself failed
            failure = StepFailed(step_id, action, "COMMIT", exc, self.dialect.is_transient(exc))
            self.ledger.finish(row_id, "failed", started_at=started, error=str(failure))
            raise failure from exc
        result = StepResult(step_id, done_status, time.monotonic() - t0, len(statements), passed)
        log.info("%s", result.summary())
        return result

    # -- verify only ----------------------------------------------------------------------------
    def _record_noop_revert(self, applied: HistoryRow) -> StepResult:
        """A verification changed nothing: its revert only records that it no longer stands."""
        row_id, started = self.ledger.start(applied.step_id, "revert", applied.checksum, applied.actions, self.who)
        note = f"{applied.actions.get('kind')} step: read-only, nothing to revert"
        self.ledger.finish(row_id, "reverted", started_at=started, verified=json.dumps([note]))
        return StepResult(applied.step_id, "reverted", 0.0, 0, [note])

    def _plan_step(self, step_id: str) -> BackfillStep:
        step = self.plan.step(step_id) if self.plan is not None else None
        if not isinstance(step, BackfillStep):
            raise MigrateError(f"step '{step_id}' was applied as a backfill but the plan no longer has it as one; "
                               f"restore the step in the plan to revert it")
        return step

    def verify(self, step: AnyStep) -> StepResult:
        """Re-run a step's verify queries in a transaction that is rolled back (changes nothing)."""
        if isinstance(step, BackfillStep):
            return self.backfill(step).verify()
        if not isinstance(step, SchemaStep):
            return StepResult(step.id, "verified", 0.0, 0, [f"{step.kind} step: checked by its own task"])
        t0 = time.monotonic()
        with self.engine.connect() as conn:
            try:
                passed = self.run_verify(conn, step.id, [v.strip().rstrip(";") for v in step.verify])
            finally:
                conn.rollback()
        result = StepResult(step.id, "verified", time.monotonic() - t0, 0, passed)
        log.info("%s", result.summary())
        return result
