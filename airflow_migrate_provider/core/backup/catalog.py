"""The backups catalog: one ledger row per backup with its manifest (tables, row counts, checksums, size,
location, duration, the run that made it). Restores are verified against it; retention reads it."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.backup.tables import Fingerprint, TableDefinition
from airflow_migrate_provider.core.ledger import Ledger, RunIdentity, as_utc, backups, utcnow
from airflow_migrate_provider.errors import BackupFailed


@dataclass
class TableManifest:
    """One table as it was when backed up. ``present`` false: the table did not exist (a step creates it),
    so restoring means dropping it."""

    table: str
    present: bool
    rows: int = 0
    checksum: str = ""
    definition: dict[str, Any] | None = None
    stored_as: str = ""  # where the copy is: snapshot table, or the table's name in the backup file
    segments: list[list[int]] | None = None  # Fingerprint.segments of the copy (None: restores compare it whole)
    quick: dict[str, Any] | None = None  # Fingerprint.quick of the copy: the restore's cheap first pass

    @property
    def fingerprint(self) -> Fingerprint:
        return Fingerprint(self.rows, self.checksum)

    @property
    def table_definition(self) -> TableDefinition:
        assert self.definition is not None, f"table {self.table} was absent: it has no definition"
        return TableDefinition.from_json(self.definition)

    @property
    def structure(self) -> str:
        return self.definition["structure"] if self.definition else ""


@dataclass
class Backup:
    id: str
    plan_id: str
    strategy: str
    status: str
    location: str
    tables: list[TableManifest]
    created_at: datetime
    dag_id: str
    run_id: str
    try_number: int = 1
    size_bytes: int | None = None
    duration_s: float | None = None
    finished_at: datetime | None = None
    run_outcome: str | None = None
    expires_at: datetime | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def run_key(self) -> str:
        return f"{self.dag_id}/{self.run_id}"

    def table(self, name: str) -> TableManifest:
        for t in self.tables:
            if t.table == name:
                return t
        raise KeyError(name)

    @classmethod
    def from_row(cls, row: Any) -> Backup:
        m = dict(row._mapping)
        m["tables"] = [TableManifest(**t) for t in json.loads(m["tables"])]
        for key in ("created_at", "finished_at", "expires_at"):
            m[key] = as_utc(m[key]) if m[key] else None
        return cls(**m)


def new_backup_id(when: datetime) -> str:
    return f"{when:%Y%m%dT%H%M%S}-{secrets.token_hex(3)}"


class BackupCatalog:
    """Reads and writes one plan's backup manifests in the ledger of its target database."""

    def __init__(self, engine: Engine, plan_id: str):
        self.engine, self.plan_id = engine, plan_id

    def ensure(self) -> None:
        Ledger(self.engine, self.plan_id).ensure()

    def begin(self, backup_id: str, strategy: str, location: str, who: RunIdentity) -> datetime:
        created = utcnow()
        with self.engine.begin() as conn:
            conn.execute(insert(backups).values(
                id=backup_id, plan_id=self.plan_id, strategy=strategy, status="creating", location=location,
                tables="[]", created_at=created, dag_id=who.dag_id, run_id=who.run_id, try_number=who.try_number))
        return created

    def finish(self, backup_id: str, status: str, *, tables: list[TableManifest] | None = None,
               size_bytes: int | None = None, duration_s: float | None = None, error: str | None = None) -> None:
        values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
        if tables is not None:
            values["tables"] = json.dumps([asdict(t) for t in tables])
        if size_bytes is not None:
            values["size_bytes"] = size_bytes
        if duration_s is not None:
            values["duration_s"] = duration_s
        self._update(backup_id, **values)

    def _update(self, backup_id: str, **values: Any) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(backups).where(backups.c.id == backup_id).values(**values))

    def all(self) -> list[Backup]:
        """Every backup of the plan, newest first."""
        stmt = select(backups).where(backups.c.plan_id == self.plan_id).order_by(backups.c.created_at.desc())
        with self.engine.connect() as conn:
            return [Backup.from_row(r) for r in conn.execute(stmt)]

    def get(self, backup_id: str) -> Backup:
        with self.engine.connect() as conn:
            row = conn.execute(select(backups).where(backups.c.id == backup_id,
                                                     backups.c.plan_id == self.plan_id)).first()
        if row is None:
            known = ", ".join(b.id for b in self.all()[:10]) or "none"
            raise BackupFailed(f"plan '{self.plan_id}' has no backup '{backup_id}' (its backups: {known}); "
                               f"see `airflow-migrate backups list`")
        return Backup.from_row(row)

    def verified_for_run(self, who: RunIdentity) -> Backup | None:
        """The newest verified backup this dag run made, if any."""
        for backup in self.all():
            if backup.dag_id == who.dag_id and backup.run_id == who.run_id and backup.status == "verified":
                return backup
        return None

    def mark_run_succeeded(self, who: RunIdentity, keep_days: int | None, inherited: list[str] | None = None
                           ) -> list[str]:
        """Record that the run which made these backups succeeded (and so the dead runs it took over, named by
        ``inherited`` run keys, are complete too); with ``keep_days`` they expire then."""
        expires = utcnow() + timedelta(days=keep_days) if keep_days is not None else None
        runs = {who.run_key, *(inherited or [])}
        marked = [b.id for b in self.all() if b.run_key in runs and b.status == "verified"]
        for backup_id in marked:
            self._update(backup_id, run_outcome="success", expires_at=expires)
        return marked

    def mark_pruned(self, backup_id: str) -> None:
        self._update(backup_id, status="pruned")
