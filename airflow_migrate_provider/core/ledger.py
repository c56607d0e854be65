"""The ledger: migration history and the run lock, stored as tables in the target database.

State lives here, not in XCom, so that clearing and re-running a task on any worker continues from
what really happened in the database. Two tables:

- ``airflow_migrate_history``: one row per attempt to apply or revert a step, with the checksum of the
  step's SQL, the SQL actually run, who ran it (dag/run/try), when, how long, and any error.
- ``airflow_migrate_lock``: at most one row per plan; the run that holds it, and until when.
- ``airflow_migrate_backfill``: per backfill step and key-range chunk, the last key copied.
- ``airflow_migrate_backups``: one row per backup, with its manifest (see core/backup/catalog.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    case,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine

from airflow_migrate_provider.core.actions import ActionPlan
from airflow_migrate_provider.core.dialects import dialect_of, precise_timestamp
from airflow_migrate_provider.errors import LockHeld, LockLost

log = logging.getLogger(__name__)

HISTORY_TABLE = "airflow_migrate_history"
LOCK_TABLE = "airflow_migrate_lock"
BACKFILL_TABLE = "airflow_migrate_backfill"
BACKUPS_TABLE = "airflow_migrate_backups"

metadata = MetaData()
history = Table(
    HISTORY_TABLE,
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("plan_id", String(63), nullable=False, index=True),
    Column("step_id", String(63), nullable=False),
    Column("action", String(16), nullable=False),  # apply | revert
    Column("status", String(16), nullable=False),  # running | applied | reverted | failed
    Column("checksum", String(64), nullable=False),
    Column("sql", Text, nullable=False),  # JSON of the actions, so a revert uses what was applied
    Column("progress", Integer, nullable=False, default=0),  # statements done (non-transactional steps)
    Column("started_at", precise_timestamp(), nullable=False),
    Column("finished_at", precise_timestamp()),
    Column("duration_s", Float),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("try_number", Integer, nullable=False),
    Column("verified", Text),
    Column("error", Text),
    Column("resumed_from", Integer),  # the row of another run whose partly done work this row carried on
)
lock = Table(
    LOCK_TABLE,
    metadata,
    Column("plan_id", String(63), primary_key=True),
    Column("holder_run", String(500), nullable=False),
    Column("holder", String(1000), nullable=False),
    Column("token", String(36), nullable=False),
    Column("acquired_at", precise_timestamp(), nullable=False),
    Column("renewed_at", precise_timestamp(), nullable=False),
    Column("expires_at", precise_timestamp(), nullable=False),
    # the task working for the holder right now (null between tasks): its process and its database session
    Column("holder_host", String(255)),
    Column("holder_pid", Integer),
    Column("holder_backend", BigInteger),
)
# columns added after the first release: ensure() adds them to ledger tables made before (ALTER TABLE ADD COLUMN)
ADDED_COLUMNS = {HISTORY_TABLE: ("resumed_from",), LOCK_TABLE: ("holder_host", "holder_pid", "holder_backend")}
# backfill checkpoints, written in the same transaction as the copied rows (see core/backfill/state.py)
checkpoints = Table(
    BACKFILL_TABLE,
    metadata,
    Column("plan_id", String(63), primary_key=True),
    Column("step_id", String(63), primary_key=True),
    Column("chunk", Integer, primary_key=True),  # -1: the step's phase state
    Column("lo", Text),  # JSON key, exclusive (null: from the first key)
    Column("hi", Text),  # JSON key, inclusive (null: nothing to copy)
    Column("position", Text),  # JSON key of the last copied row (null: nothing copied yet)
    Column("rows_total", BigInteger, nullable=False, default=0),
    Column("rows_copied", BigInteger, nullable=False, default=0),
    Column("status", String(16), nullable=False),  # pending | done
    Column("phase_state", Text),  # JSON: cutoffs, phase 2 bounds (step row only)
    Column("run_id", String(250)),
    Column("updated_at", precise_timestamp(), nullable=False),
)

# backup manifests: what was backed up, where, and the checksums a restore is verified against
backups = Table(
    BACKUPS_TABLE,
    metadata,
    Column("id", String(40), primary_key=True),
    Column("plan_id", String(63), nullable=False, index=True),
    Column("strategy", String(16), nullable=False),
    Column("status", String(16), nullable=False),  # creating | verified | failed | pruned
    Column("location", Text, nullable=False),
    Column("tables", Text, nullable=False),  # JSON list of TableManifest
    Column("size_bytes", BigInteger),
    Column("duration_s", Float),
    Column("created_at", precise_timestamp(), nullable=False),
    Column("finished_at", precise_timestamp()),
    Column("dag_id", String(250), nullable=False),
    Column("run_id", String(250), nullable=False),
    Column("try_number", Integer, nullable=False),
    Column("run_outcome", String(16)),  # success once the run that made it succeeded
    Column("expires_at", precise_timestamp()),  # keep_days_after_success after that success
    Column("error", Text),
)


LOCK_ROW_STEP = "(lock)"  # history rows about the lock itself (takeover, unlock), not about a step
UNFINISHED = ("failed", "running", "abandoned")  # an apply in one of these with progress > 0 is partly applied
_upgraded: set[str] = set()
_upgrade_lock = threading.Lock()


def upgrade_columns(engine: Engine) -> None:
    """Add the columns of :data:`ADDED_COLUMNS` to ledger tables made by an earlier version (once per engine URL;
    safe when two workers race: a column another one added meanwhile is taken as added)."""
    from sqlalchemy import inspect

    key = engine.url.render_as_string(hide_password=True)
    with _upgrade_lock:
        if key in _upgraded:
            return
        insp = inspect(engine)
        for table_name, names in ADDED_COLUMNS.items():
            have = {c["name"] for c in insp.get_columns(table_name)} if insp.has_table(table_name) else set(names)
            for name in names:
                if name not in have:
                    _add_column(engine, metadata.tables[table_name].c[name])
        _upgraded.add(key)


def _add_column(engine: Engine, column: Column[Any]) -> None:
    quote = engine.dialect.identifier_preparer.quote
    ddl = (f"ALTER TABLE {quote(column.table.name)} ADD COLUMN {quote(column.name)} "
           f"{column.type.compile(dialect=engine.dialect)}")
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql(ddl)
        log.info("ledger upgraded: %s", ddl)
    except (sa_exc.ProgrammingError, sa_exc.OperationalError) as exc:
        from sqlalchemy import inspect

        if column.name not in {c["name"] for c in inspect(engine).get_columns(column.table.name)}:
            raise
        log.debug("column %s.%s was added meanwhile: %s", column.table.name, column.name, exc)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(value: datetime) -> datetime:
    """SQLite hands timestamps back naive; everything we store is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class RunIdentity:
    """Who is acting: the Airflow dag/run/try (or the CLI standing in for them)."""

    dag_id: str
    run_id: str
    try_number: int = 1
    host: str = ""
    pid: int = 0

    @property
    def run_key(self) -> str:
        return f"{self.dag_id}/{self.run_id}"

    def describe(self) -> str:
        where = f" on {self.host} pid {self.pid}" if self.host else ""
        return f"dag '{self.dag_id}' run '{self.run_id}' try {self.try_number}{where}"


