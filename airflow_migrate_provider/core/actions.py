"""What a step will do, as data: typed actions, like Alembic's operations and pgroll's.

A step kind turns a plan step into an :class:`ActionPlan`: the actions it runs (``do``) and the actions that
undo them (``undo``). The same object is executed, rendered for ``airflow-migrate render`` (a dry run, no
Airflow and no database needed) and written to the ledger with its kind and :data:`FORMAT_VERSION`; a revert
replays what the ledger recorded at apply time, never what the plan says now.

Ledger rows written before actions were typed (format 1: ``{"up": [...], "down": [...], ...}``) are read
into the same objects by :meth:`ActionPlan.from_json`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

FORMAT_VERSION = 2

_ACTION_TYPES: dict[str, type[Action]] = {}


def _flat(sql: str, width: int | None = None) -> str:
    text = " ".join(sql.split())
    return text if width is None or len(text) <= width else text[: width - 1] + "…"


@dataclass(frozen=True)
class Action(ABC):
    """One thing a step does. ``render()`` shows it (SQL where it is SQL); ``reverse()`` is what undoes it:
    ``[]`` when nothing needs undoing (a read), ``None`` when it cannot be derived from the action alone."""

    type: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "type" in cls.__dict__:
            _ACTION_TYPES[cls.type] = cls

    @abstractmethod
    def render(self) -> str:
        """The action as text a reviewer reads: SQL for SQL, a one-line description otherwise."""

    def reverse(self) -> list[Action] | None:
        return None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **asdict(self)}

    @staticmethod
    def from_json(data: dict[str, Any]) -> Action:
        cls = _ACTION_TYPES.get(str(data.get("type")))
        if cls is None:
            return Note(f"unknown recorded action {data!r}")
        known = {f.name for f in fields(cls)}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known})


@dataclass(frozen=True)
class RunSql(Action):
    """A statement from the plan's SQL, run exactly as written."""

    type: ClassVar[str] = "sql"
    sql: str

    def render(self) -> str:
        return f"{self.sql};"


@dataclass(frozen=True)
class Check(Action):
    """A query whose first column must be truthy (a step's verify / verify_down). Reads only."""

    type: ClassVar[str] = "check"
    sql: str

    def render(self) -> str:
        return f"{self.sql};"

    def reverse(self) -> list[Action]:
        return []


@dataclass(frozen=True)
class CopyRange(Action):
    """Copy the source rows of a key range into the target table, batch by batch with checkpoints."""

    type: ClassVar[str] = "copy_range"
    source: str  # a table name, or "(SELECT …)" for a query source
    target: str
    key: tuple[str, ...]
    columns: tuple[tuple[str, str], ...] = ()  # (target column, source expression) for renamed/transformed ones
    filter: str | None = None
    phase: str = "history"  # history | recent | final
    resolved: bool = False  # ``columns`` lists every target column (known once the tables were read)

    def batch_query(self) -> str:
        items = [f"{_flat(expr)} AS {name}" for name, expr in self.columns]
        if not self.resolved:
            items.append(f"<every other column of {self.target}, by name>")
        key = self.key[0] if len(self.key) == 1 else f"({', '.join(self.key)})"
        where = [f"{key} > :last_key", f"{key} <= :batch_end", *([f"({self.filter})"] if self.filter else [])]
        return f"SELECT {', '.join(items)} FROM {self.source} WHERE {' AND '.join(where)}"

    def render(self) -> str:
        return f"-- copy {self.phase} rows of {self.source} into {self.target}, each batch reading:\n" \
               f"{self.batch_query()};"

    def reverse(self) -> list[Action]:
        return [DeleteRows(self.target, "the table was empty when the backfill began")]


@dataclass(frozen=True)
class DeleteRows(Action):
    """Delete every row of a table (the undo of a backfill into a table that was empty)."""

    type: ClassVar[str] = "delete_rows"
    table: str
    why: str = ""

    def render(self) -> str:
        return f"DELETE FROM {self.table};" + (f"  -- {self.why}" if self.why else "")


