"""The Airflow home of a local run (``airflow-migrate run`` and ``demo``): created, checked and tidied up.

A local run resets the Airflow metadata database of its home (``airflow db reset``). Pointed at a real
deployment's home that would drop its metadata, so a run only ever uses a home it created itself:

- no ``--airflow-home``: a fresh directory in the temp dir, removed after the run (``--keep-home`` keeps it);
- ``--airflow-home X``: X is created when missing; an empty X is fine; an X that carries :data:`MARKER` (left by
  an earlier run) is reused and reset; any other non-empty X is refused (:class:`AirflowHomeRefused`).

The marker is written before anything else goes into the home. File backups default to
``<home>/migration_backups`` (``core.backup.strategy``): removing a temporary home keeps them, since the
ledger points at them.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from airflow_migrate_provider.errors import AirflowHomeRefused

MARKER = ".airflow-migrate-home"
MARKER_TEXT = ("Created by airflow-migrate for local runs: its Airflow metadata database is reset by every run.\n"
               "Do not use this directory as the home of a real Airflow deployment.\n")
KEPT_ON_REMOVAL = "migration_backups"  # file backups the ledger refers to (core.backup.strategy.default_location)


@dataclass(frozen=True)
class LocalHome:
    """The home a local run uses; ``temporary``: made in the temp dir by this run (removed afterwards)."""

    path: Path
    temporary: bool


def prepare_home(home: str | Path | None) -> LocalHome:
    """A home this command may reset: a new temporary one, or ``home`` (absolute, created if missing) when it
    is missing, empty or marked by an earlier run. Raises AirflowHomeRefused for anything else."""
    if home is None:
        path = Path(tempfile.mkdtemp(prefix="airflow-migrate-home-"))
        _mark(path)
        return LocalHome(path, temporary=True)
    path = Path(home).expanduser().resolve()
    _check_ours(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AirflowHomeRefused(f"--airflow-home {path}: cannot create it ({exc.strerror or exc}); give a "
                                 f"directory you can write, or leave --airflow-home out") from exc
    _mark(path)
    return LocalHome(path, temporary=False)


def _check_ours(path: Path) -> None:
    if not path.exists() or (path / MARKER).is_file():
        return
    if not path.is_dir():
        raise AirflowHomeRefused(f"--airflow-home {path} is a file, not a directory; give a new or empty "
                                 f"directory, or leave --airflow-home out to use a temporary one")
    try:
        empty = next(path.iterdir(), None) is None
    except OSError as exc:
        raise AirflowHomeRefused(f"--airflow-home {path}: cannot read it ({exc.strerror or exc})") from exc
    if not empty:
        raise AirflowHomeRefused(
            f"--airflow-home {path} is not empty and was not created by airflow-migrate (it has no {MARKER} "
            f"file): a run resets the Airflow metadata database in its home, which would wipe a real Airflow "
            f"deployment's. Give a new or empty directory (it is marked and may be reused by later runs), or "
            f"leave --airflow-home out to use a temporary one.")


def _mark(path: Path) -> None:
    marker = path / MARKER
    if not marker.is_file():
        marker.write_text(MARKER_TEXT, encoding="utf-8")


def remove_home(home: LocalHome) -> Path | None:
    """Remove a temporary home after its run, except the file backups in it (the ledger refers to them):
    returns where they were kept, or None when the whole home went."""
    if not home.temporary:
        raise ValueError(f"{home.path} was not created as a temporary home; it is never removed")
    backups = home.path / KEPT_ON_REMOVAL
    if not (backups.is_dir() and any(backups.iterdir())):
        shutil.rmtree(home.path, ignore_errors=True)
        return None
    for entry in home.path.iterdir():
        if entry == backups:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
    return backups
