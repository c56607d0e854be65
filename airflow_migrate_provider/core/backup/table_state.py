"""One table compared with a backup's manifest (shared by compare, sync, the segment restore and the report)."""

from __future__ import annotations

from dataclasses import dataclass

from airflow_migrate_provider.core.backup.catalog import TableManifest


@dataclass
class TableState:
    """One table compared with the backup's manifest. ``segments``: the differing segments, when the table was
    compared segment by segment (segments.py); ``staged``: their backed-up rows; ``written``: rows the restore's
    statements wrote to it."""

    table: str
    expected: str
    actual: str
    equal: bool
    structure_equal: bool = True
    action: str = ""
    segments: list[int] | None = None
    staged: str | None = None
    written: int = 0
    written_before: int | None = None  # the database's count of rows written by the transaction, when compared


def expected_text(manifest: TableManifest) -> str:
    return str(manifest.fingerprint) if manifest.present else "absent"