@dataclass(frozen=True)
class WriteLock(Action):
    """Block writes to tables (reads go on) for at most ``max_seconds``, released when its transaction ends."""

    type: ClassVar[str] = "write_lock"
    tables: tuple[str, ...]
    max_seconds: float

    def render(self) -> str:
        return f"-- lock {', '.join(self.tables)} against writes (at most {self.max_seconds:g} s)"

    def reverse(self) -> list[Action]:
        return []  # released with its transaction


@dataclass(frozen=True)
class CompareRows(Action):
    """Compare source and target (counts, structure, samples, checksums…). Reads only."""

    type: ClassVar[str] = "compare"
    source: str
    target: str
    checks: tuple[str, ...]

    def render(self) -> str:
        return f"-- compare {self.source} (source) with {self.target} (target): {', '.join(self.checks)}"

    def reverse(self) -> list[Action]:
        return []


@dataclass(frozen=True)
class SampleMetric(Action):
    """Sample an application health metric by SQL. Reads only."""

    type: ClassVar[str] = "sample_metric"
    name: str
    sql: str
    database: str = "target"

    def render(self) -> str:
        return f"-- metric {self.name} on the {self.database}:\n{self.sql};"

    def reverse(self) -> list[Action]:
        return []


@dataclass(frozen=True)
class HttpCall(Action):
    """An HTTP request (a health endpoint read, say). The URL is shown without its query string."""

    type: ClassVar[str] = "http"
    method: str
    url: str
    name: str = ""

    def render(self) -> str:
        return f"-- {self.name + ': ' if self.name else ''}HTTP {self.method} {self.url.split('?', 1)[0]}"

    def reverse(self) -> list[Action] | None:
        return [] if self.method.upper() in ("GET", "HEAD") else None


@dataclass(frozen=True)
class CaptureChanges(Action):
    """Install triggers that record every insert, update and delete of ``table`` (by key) in ``change_table``."""

    type: ClassVar[str] = "capture_changes"
    table: str
    change_table: str
    trigger: str
    key: tuple[str, ...]
    database: str = "source"

    def render(self) -> str:
        return (f"-- capture every insert/update/delete of {self.table} ({self.database}) by key "
                f"({', '.join(self.key)}) into {self.change_table}, by triggers {self.trigger}_*")

    def reverse(self) -> list[Action]:
        return [DropCapture(self.table, self.change_table, self.trigger, self.key, self.database)]


@dataclass(frozen=True)
class DropCapture(Action):
    """Drop a capture's triggers and its change table."""

    type: ClassVar[str] = "drop_capture"
    table: str
    change_table: str
    trigger: str
    key: tuple[str, ...]
    database: str = "source"

    def render(self) -> str:
        return f"-- drop the capture triggers {self.trigger}_* on {self.table} and the change table {self.change_table}"


@dataclass(frozen=True)
class ReplayChanges(Action):
    """Bring every key named in ``change_table`` to its current state in ``target``, in checkpointed batches."""

    type: ClassVar[str] = "replay_changes"
    change_table: str
    source: str
    target: str

    def render(self) -> str:
        return (f"-- replay {self.change_table} into {self.target}: for each batch of captured keys, delete the "
                f"rows gone from {self.source}, upsert the others through the transform")

    def reverse(self) -> list[Action]:
        return []  # undone with the rows of the table it fills


@dataclass(frozen=True)
class Switch(Action):
    """Move the application's reads (and writes) to the new table; ``back`` describes the way back."""

    type: ClassVar[str] = "switch_reads"
    how: str  # view | rename | variable | http
    detail: str
    back: str

    def render(self) -> str:
        return f"-- switch reads ({self.how}): {self.detail}"

    def reverse(self) -> list[Action]:
        return [Note(f"switch back ({self.how}): {self.back}")]


