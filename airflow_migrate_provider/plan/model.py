"""The migration plan model: the single source of truth for the DAG builder, CLI, linter and docs.

Steps are a discriminated union on ``kind`` so later step kinds (backfill, verify, dual_write,
cutover) slot in beside ``schema`` without touching the rest of the model. ``kind`` defaults to
``schema`` so the common case stays short in YAML.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Discriminator, Field, Tag, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airflow_migrate_provider.plan.base import (  # noqa: F401 - re-exported: the model's public names
    COLUMN_NAME,
    CONN_ID,
    IDENTIFIER,
    QUALIFIED_NAME,
    TAG_MAX_CHARS,
    SqlList,
    StrictModel,
    _identifier,
    _sql_list,
)
from airflow_migrate_provider.plan.steps.backfill import (  # noqa: F401
    BackfillPhases,
    BackfillSource,
    BackfillStep,
    BatchSize,
    ThrottleRule,
)
from airflow_migrate_provider.plan.steps.cutover import (  # noqa: F401
    CutoverStep,
    CutoverWindow,
    SwitchReads,
)
from airflow_migrate_provider.plan.steps.dual_write import DualWriteSource, DualWriteStep  # noqa: F401
from airflow_migrate_provider.plan.steps.health_gate import (  # noqa: F401
    HealthGateStep,
    HealthMetricSpec,
    HealthThresholdSpec,
)
from airflow_migrate_provider.plan.steps.schema import SchemaStep
from airflow_migrate_provider.plan.steps.verify import (  # noqa: F401
    ALL_CHECKS,
    BenchmarkQuerySpec,
    ColumnTolerance,
    CompareSide,
    ExpectationSuite,
    ExpectedDifferences,
    PerformanceSpec,
    VerifyCheck,
    VerifyStep,
)


class Connections(StrictModel):
    """Which Airflow connections the plan migrates between."""

    target: str = Field(description="Airflow connection id of the database being migrated.")
    source: str | None = Field(
        default=None,
        description="Airflow connection id of the source database (backfill and verify steps). "
        "Defaults to the target.",
    )

    @field_validator("target", "source")
    @classmethod
    def _conn_id_shape(cls, v: str | None) -> str | None:
        if v is not None and not CONN_ID.fullmatch(v):
            raise PydanticCustomError(
                "conn_id", "'{value}' is not a valid Airflow connection id (letters, digits, _ . -)", {"value": v}
            )
        return v

    @property
    def source_or_target(self) -> str:
        return self.source or self.target

    @property
    def separate_source(self) -> str | None:
        """The source connection id when it is not the target's (the only case needing its own checks)."""
        return self.source if self.source not in (None, self.target) else None


BACKUP_PREFIX = "airflow_migrate_"  # the engine's own tables (ledger, snapshots): never backed up or restored


class BackupSpec(StrictModel):
    """What to back up before the first step changes data, and how. Rollback restores from it where a
    step's down SQL fails or leaves a table different from its pre-run state."""

    strategy: Literal["snapshot", "pg_dump", "mariadb_dump", "sqlite_backup"] = Field(
        description="`snapshot`: a copy of each table inside the database (every dialect). `pg_dump`: a "
        "custom-format file of the tables (PostgreSQL; needs `pg_dump`/`pg_restore` on the worker). "
        "`mariadb_dump`: a SQL file of the tables' rows from one consistent snapshot (MariaDB/MySQL; needs "
        "`mariadb-dump` or `mysqldump` on the worker). "
        "`sqlite_backup`: a copy of the database file through SQLite's online backup API.")
    tables: list[str] | Literal["auto"] = Field(
        default="auto",
        description="Tables to back up, or `auto`: every table the steps write (found by parsing their `up` "
        "SQL and the backfill targets). Tables a step creates are recorded as absent: a restore drops them.")
    location: str | None = Field(
        default=None,
        description="Folder for `pg_dump`/`mariadb_dump`/`sqlite_backup` files. Default: "
        "`$AIRFLOW_MIGRATE_BACKUPS`, else `$AIRFLOW_HOME/migration_backups`. Checked for being writable, with "
        "free space for the tables, before anything is copied.")
    required: bool = Field(
        default=True,
        description="Refuse to run a data-changing step of the run unless this run's backup was made and "
        "verified.")
    lock_writes: bool = Field(
        default=False,
        description="Block writes to the tables while they are copied and checksummed, so a busy table "
        "backs up consistently. Without it, a table written meanwhile fails the backup's verification.")
    restore_on_difference: bool = Field(
        default=True,
        description="After the rollback's down SQL, restore every table whose content or definition still "
        "differs from the backup. `false`: report the differences and fail the rollback instead (for tables "
        "the application writes during the run, whose new rows a restore would drop).")
    keep_days_after_success: int | None = Field(
        default=None, ge=0, le=3650,
        description="Drop this plan's backups this many days after their run succeeded (at the next "
        "backup, or with `airflow-migrate backups prune`). Default: keep until pruned by hand.")

    @field_validator("tables")
    @classmethod
    def _table_names(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, list):
            if not v:
                raise PydanticCustomError("backup_tables", "`tables` is empty: list tables or use `auto`")
            for name in v:
                if not QUALIFIED_NAME.fullmatch(name):
                    raise PydanticCustomError("table_name", "'{value}' is not a table name", {"value": name})
                if name.split(".")[-1].lower().startswith(BACKUP_PREFIX):
                    raise PydanticCustomError("backup_tables", "'{value}' is one of the engine's own tables; it "
                                              "is never backed up or restored", {"value": name})
        return v


