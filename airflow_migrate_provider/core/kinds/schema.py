"""The ``schema`` step kind: ``up`` SQL applied and ``verify`` checked in one transaction (where the database
has transactional DDL; statement by statement with progress recorded elsewhere), reverted by the ``down`` SQL
recorded at apply time and its ``verify_down``. The only kind that can be a point of no return."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, CursorResult

from airflow_migrate_provider.core.kinds.base import StepKind, digest
from airflow_migrate_provider.core.kinds.registry import register
from airflow_migrate_provider.core.ledger import UNFINISHED
from airflow_migrate_provider.core.step_result import StepResult
from airflow_migrate_provider.errors import (
    ChecksumMismatch,
    MigrateError,
    StepFailed,
    VerificationFailed,
    db_error_line,
)
from airflow_migrate_provider.plan.model import SchemaStep

if TYPE_CHECKING:
    from airflow_migrate_provider.core.actions import ActionPlan
    from airflow_migrate_provider.core.context import RunContext
    from airflow_migrate_provider.core.dialects import Dialect
    from airflow_migrate_provider.core.ledger import HistoryRow

log = logging.getLogger(__name__)
FALSY_TEXT = {"", "0", "f", "false", "no", "n", "off"}


def run_sql(conn: Connection, sql: str) -> CursorResult[Any]:
    """Run plan SQL exactly as written: no parameter parsing, so ``LIKE '%@%'`` or jsonb ``?`` stay literal
    (psycopg would otherwise read ``%`` as a placeholder)."""
    return conn.exec_driver_sql(sql, execution_options={"no_parameters": True})


def is_truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() not in FALSY_TEXT
    return bool(value)


def run_checks(conn: Connection, step_id: str, queries: list[str]) -> list[str]:
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


def _norm(sqls: list[str]) -> list[str]:
    return ["\n".join(line.rstrip() for line in s.strip().splitlines()) for s in sqls]


def actions_for(step: SchemaStep, dialect: Dialect) -> ActionPlan:
    """The statements a step runs on ``dialect``, in order, and those that undo it."""
    from airflow_migrate_provider.core.actions import ActionPlan, Check, RunSql

    def split_all(sqls: list[str]) -> list[RunSql]:
        return [RunSql(stmt) for sql in sqls for stmt in dialect.split(sql)]

    def checks(sqls: list[str]) -> list[Check]:
        return [Check(v.strip().rstrip(";")) for v in sqls]

    return ActionPlan(
        kind="schema", do=(*split_all(step.up), *checks(step.verify)),
        undo=(*split_all(step.down), *checks(step.verify_down)),
        transactional=dialect.transactional_ddl if step.transactional is None else step.transactional,
        irreversible=step.irreversible,
    )


@register
class SchemaKind(StepKind[SchemaStep]):
    name = "schema"
    operator = "ApplyStepOperator"
    model = SchemaStep

    def checksum(self, step: SchemaStep) -> str:
        """SHA-256 of the step's SQL (up, down, verify, verify_down), insensitive to trailing whitespace."""
        return digest({"up": _norm(step.up), "down": _norm(step.down), "verify": _norm(step.verify),
                       "verify_down": _norm(step.verify_down)})

    def plan_actions(self, step: SchemaStep, dialect: Dialect) -> ActionPlan:
        return actions_for(step, dialect)

    def is_point_of_no_return(self, step: SchemaStep) -> bool:
        return step.irreversible

    def touched_tables(self, step: SchemaStep, dialect: str) -> list[str]:
        from airflow_migrate_provider.core.backup.touched import tables_written_by_sql  # sqlglot: not at parse time

        return tables_written_by_sql(step.id, step.up, dialect)

    def checklist(self, step: SchemaStep) -> list[str]:
        failures = []
        if not step.irreversible and not step.down:
            failures.append(f"step '{step.id}' is reversible but has no down SQL")
        if not step.verify:
            failures.append(f"step '{step.id}' has no verify query")
        return failures

    def dialect_checklist(self, step: SchemaStep, dialect: Dialect
                          ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Where DDL is not transactional, each statement runs again when a crash came between its commit and the
        ledger's record of it: a statement that cannot run twice is refused when the database has a guarded
        form of it, and noted when it has none."""
        actions = actions_for(step, dialect)
        if actions.transactional:
            return [], []
        problems, notes = [], []
        for side, label in (("do", "up"), ("undo", "down")):
            for number, statement in enumerate(actions.statements(side), start=1):
                hazard = dialect.resume_hazard(statement)
                if hazard is None:
                    continue
                first_line = statement.strip().splitlines()[0][:80]
                where = f"step '{step.id}' {label} statement {number} ({first_line})"
                if hazard.fix:
                    problems.append((label, f"{where}: {hazard.why}. {dialect.label} commits each DDL statement "
                                            f"on its own, so a run that dies right after it would fail running it "
                                            f"again on resume: {hazard.fix}"))
                else:
                    notes.append((label, f"{where}: {hazard.why}; if the worker dies right after it commits, "
                                         f"resuming fails on it and the step needs a manual look (put it last in "
                                         f"its step)"))
        return problems, notes

    def needs_apply_before(self, row: HistoryRow | None) -> bool:
        # a partly applied non-transactional step resumes only when its own task asks for it
        return row is None

    def describe(self, step: SchemaStep, dialect: Dialect | None) -> list[str]:
        from airflow_migrate_provider.core.dialects import dialect_named

        actions = actions_for(step, dialect or dialect_named("postgresql"))
        lines = [f"checksum {self.checksum(step)[:12]}; "
                 f"{'one transaction' if actions.transactional else 'statement by statement'}"
                 + ("; IRREVERSIBLE (point of no return)" if actions.irreversible else "")]
        if dialect is not None:
            problems, notes = self.dialect_checklist(step, dialect)
            lines += [f"NOT RESUMABLE: {p}" for _, p in problems] + [f"note: {n}" for _, n in notes]
        for label, statements in (("up", actions.statements("do")), ("verify", actions.checks("do")),
                                  ("down (on rollback)", actions.statements("undo")),
                                  ("verify_down (on rollback)", actions.checks("undo"))):
            if statements:
                lines.append(f"{label}:")
                lines += [f"    {s}" for stmt in statements for s in f"{stmt};".splitlines()]
        return lines

    # -- apply / revert / verify -------------------------------------------------------------------
    def apply(self, ctx: RunContext, step: SchemaStep) -> StepResult:
        """Apply ``step`` unless the ledger says it is applied already (then a no-op)."""
        checksum = self.checksum(step)
        actions = actions_for(step, ctx.dialect)
        previous = ctx.ledger.applied().get(step.id)
        resume_from = 0
        if previous is not None:
            if previous.checksum != checksum:
                raise ChecksumMismatch(ctx.plan_id, step.id, previous.checksum, checksum, previous.by)
            if previous.status == "applied":
                log.info("step '%s' already applied by %s at %s; nothing to do", step.id, previous.by,
                         previous.finished_at)
                return StepResult(step.id, "already_applied")
            resume_from = previous.progress  # a non-transactional step stopped part way
            log.info("step '%s' resumes after statement %d of %d (stopped in %s)", step.id, resume_from,
                     len(actions.statements()), previous.by)
        try:
            return _run(ctx, step.id, "apply", checksum, actions, "do", resume_from, previous)
        except StepFailed:
            # Tasks of one run may race to re-apply a step a rollback reverted (several cleared chunk tasks
            # of a backfill, say): if another one applied it meanwhile, this one has nothing left to do.
            now = ctx.ledger.applied().get(step.id)
            if now is not None and now.status == "applied" and now.checksum == checksum:
                log.info("step '%s' was applied meanwhile by %s; nothing to do", step.id, now.by)
                return StepResult(step.id, "already_applied")
            raise

    def revert(self, ctx: RunContext, applied: HistoryRow) -> StepResult:
        """Revert with the down SQL recorded when the step was applied (not the plan's current text).

        A non-transactional down that stopped part way (a failed or interrupted revert after ``applied``)
        resumes after the last statement it committed instead of re-running committed statements.
        """
        actions = applied.actions
        resume_from = 0
        if not actions.transactional:
            for row in reversed(ctx.ledger.rows(applied.step_id)):
                if row.id <= applied.id:
                    break
                if row.action == "revert" and row.status in UNFINISHED and row.progress > 0:
                    resume_from = row.progress
                    log.info("revert of step '%s' resumes after statement %d of %d (stopped in %s)",
                             applied.step_id, resume_from, len(actions.statements("undo")), row.by)
                    break
        return _run(ctx, applied.step_id, "revert", applied.checksum, actions, "undo", resume_from)

    def verify(self, ctx: RunContext, step: SchemaStep) -> StepResult:
        """Re-run the verify queries in a transaction that is rolled back (changes nothing)."""
        t0 = time.monotonic()
        with ctx.engine.connect() as conn:
            try:
                passed = run_checks(conn, step.id, actions_for(step, ctx.dialect).checks())
            finally:
                conn.rollback()
        result = StepResult(step.id, "verified", time.monotonic() - t0, 0, passed)
        log.info("%s", result.summary())
        return result


def _execute(ctx: RunContext, conn: Connection, step_id: str, action: str, statement: str) -> None:
    try:
        run_sql(conn, statement)
    except sa_exc.SQLAlchemyError as exc:
        raise StepFailed.from_db_error(ctx.dialect, step_id, action, statement, exc) from exc


def _run(ctx: RunContext, step_id: str, action: str, checksum: str, actions: ActionPlan, which: str,
         resume_from: int, resumed: HistoryRow | None = None) -> StepResult:
    """Run the ``which`` side (do | undo) of ``actions``, record it; one transaction where it is transactional."""
    done_status = "applied" if action == "apply" else "reverted"
    statements, verify = actions.statements(which), actions.checks(which)
    ledger = ctx.ledger
    row_id, started = ledger.start(step_id, action, checksum, actions, ctx.who, resumed_from=resumed)
    t0 = time.monotonic()
    try:
        if actions.transactional:
            with ctx.engine.begin() as conn:
                for statement in statements:
                    _execute(ctx, conn, step_id, action, statement)
                passed = run_checks(conn, step_id, verify)
                ctx.lock.check()
                ledger.finish(row_id, done_status, started_at=started, verified=json.dumps(passed), conn=conn)
        else:
            for index, statement in enumerate(statements[resume_from:], start=resume_from + 1):
                ctx.lock.check()
                with ctx.engine.begin() as conn:
                    _execute(ctx, conn, step_id, action, statement)
                    ledger.record_progress(row_id, index, conn=conn)
            with ctx.engine.begin() as conn:
                passed = run_checks(conn, step_id, verify)
            ledger.finish(row_id, done_status, started_at=started, verified=json.dumps(passed))
    except MigrateError as exc:
        ledger.finish(row_id, "failed", started_at=started, error=str(exc))
        raise
    except sa_exc.SQLAlchemyError as exc:  # e.g. the commit itself failed
        failure = StepFailed.from_db_error(ctx.dialect, step_id, action, "COMMIT", exc)
        ledger.finish(row_id, "failed", started_at=started, error=str(failure))
        raise failure from exc
    result = StepResult(step_id, done_status, time.monotonic() - t0, len(statements), passed)
    log.info("%s", result.summary())
    return result