@dataclass(frozen=True)
class HistoryRow:
    """One ledger row, as read back."""

    id: int
    plan_id: str
    step_id: str
    action: str
    status: str
    checksum: str
    actions: ActionPlan  # what the step ran and what undoes it, as recorded at the time
    progress: int
    started_at: datetime
    finished_at: datetime | None
    duration_s: float | None
    dag_id: str
    run_id: str
    try_number: int
    verified: str | None
    error: str | None
    resumed_from: int | None = None

    @property
    def run_key(self) -> str:
        return f"{self.dag_id}/{self.run_id}"

    @property
    def by(self) -> str:
        return f"dag '{self.dag_id}' run '{self.run_id}' try {self.try_number}"

    @classmethod
    def from_row(cls, row: Any) -> HistoryRow:
        m = row._mapping
        return cls(
            id=m["id"], plan_id=m["plan_id"], step_id=m["step_id"], action=m["action"], status=m["status"],
            checksum=m["checksum"], actions=ActionPlan.from_json(json.loads(m["sql"])), progress=m["progress"] or 0,
            started_at=as_utc(m["started_at"]),
            finished_at=as_utc(m["finished_at"]) if m["finished_at"] else None,
            duration_s=m["duration_s"], dag_id=m["dag_id"], run_id=m["run_id"], try_number=m["try_number"],
            verified=m["verified"], error=m["error"], resumed_from=m.get("resumed_from"),
        )


