"""The step-kind interface: one class per kind owns everything the rest of the engine asks about a step.

Rollback, preflight, status, backup, render and the DAG builder ask the step's kind (``kind_of(step)``);
none of them names a kind. A kind is shaped like pgroll's operations: it *returns* its actions
(:meth:`StepKind.plan_actions`) and knows how to apply, revert and verify itself against a
:class:`~airflow_migrate_provider.core.context.RunContext`.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel

from airflow_migrate_provider.core.step_result import StepResult

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from airflow_migrate_provider.core.actions import ActionPlan
    from airflow_migrate_provider.core.context import RunContext
    from airflow_migrate_provider.core.dialects import Dialect
    from airflow_migrate_provider.core.ledger import HistoryRow, Ledger

S = TypeVar("S", bound=BaseModel)


@dataclass(frozen=True)
class TaskSpec:
    """One Airflow task a step needs, described without Airflow.

    ``operator`` is the class name of the Airflow operator that runs it; ``args`` are its extra arguments;
    ``mapped_over`` names an earlier task of the same shape whose output list it is mapped over (one task
    instance per item, passed as the ``map_arg`` argument and labelled by the item's ``map_label`` key).
    """

    name: str
    operator: str
    args: dict[str, Any] = field(default_factory=dict)
    mapped_over: str | None = None
    map_arg: str = "item"  # the operator argument each mapped instance gets its item in
    map_label: str | None = None
    describe: tuple[str, ...] = ()


@dataclass(frozen=True)
class TaskShape:
    """The tasks of one step, chained in order. With a ``group_tooltip`` they live in a TaskGroup named
    after the step (task ids ``steps.<step>.<name>``); otherwise the single task is ``steps.<step>``."""

    tasks: tuple[TaskSpec, ...]
    group_tooltip: str | None = None


def digest(data: Any) -> str:
    """SHA-256 of JSON-able data in a canonical form."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


class StepKind(ABC, Generic[S]):
    """What one step kind is and does. Subclasses set ``name`` and ``model`` and register themselves with
    :func:`airflow_migrate_provider.core.kinds.register`."""

    name: ClassVar[str]
    model: ClassVar[type[BaseModel]]
    operator: ClassVar[str]  # class name of the Airflow operator that runs the kind's tasks
    read_only: ClassVar[bool] = False  # changes nothing: nothing to revert, never re-applied, edits allowed
    # a backup restore may stand in for a failed revert (False where the tables hold the application's own writes
    # made during the run, which a restore would drop: dual_write, cutover)
    restore_replaces_revert: ClassVar[bool] = True

    # -- what the step is ---------------------------------------------------------------------------
    def checksum(self, step: S) -> str:
        """What the ledger compares to refuse an applied step edited afterwards: the whole declaration
        except its description and tags (a kind narrows this to what changes data)."""
        return digest(step.model_dump(mode="json", exclude={"description", "tags"}))

    @abstractmethod
    def plan_actions(self, step: S, dialect: Dialect) -> ActionPlan:
        """The actions the step runs on ``dialect`` and those that undo it: executed, rendered and recorded."""

    def is_point_of_no_return(self, step: S) -> bool:
        """True for a step automatic rollback must stop at (it gets a verification gate and an approval)."""
        return False

    def touched_tables(self, step: S, dialect: str) -> list[str]:
        """The tables the step writes, for ``backup.tables: auto`` (raises BackupFailed when it cannot tell)."""
        return []

    def checklist(self, step: S) -> list[str]:
        """Problems visible in the step itself, for preflight (the model enforces most)."""
        return []

    def dialect_checklist(self, step: S, dialect: Dialect) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """What the step's SQL means on ``dialect``'s database: (problems that refuse the run, notes for the
        log), each as (the step's field, message); e.g. statements a crash could leave half-done where DDL is
        not transactional."""
        return [], []

    def task_shape(self, step: S) -> TaskShape:
        """The Airflow tasks the step needs; by default one task run by the kind's operator (what it does is
        :meth:`describe`, asked only when rendering)."""
        return TaskShape((TaskSpec(step.id, self.operator),))  # type: ignore[attr-defined]

    def describe(self, step: S, dialect: Dialect | None) -> list[str]:
        """Lines for ``airflow-migrate render``: by default the rendered actions."""
        from airflow_migrate_provider.core.dialects import dialect_named

        return self.plan_actions(step, dialect or dialect_named("postgresql")).render()

    # -- what the step does -------------------------------------------------------------------------
    @abstractmethod
    def apply(self, ctx: RunContext, step: S) -> StepResult:
        """Apply the step (a no-op when the ledger says it is applied), record it in the ledger."""

    def revert(self, ctx: RunContext, applied: HistoryRow) -> StepResult:
        """Undo what ``applied`` recorded. Read-only kinds only record that the result no longer stands."""
        row_id, started = ctx.ledger.start(applied.step_id, "revert", applied.checksum, applied.actions, ctx.who)
        note = f"{applied.actions.kind} step: read-only, nothing to revert"
        ctx.ledger.finish(row_id, "reverted", started_at=started, verified=json.dumps([note]))
        return StepResult(applied.step_id, "reverted", 0.0, 0, [note])

    def verify(self, ctx: RunContext, step: S) -> StepResult:
        """Re-check, read-only, that the applied step still holds. A read-only kind's check is its own task:
        the final verification has nothing to add (a kind that changes data must override this: ``register``
        refuses it otherwise)."""
        return StepResult(step.id, "verified", 0.0, 0, [f"{self.name} step: checked by its own task"])  # type: ignore[attr-defined]

    def before_run(self, ctx: RunContext, step: S) -> str | None:
        """Preflight's hook, before anything changes (a health gate's baseline, say): what it recorded."""
        return None

    def needs_apply_before(self, row: HistoryRow | None) -> bool:
        """Whether a later step must (re-)apply this one first: not applied, given its ledger row."""
        return not self.read_only and row is None

    def on_run_success(self, ctx: RunContext, applied: HistoryRow) -> list[str]:
        """The run that applied the step succeeded (it can no longer roll back): drop what only a rollback needed.
        Returns what it did, for the log."""
        return []

    def after_restore(self, conn: Connection, ledger: Ledger, step_id: str) -> None:
        """The step's tables were put back from a backup (inside ``conn``'s transaction): reset own state."""

    def progress(self, ledger: Ledger, step: S) -> str:
        """Extra lines for ``airflow-migrate status`` ('' when none)."""
        return ""
