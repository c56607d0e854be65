"""The run context: everything a step kind needs to act on one target, handed to it instead of a plan lookup.

One context per target database: its connection id, engine and dialect, its ledger, who is acting (the run
identity), the run lock to check before commits, and the source the plan reads from. A plan that runs over
several targets gets one context each; nothing below reads ``plan.connections.target`` itself.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.ledger import Ledger, RunIdentity
from airflow_migrate_provider.core.step_result import LockCheck, NoLockCheck

if TYPE_CHECKING:
    from airflow_migrate_provider.core.dialects import Dialect
    from airflow_migrate_provider.plan.model import Plan

REPORTS_ENV = "AIRFLOW_MIGRATE_REPORTS"


def report_dir(dag_id: str, run_id: str) -> Path:
    """Where a run's verification reports go: ``$AIRFLOW_MIGRATE_REPORTS`` (else ``$AIRFLOW_HOME/
    migration_reports``) / dag / run."""
    base = os.environ.get(REPORTS_ENV) or str(Path(os.environ.get("AIRFLOW_HOME", "~/airflow")).expanduser()
                                              / "migration_reports")
    return Path(base) / dag_id / re.sub(r"[^A-Za-z0-9_.+-]", "_", run_id)


@dataclass
class RunContext:
    """One run acting on one target database."""

    engine: Engine
    dialect: Dialect
    ledger: Ledger
    who: RunIdentity
    lock: LockCheck = field(default_factory=NoLockCheck)
    plan: Plan | None = None
    source: Engine | None = None  # None: the plan reads from its target
    target_conn_id: str = ""
    report_dir: Path | None = None  # where verification reports go (None: not written)
    plan_dir: Path | None = None  # the plan file's folder, for relative paths in it
    sleep: Callable[[float], Any] = time.sleep
    can_defer: bool = False  # the caller can turn a long pause into a deferral (Airflow)
    variables: Any = None  # where a cutover's `variable` switch reads and writes (Airflow Variables)

    @property
    def plan_id(self) -> str:
        return self.ledger.plan_id

    @property
    def source_or_target(self) -> Engine:
        return self.source or self.engine

    def engines(self) -> dict[str, Engine]:
        """The databases a plan's SQL may name by role."""
        return {"target": self.engine, "source": self.source_or_target}