@dataclass(frozen=True)
class HolderState:
    """What is known of a lock holder: ``alive`` True/False, or None when nothing tells (then the expiry decides)."""

    alive: bool | None
    why: str
    expired: bool

    @property
    def gone(self) -> bool:
        return self.alive is False or (self.expired and not self.alive)

    def describe(self) -> str:
        parts = [f"dead: {self.why}"] if self.alive is False else [self.why] if self.alive and self.why else []
        return "; ".join(parts + (["lock expired"] if self.expired else []))


def holder_state(engine: Engine, held: dict[str, Any], now: datetime | None = None) -> HolderState:
    """Is the lock ``held`` (a lock row) held by a live task? Its process, when it ran on this host; its database
    session, when the database can tell; else unknown."""
    expired = as_utc(held["expires_at"]) <= (now or utcnow())
    host, pid, backend = held.get("holder_host"), held.get("holder_pid"), held.get("holder_backend")
    process = process_alive(int(pid)) if pid and host == socket.gethostname() else None
    if process is False:
        return HolderState(False, f"pid {pid} gone on {host}", expired)
    if backend is not None and process is None:
        session = dialect_of(engine).backend_alive(engine, int(backend))
        if session is False:
            return HolderState(False, f"its database session {backend} is gone", expired)
        if session:
            return HolderState(True, f"working in database session {backend}", expired)
    if process:
        return HolderState(True, f"pid {pid} running on {host}", expired)
    return HolderState(None, "" if pid or backend else "between tasks", expired)


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True


@dataclass(frozen=True)
class LockEvent:
    """A takeover or an unlock, as recorded in the history (step ``(lock)``)."""

    id: int
    action: str  # takeover | unlock
    run_key: str  # the run (or command) that took the lock over / dropped it
    at: datetime
    detail: dict[str, Any]

    @property
    def from_run(self) -> str | None:
        return self.detail.get("from_run")

    @property
    def inherits(self) -> bool:
        return bool(self.detail.get("inherits"))

    @classmethod
    def from_row(cls, row: Any) -> LockEvent:
        m = row._mapping
        return cls(m["id"], m["action"], f"{m['dag_id']}/{m['run_id']}", as_utc(m["started_at"]),
                   json.loads(m["verified"] or "{}"))


@dataclass(frozen=True)
class Lease:
    """Proof that a run holds the plan's lock; renewing it needs the token."""

    plan_id: str
    owner: RunIdentity
    token: str
    expires_at: datetime
    took_over_from: str | None = None
    reentered: bool = False