class ApprovalSpec(StrictModel):
    """The approval hold before an irreversible step (Airflow's HITL `ApprovalOperator`)."""

    timeout_hours: float = Field(default=24, gt=0, le=24 * 30,
                                 description="How long to wait for an answer; no answer fails the run.")
    assigned_users: list[str] = Field(default_factory=list,
                                      description="Airflow user ids allowed to answer (default: anyone).")


class FaultInjection(StrictModel):
    """Test only: make one task fail right after it did its work, to prove the rollback restores."""

    task: str = Field(description="Task id to fail, e.g. `steps.move_preferences` or `backup.create`.")
    map_index: int | None = Field(default=None, ge=0, description="For a mapped task: only this instance.")


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("kind", "schema")
        return kind if isinstance(kind, str) else None
    return getattr(value, "kind", None)


# The plan model of each step kind (plan/steps/<kind>.py); its behaviour is core/kinds/<kind>.py.
STEP_MODELS: dict[str, type[StrictModel]] = {"schema": SchemaStep, "backfill": BackfillStep, "verify": VerifyStep,
                                             "health_gate": HealthGateStep, "dual_write": DualWriteStep,
                                             "cutover": CutoverStep}
Step = Annotated[
    Union[tuple(Annotated[model, Tag(kind)] for kind, model in STEP_MODELS.items())],  # type: ignore[valid-type]  # noqa: UP007
    Discriminator(_step_kind),
]


class Plan(StrictModel):
    """A migration plan: what to migrate, where, in which ordered steps."""

    id: str = Field(description="Plan id; also the Airflow dag_id. Letters, digits and _ (max 63).")
    description: str = Field(default="", description="What the migration is for; shown in the DAG docs.")
    connections: Connections = Field(description="Airflow connection ids of the target (and source).")
    steps: list[Step] = Field(min_length=1, description="Ordered steps; applied first to last.")
    tags: list[Annotated[str, Field(min_length=1, max_length=TAG_MAX_CHARS)]] = Field(
        default_factory=list, description=f"Airflow DAG tags (each 1 to {TAG_MAX_CHARS} characters, one line).")
    lock_ttl_seconds: int = Field(
        default=600, ge=30, le=86_400,
        description="How long the run lock stays valid without renewal; a dead run's lock expires after it.",
    )
    retries: int = Field(
        default=1, ge=0, le=10,
        description="Airflow retries per task, used only for transient errors (connection lost, lock timeout).",
    )
    retry_delay_seconds: int = Field(default=30, ge=0, le=3600, description="Delay between those retries.")
    backup: BackupSpec | None = Field(
        default=None, description="Back up the tables the plan touches before any step changes data.")
    approval: ApprovalSpec = Field(
        default_factory=ApprovalSpec,
        description="The hold before each irreversible step: its verification gate passed, a person "
        "approves in the Airflow UI.")
    fault_injection: FaultInjection | None = Field(
        default=None, description="Test only: fail one task after its work, to exercise the rollback.")

    @field_validator("id")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        return _identifier("plan_id", v)

    @field_validator("tags")
    @classmethod
    def _tags_one_line(cls, v: list[str]) -> list[str]:
        for tag in v:
            if not tag.isprintable():
                raise PydanticCustomError("tag_text", "tag {tag} holds a line break or another control character; "
                                          "a tag is one line of text", {"tag": repr(tag)})
        return v

    @model_validator(mode="after")
    def _unique_step_ids(self) -> Plan:
        duplicates = duplicate_step_ids([{"id": s.id} for s in self.steps])
        if duplicates:
            index, step_id, first = duplicates[0]
            raise PydanticCustomError(
                DUPLICATE_STEP_ID,
                "duplicate step id '{step}' (steps[{index}] repeats steps[{first}])",
                {"step": step_id, "index": index, "first": first},
            )
        return self

    @model_validator(mode="after")
    def _steps_fit_the_plan(self) -> Plan:
        """Checks a step can only make in its plan (another step it names, the connections it needs)."""
        for position, step in enumerate(self.steps):
            check = getattr(type(step), "check_in_plan", None)  # on the class: a pydantic instance's miss is slow
            if check is not None:
                check(step, self, position)
        return self

    def step(self, step_id: str) -> Any:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(f"plan '{self.id}' has no step '{step_id}'")

DUPLICATE_STEP_ID = "duplicate_step_id"
STEP_KINDS = frozenset(STEP_MODELS)


def duplicate_step_ids(raw_steps: Any) -> list[tuple[int, str, int]]:
    """(index, id, index of first occurrence) for every repeated step id in raw step dicts."""
    if not isinstance(raw_steps, list):
        return []
    seen: dict[str, int] = {}
    found = []
    for index, raw in enumerate(raw_steps):
        step_id = raw.get("id") if isinstance(raw, dict) else None
        if not isinstance(step_id, str):
            continue
        if step_id in seen:
            found.append((index, step_id, seen[step_id]))
        else:
            seen[step_id] = index
    return found
