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
)
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
            verified=m["verified"], error=m["error"],
        )


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
        return HISTORY_TABLE in names and LOCK_TABLE in names

    def ensure(self) -> None:
        """Create the ledger tables if missing (safe when two workers race to do it)."""
        for attempt in range(3):
            try:
                metadata.create_all(self.engine, checkfirst=True)
                return
            except (sa_exc.IntegrityError, sa_exc.ProgrammingError, sa_exc.OperationalError):
                if attempt == 2:  # another worker created some of them meanwhile: checkfirst skips those now
                    raise

    # -- history --------------------------------------------------------------------------------
    def start(self, step_id: str, action: str, checksum: str, actions: ActionPlan | dict[str, Any],
              who: RunIdentity, conn: Connection | None = None) -> tuple[int, datetime]:
        """Record that an apply/revert began, in its own committed transaction (or in ``conn``'s):
        (row id, start time)."""
        if conn is None:
            with self.engine.begin() as own:
                return self.start(step_id, action, checksum, actions, who, conn=own)
        started = utcnow()
        recorded = actions.to_json() if isinstance(actions, ActionPlan) else actions
        result = conn.execute(insert(history).values(
            plan_id=self.plan_id, step_id=step_id, action=action, status="running", checksum=checksum,
            sql=json.dumps(recorded), progress=0, started_at=started, dag_id=who.dag_id,
            run_id=who.run_id, try_number=who.try_number,
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
        """Every history row of this plan, oldest first."""
        stmt = select(history).where(history.c.plan_id == self.plan_id).order_by(history.c.id)
        if step_id is not None:
            stmt = stmt.where(history.c.step_id == step_id)
        with self.engine.connect() as conn:
            return [HistoryRow.from_row(r) for r in conn.execute(stmt)]

    def applied(self) -> dict[str, HistoryRow]:
        """Steps currently applied in the target: step id → the apply row that applied them.

        A step is applied when its latest completed apply is newer than its latest completed revert.
        Failed or interrupted attempts of transactional steps left nothing behind, so they don't count;
        a failed non-transactional apply that ran some statements counts as (partly) applied.
        """
        current: dict[str, HistoryRow] = {}
        for row in self.rows():
            if row.action == "apply" and (
                row.status == "applied" or (row.status in ("failed", "running") and row.progress > 0)
            ):
                current[row.step_id] = row
            elif row.action == "revert" and row.status == "reverted":
                current.pop(row.step_id, None)
        return current

    def applied_by_run(self, who: RunIdentity) -> list[HistoryRow]:
        """Steps applied by this dag run (any try) and still applied, newest first: the rollback stack."""
        mine = [r for r in self.applied().values() if r.dag_id == who.dag_id and r.run_id == who.run_id]
        return sorted(mine, key=lambda r: r.id, reverse=True)

    # -- lock -----------------------------------------------------------------------------------
    def acquire_lock(self, owner: RunIdentity, ttl_seconds: int) -> Lease:
        """Take the plan's lock for ``owner``'s run, re-enter it if the run already holds it, or take over
        an expired one. Raises LockHeld naming the holder when another live run has it."""
        for _ in range(5):
            now = utcnow()
            token = str(uuid.uuid4())
            expires = now + timedelta(seconds=ttl_seconds)
            values = dict(holder_run=owner.run_key, holder=owner.describe(), token=token,
                          renewed_at=now, expires_at=expires)
            try:
                with self.engine.begin() as conn:
                    conn.execute(insert(lock).values(plan_id=self.plan_id, acquired_at=now, **values))
                return Lease(self.plan_id, owner, token, expires)
            except sa_exc.IntegrityError:
                pass
            with self.engine.connect() as conn:
                row = conn.execute(select(lock).where(lock.c.plan_id == self.plan_id)).first()
            if row is None:
                continue  # released between our insert and our read: try again
            held = row._mapping
            same_run = held["holder_run"] == owner.run_key
            expired = as_utc(held["expires_at"]) <= now
            if not (same_run or expired):
                raise LockHeld(self.plan_id, held["holder"], as_utc(held["expires_at"]).isoformat())
            if not same_run and self.holder_present():
                raise LockHeld(self.plan_id, f"{held['holder']} (its lock expired at "
                                             f"{as_utc(held['expires_at']).isoformat()}, but a task of that run is "
                                             f"still connected to the database)", "that task ends")
            if not same_run:
                values["acquired_at"] = now
            with self.engine.begin() as conn:
                swapped = conn.execute(
                    update(lock).where(lock.c.plan_id == self.plan_id, lock.c.token == held["token"])
                    .values(**values)
                ).rowcount
            if swapped == 1:
                if same_run:
                    return Lease(self.plan_id, owner, token, expires, reentered=True)
                log.warning("Took over the expired lock of plan '%s' from %s (expired %s)",
                            self.plan_id, held["holder"], as_utc(held["expires_at"]).isoformat())
                return Lease(self.plan_id, owner, token, expires, took_over_from=held["holder"])
        raise LockHeld(self.plan_id, "another run (the lock changed hands repeatedly)", "unknown")

    def presence(self) -> AbstractContextManager[bool]:
        """While a task of the lock's holder works: a lock the database frees when the task's session ends (MySQL's
        GET_LOCK), so an expired lock is not taken over from a run that is still alive. Yields whether this
        task holds it (a no-op where the database has no such lock)."""
        return dialect_of(self.engine).presence_lock(self.engine, self._presence_name)

    def holder_present(self) -> bool:
        """True when a task of the lock's holder is known to be connected (False when gone or unknowable)."""
        return bool(dialect_of(self.engine).presence_held(self.engine, self._presence_name))

    @property
    def _presence_name(self) -> str:
        return f"{self.engine.url.database}/{self.plan_id}"

    def renew_lock(self, lease: Lease, ttl_seconds: int) -> Lease:
        """Push the lease's expiry forward; LockLost if someone else took the lock meanwhile."""
        now = utcnow()
        expires = now + timedelta(seconds=ttl_seconds)
        with self.engine.begin() as conn:
            renewed = conn.execute(
                update(lock).where(lock.c.plan_id == self.plan_id, lock.c.token == lease.token)
                .values(renewed_at=now, expires_at=expires)
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