class Ledger:
    """Reads and writes the history and lock tables of one plan in one target database."""

    def __init__(self, engine: Engine, plan_id: str):
        self.engine = engine
        self.plan_id = plan_id

    # -- tables ---------------------------------------------------------------------------------
    def exists(self) -> bool:
        from sqlalchemy import inspect

        names = set(inspect(self.engine).get_table_names())
        found = HISTORY_TABLE in names and LOCK_TABLE in names
        if found:
            upgrade_columns(self.engine)
        return found

    def ensure(self) -> None:
        """Create the ledger tables if missing (safe when two workers race to do it), and add the columns
        a ledger made by an earlier version lacks."""
        for attempt in range(3):
            try:
                metadata.create_all(self.engine, checkfirst=True)
                break
            except (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.OperationalError):
                if attempt == 2:  # another worker created some of them meanwhile: checkfirst skips those now
                    raise
        upgrade_columns(self.engine)

    # -- history --------------------------------------------------------------------------------
    def start(self, step_id: str, action: str, checksum: str, actions: ActionPlan | dict[str, Any],
              who: RunIdentity, conn: Connection | None = None, *, resumed_from: HistoryRow | None = None
              ) -> tuple[int, datetime]:
        """Record that an apply/revert began, in its own committed transaction (or in ``conn``'s):
        (row id, start time). ``resumed_from``: the partly done row this one carries on (its progress too)."""
        if conn is None:
            with self.engine.begin() as own:
                return self.start(step_id, action, checksum, actions, who, conn=own, resumed_from=resumed_from)
        started = utcnow()
        recorded = actions.to_json() if isinstance(actions, ActionPlan) else actions
        result = conn.execute(insert(history).values(
            plan_id=self.plan_id, step_id=step_id, action=action, status="running", checksum=checksum,
            sql=json.dumps(recorded), progress=resumed_from.progress if resumed_from else 0, started_at=started,
            dag_id=who.dag_id, run_id=who.run_id, try_number=who.try_number,
            resumed_from=resumed_from.id if resumed_from else None,
        ))
        return int(result.inserted_primary_key[0]), started

    def finish(self, row_id: int, status: str, *, started_at: datetime, verified: str | None = None,
               error: str | None = None, conn: Connection | None = None) -> None:
        """Close a history row; pass ``conn`` to commit it together with the step's own transaction."""
        now = utcnow()
        stmt = update(history).where(history.c.id == row_id).values(
            status=status, finished_at=now, duration_s=(now - started_at).total_seconds(),
            verified=verified, error=error,
        )
        if conn is not None:
            conn.execute(stmt)
        else:
            with self.engine.begin() as own:
                own.execute(stmt)

    def record_progress(self, row_id: int, statements_done: int, conn: Connection | None = None) -> None:
        stmt = update(history).where(history.c.id == row_id).values(progress=statements_done)
        if conn is not None:
            conn.execute(stmt)
        else:
            with self.engine.begin() as own:
                own.execute(stmt)

    def rows(self, step_id: str | None = None) -> list[HistoryRow]:
        """Every history row of this plan's steps, oldest first (the lock's own rows: :meth:`lock_events`)."""
        stmt = select(history).where(history.c.plan_id == self.plan_id, history.c.step_id != LOCK_ROW_STEP
                                     ).order_by(history.c.id)
        if step_id is not None:
            stmt = stmt.where(history.c.step_id == step_id)
        with self.engine.connect() as conn:
            return [HistoryRow.from_row(r) for r in conn.execute(stmt)]

    def applied(self) -> dict[str, HistoryRow]:
        """Steps currently applied in the target: step id → the apply row that applied them.

        A step is applied when its latest completed apply is newer than its latest completed revert.
        Failed or interrupted attempts of transactional steps left nothing behind, so they don't count;
        a failed (or abandoned: its run died) non-transactional apply that ran some statements counts as
        (partly) applied.
        """
        current: dict[str, HistoryRow] = {}
        for row in self.rows():
            if row.action == "apply" and (
                row.status == "applied" or (row.status in UNFINISHED and row.progress > 0)
            ):
                current[row.step_id] = row
            elif row.action == "revert" and row.status == "reverted":
                current.pop(row.step_id, None)
        return current

    def applied_by_run(self, who: RunIdentity) -> list[HistoryRow]:
        """Steps applied by this dag run (any try), or by the dead runs it took over (see :meth:`run_chain`), and
        still applied, newest first: the rollback stack."""
        chain = set(self.run_chain(who.run_key))
        mine = [r for r in self.applied().values() if r.run_key in chain]
        return sorted(mine, key=lambda r: r.id, reverse=True)

    def carry_on(self, row: HistoryRow, who: RunIdentity) -> HistoryRow:
        """``who`` carries on a step another run left part way (its run died): a new row of ``who``'s run, with the
        progress so far, pointing back at ``row``; ``row`` itself is closed as abandoned if still running.
        Returns the row to finish (``row`` itself when it already is this run's or is finished)."""
        if row.status == "applied" or row.run_key == who.run_key:
            return row
        with self.engine.begin() as conn:
            conn.execute(update(history).where(history.c.id == row.id, history.c.status == "running").values(
                status="abandoned", finished_at=utcnow(), error=f"carried on by {who.describe()}"))
            new_id, _ = self.start(row.step_id, row.action, row.checksum, row.actions, who, conn=conn,
                                   resumed_from=row)
        log.info("step '%s': carrying on the work %s left part way (ledger row %d, now row %d)", row.step_id,
                 row.by, row.id, new_id)
        return next(r for r in self.rows(row.step_id) if r.id == new_id)

    def workers(self, row: HistoryRow) -> list[HistoryRow]:
        """The rows of every run that worked on ``row``'s apply, first to last (``row`` last)."""
        by_id = {r.id: r for r in self.rows(row.step_id)}
        found, seen = [row], {row.id}
        while found[0].resumed_from is not None and found[0].resumed_from in by_id \
                and found[0].resumed_from not in seen:
            seen.add(found[0].resumed_from)
            found.insert(0, by_id[found[0].resumed_from])
        return found

    # -- lock -----------------------------------------------------------------------------------
    def acquire_lock(self, owner: RunIdentity, ttl_seconds: int, *, inherit: bool = True) -> Lease:
        """Take the plan's lock for ``owner``'s run, re-enter it if the run already holds it, or take over one
        whose holder is gone: expired, or dead at once (its process gone on this host, its database session
        gone). Raises LockHeld naming the holder when another live run has it.

        Taking over from a run that never completed, a migration run (``inherit``) inherits that run's applied
        steps and backup: its rollback goes back to the state before the first run that did not complete."""
        for _ in range(5):
            now = utcnow()
            token = str(uuid.uuid4())
            expires = now + timedelta(seconds=ttl_seconds)
            values = dict(holder_run=owner.run_key, holder=owner.describe(), token=token, renewed_at=now,
                          expires_at=expires, holder_host=None, holder_pid=None, holder_backend=None)
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(lock).values(plan_id=self.plan_id, acquired_at=now, **values))
                return Lease(self.plan_id, owner, token, expires,
                             took_over_from=self._claim_orphan(owner) if inherit else None)
            except sa_exc.IntegrityError:
                pass
            with self.engine.connect() as conn:
                row = conn.execute(select(lock).where(lock.c.plan_id == self.plan_id)).first()
            if row is None:
                continue  # released between our insert and our read: try again
            held = dict(row._mapping)
            same_run = held["holder_run"] == owner.run_key
            state = None if same_run else self._check_gone(held, now)
            if not same_run:
                values["acquired_at"] = now
            with self.engine.begin() as conn:
                swapped = conn.execute(
                    update(lock).where(lock.c.plan_id == self.plan_id, lock.c.token == held["token"])
                    .values(**values)
                ).rowcount
            if swapped == 1:
                if state is None:
                    return Lease(self.plan_id, owner, token, expires, reentered=True)
                self._after_takeover(owner, held, state, inherit)
                return Lease(self.plan_id, owner, token, expires, took_over_from=held["holder"])
        raise LockHeld(self.plan_id, "another run (the lock changed hands repeatedly)", "unknown")

    def _check_gone(self, held: dict[str, Any], now: datetime) -> HolderState:
        """The holder's state when it may be taken over from; LockHeld when it may not."""
        state = holder_state(self.engine, held, now)
        if state.alive is False:
            return state
        until = as_utc(held["expires_at"]).isoformat()
        if not state.expired:
            raise LockHeld(self.plan_id, held["holder"] + (f" ({state.why})" if state.alive else ""), until)
        if self.holder_present():
            raise LockHeld(self.plan_id, f"{held['holder']} (its lock expired at {until}, but a task of that run is "
                                         f"still connected to the database)", "that task ends")
        return state

    def _after_takeover(self, owner: RunIdentity, held: dict[str, Any], state: HolderState, inherit: bool) -> None:
        """End what the gone holder still runs, close its unfinished rows, record the takeover."""
        ended = self._end_sessions(held)
        abandoned = self._abandon(held["holder_run"], f"its run died; lock taken over by {owner.describe()}")
        self._record_event("takeover", owner, {
            "from_run": held["holder_run"], "from_holder": held["holder"], "why": state.describe(),
            "inherits": inherit, "ended_sessions": ended, "abandoned_rows": abandoned})
        log.warning("Took over the %s lock of plan '%s' from %s (%s)%s%s",
                    "dead run's" if state.alive is False else "expired", self.plan_id, held["holder"],
                    state.describe(), f"; ended its database session(s) {ended} still running" if ended else "",
                    "; this run inherits its applied steps and backup" if inherit else "")

    def _end_sessions(self, held: dict[str, Any]) -> list[int]:
        pid, backend = held.get("holder_pid"), held.get("holder_backend")
        if not pid and backend is None:
            return []
        return dialect_of(self.engine).end_sessions(self.engine, held.get("holder_host") or "", int(pid or 0),
                                                    backend)

    def _abandon(self, run_key: str, why: str) -> list[int]:
        """Close the history rows the run (and the dead runs it had taken over) left running: abandoned."""
        chain = set(self.run_chain(run_key))
        left = [r.id for r in self.rows() if r.status == "running" and r.run_key in chain]
        if left:
            with self.engine.begin() as conn:
                conn.execute(update(history).where(history.c.id.in_(left), history.c.status == "running")
                             .values(status="abandoned", finished_at=utcnow(), error=why))
        return left

    # -- what runs took over from which: lock events in the history --------------------------------------
    def _record_event(self, action: str, who: RunIdentity, detail: dict[str, Any]) -> None:
        now = utcnow()
        with self.engine.begin() as conn:
            conn.execute(insert(history).values(
                plan_id=self.plan_id, step_id=LOCK_ROW_STEP, action=action, status="done", checksum="",
                sql=json.dumps(ActionPlan(kind="lock", do=()).to_json()), progress=0, started_at=now, finished_at=now,
                duration_s=0.0, dag_id=who.dag_id, run_id=who.run_id, try_number=who.try_number,
                verified=json.dumps(detail)))

    def lock_events(self) -> list[LockEvent]:
        """Takeovers and unlocks of this plan's lock, oldest first."""
        stmt = select(history).where(history.c.plan_id == self.plan_id, history.c.step_id == LOCK_ROW_STEP
                                     ).order_by(history.c.id)
        with self.engine.connect() as conn:
            return [LockEvent.from_row(r) for r in conn.execute(stmt)]

    def run_chain(self, run_key: str) -> list[str]:
        """``run_key`` and the runs it inherited (by taking over from them, and what they had inherited), oldest
        first: the runs whose applied steps a rollback of ``run_key`` reverts."""
        inherited: dict[str, list[str]] = {}
        for event in self.lock_events():
            if event.inherits and event.from_run:
                inherited.setdefault(event.run_key, []).append(event.from_run)
        chain: list[str] = []

        def visit(key: str) -> None:
            if key in chain:
                return
            chain.insert(0, key)
            for earlier in reversed(inherited.get(key, [])):
                visit(earlier)

        visit(run_key)
        return chain

    def _claim_orphan(self, owner: RunIdentity) -> str | None:
        """After ``unlock`` (or a takeover by a command that does not migrate), the run whose lock was dropped
        never completed: the next migration run to take the lock inherits it. Returns its holder description."""
        events = self.lock_events()
        last = events[-1] if events else None
        if last is None or last.inherits or not last.from_run:
            return None
        self._record_event("takeover", owner, {
            "from_run": last.from_run, "from_holder": last.detail.get("from_holder", last.from_run),
            "why": f"its lock was dropped ({last.action} by {last.detail.get('by', last.run_key)})",
            "inherits": True, "ended_sessions": [], "abandoned_rows": []})
        log.warning("plan '%s': the lock of %s was dropped (%s) before it completed; this run inherits its "
                    "applied steps and backup", self.plan_id, last.detail.get("from_holder"), last.action)
        return str(last.detail.get("from_holder", last.from_run))

    def unlock(self, by: str, held: dict[str, Any]) -> str:
        """Drop the lock ``held`` (as read by :meth:`lock_holder`) for ``by`` (user@host): its unfinished rows are
        closed as abandoned and the unlock is recorded, so the next run inherits what the holder applied."""
        with self.engine.begin() as conn:
            dropped = conn.execute(delete(lock).where(lock.c.plan_id == self.plan_id,
                                                      lock.c.token == held["token"])).rowcount
        if dropped != 1:
            raise LockLost(f"the lock of plan '{self.plan_id}' changed hands while unlocking (it was held by "
                           f"{held['holder']}); nothing was unlocked. Run `airflow-migrate status` and try again.")
        ended = self._end_sessions(held)
        abandoned = self._abandon(held["holder_run"], f"its lock was dropped by `airflow-migrate unlock` ({by})")
        who = RunIdentity("airflow-migrate-cli", f"unlock {by}", host=socket.gethostname(), pid=os.getpid())
        self._record_event("unlock", who, {
            "from_run": held["holder_run"], "from_holder": held["holder"], "by": by, "inherits": False,
            "expired_at": as_utc(held["expires_at"]).isoformat(), "ended_sessions": ended,
            "abandoned_rows": abandoned})
        log.warning("plan '%s': %s dropped the lock of %s", self.plan_id, by, held["holder"])
        return held["holder"]

    # -- the working task ---------------------------------------------------------------------------
    def mark_working(self, lease: Lease, host: str, pid: int, backend: int | None) -> None:
        """Record the task now working for the lease's run (its process and database session): when these die
        the lock can be taken over at once."""
        self._set_worker(lease, holder_host=host, holder_pid=pid, holder_backend=backend)

    def mark_idle(self, lease: Lease) -> None:
        """The task ended normally: between tasks the holder's liveness is unknown (the expiry decides)."""
        self._set_worker(lease, holder_host=None, holder_pid=None, holder_backend=None)

    def _set_worker(self, lease: Lease, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(lock).where(lock.c.plan_id == self.plan_id, lock.c.token == lease.token)
                         .values(**values))

    def hold_until(self, who: RunIdentity, until: datetime) -> bool:
        """Keep ``who``'s lock until at least ``until`` (a deferred task, with no process to renew it);
        True when the run holds the lock."""
        with self.engine.begin() as conn:
            conn.execute(update(lock).where(lock.c.plan_id == self.plan_id, lock.c.holder_run == who.run_key,
                                            lock.c.expires_at < until).values(expires_at=until))
            return conn.execute(select(lock.c.plan_id).where(
                lock.c.plan_id == self.plan_id, lock.c.holder_run == who.run_key)).first() is not None

    def presence(self) -> AbstractContextManager[bool]:
        """While a task of the lock's holder works: a lock the database frees when the task's session ends (MySQL's
        GET_LOCK), so an expired lock is not taken over from a run that is still alive. Yields whether this
        task holds it (a no-op where the database has no such lock)."""
        return dialect_of(self.engine).presence_lock(self.engine, self.presence_name)

    def holder_present(self) -> bool:
        """True when a task of the lock's holder is known to be connected (False when gone or unknowable)."""
        return bool(dialect_of(self.engine).presence_held(self.engine, self.presence_name))

    @property
    def presence_name(self) -> str:
        return f"{self.engine.url.database}/{self.plan_id}"

    def renew_lock(self, lease: Lease, ttl_seconds: int) -> Lease:
        """Push the lease's expiry forward; LockLost if someone else took the lock meanwhile."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl_seconds)
        with self.engine.begin() as conn:
            renewed = conn.execute(
                update(lock).where(lock.c.plan_id == self.plan_id, lock.c.token == lease.token)
                .values(renewed_at=now, expires_at=case((lock.c.expires_at < expires, expires),
                                                        else_=lock.c.expires_at))
            ).rowcount
        if renewed != 1:
            raise LockLost(
                f"the lock of plan '{self.plan_id}' held by {lease.owner.describe()} expired and was taken "
                f"by another run; stopping so two runs never migrate the same target at once"
            )
        return Lease(lease.plan_id, lease.owner, lease.token, expires, lease.took_over_from, lease.reentered)

    def release_lock(self, owner: RunIdentity) -> bool:
        """Drop the lock if ``owner``'s run holds it; True when a lock was released."""
        with self.engine.begin() as conn:
            return conn.execute(
                delete(lock).where(lock.c.plan_id == self.plan_id, lock.c.holder_run == owner.run_key)
            ).rowcount == 1

    def lock_holder(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(lock).where(lock.c.plan_id == self.plan_id)).first()
        return dict(row._mapping) if row else None