@dataclass(frozen=True)
class GuardWrites(Action):
    """Make a table refuse writes (read-only trigger; optionally REVOKE from roles)."""

    type: ClassVar[str] = "guard_writes"
    table: str
    roles: tuple[str, ...] = ()

    def render(self) -> str:
        roles = f"; REVOKE INSERT, UPDATE, DELETE FROM {', '.join(self.roles)}" if self.roles else ""
        return f"-- make {self.table} read-only (a trigger refuses writes){roles}"


@dataclass(frozen=True)
class Note(Action):
    """Free text kept for the record (e.g. a legacy ledger row's description)."""

    type: ClassVar[str] = "note"
    text: str

    def render(self) -> str:
        return f"-- {self.text}"

    def reverse(self) -> list[Action]:
        return []


@dataclass(frozen=True)
class ActionPlan:
    """The actions of one step: run in order (``do``), undone in order (``undo``), with how they run."""

    kind: str
    do: tuple[Action, ...]
    undo: tuple[Action, ...] = ()
    transactional: bool = True
    irreversible: bool = False
    format: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # kind-specific facts (e.g. a baseline), kept as is

    # -- what runs ---------------------------------------------------------------------------------
    def statements(self, which: str = "do") -> list[str]:
        return [a.sql for a in getattr(self, which) if isinstance(a, RunSql)]

    def checks(self, which: str = "do") -> list[str]:
        return [a.sql for a in getattr(self, which) if isinstance(a, Check)]

    def reverse(self) -> ActionPlan:
        """The plan that undoes this one: the recorded ``undo``, else each action's own reverse, newest first."""
        if self.irreversible:
            raise ValueError(f"a {self.kind} step marked irreversible has no reverse")
        undo: list[Action] = list(self.undo)
        if not undo:
            for action in reversed(self.do):
                reversed_action = action.reverse()
                if reversed_action is None:
                    raise ValueError(f"{action.type} action has no automatic reverse: {action.render()}")
                undo += reversed_action
        return ActionPlan(self.kind, tuple(undo), self.do, self.transactional, False, self.format, self.extra)

    def render(self) -> list[str]:
        """Lines for a dry run: what runs, then what would undo it."""
        lines = [line for action in self.do for line in action.render().splitlines()]
        if self.undo:
            lines.append("-- on rollback:")
            lines += [line for action in self.undo for line in action.render().splitlines()]
        return lines

    # -- the ledger's format -----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {"format": self.format, "kind": self.kind, "transactional": self.transactional,
                "irreversible": self.irreversible, "do": [a.to_json() for a in self.do],
                "undo": [a.to_json() for a in self.undo], **({"extra": self.extra} if self.extra else {})}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ActionPlan:
        if "format" not in data:
            return cls._from_format_1(data)
        return cls(kind=data["kind"], do=tuple(Action.from_json(a) for a in data.get("do", [])),
                   undo=tuple(Action.from_json(a) for a in data.get("undo", [])),
                   transactional=bool(data.get("transactional", True)),
                   irreversible=bool(data.get("irreversible", False)), format=int(data["format"]),
                   extra=dict(data.get("extra", {})))

    @classmethod
    def _from_format_1(cls, data: dict[str, Any]) -> ActionPlan:
        """Rows written before typed actions: a schema step's split SQL, or another kind's description."""
        kind = str(data.get("kind", "schema"))
        if kind == "schema":
            do: list[Action] = [*map(RunSql, data.get("up", [])), *map(Check, data.get("verify", []))]
            undo: list[Action] = [*map(RunSql, data.get("down", [])), *map(Check, data.get("verify_down", []))]
        else:
            do = [Note(str(line)) for line in data.get("up", [])]
            undo = [DeleteRows(data["target"], "the table was empty when the backfill began")] if data.get("target") \
                else [Note(str(line)) for line in data.get("down", [])]
        known = {"kind", "up", "down", "verify", "verify_down", "transactional", "irreversible"}
        return cls(kind, tuple(do), tuple(undo), bool(data.get("transactional", True)),
                   bool(data.get("irreversible", False)), 1, {k: v for k, v in data.items() if k not in known})
