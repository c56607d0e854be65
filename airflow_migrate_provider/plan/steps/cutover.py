"""The plan model of a `kind: cutover` step: final sync under a brief lock, switch reads, disable old writes."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from airflow_migrate_provider.plan.base import QUALIFIED_NAME, StrictModel, _identifier

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d")


class HttpRequest(StrictModel):
    """One HTTP request (e.g. a feature-flag service's endpoint)."""

    url: str = Field(description="An http(s) URL.")
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = Field(default="POST", description="HTTP method.")
    body: dict[str, Any] | None = Field(default=None, description="JSON body.")
    timeout_seconds: float = Field(default=10.0, gt=0, le=300, description="Give up after this long.")

    @field_validator("url")
    @classmethod
    def _http(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise PydanticCustomError("http_url", "'{url}' must be an http(s) URL", {"url": v})
        return v


class ViewSwitch(StrictModel):
    """Redefine a view the application reads through so it selects from the new table."""

    name: str = Field(description="The view (same database as both tables).")
    select: str | None = Field(default=None, description="The view's new SELECT; default `SELECT * FROM <new "
                               "table>`. Its old definition is kept for switching back.")


class RenameSwitch(StrictModel):
    """Swap table names: the old table gets `old_table_becomes`, the new table takes the old name."""

    old_table_becomes: str = Field(description="The old table's name after the switch (e.g. `users_old`).")


class VariableSwitch(StrictModel):
    """Set an Airflow Variable the application reads (e.g. which table or database is live)."""

    key: str = Field(description="The Variable's key.")
    value: str = Field(description="Its value after the switch; the previous value is restored on rollback.")


class HttpSwitch(StrictModel):
    """Call an endpoint (a feature flag, a router) to switch, and another to switch back."""

    switch: HttpRequest = Field(description="The request that switches reads to the new side.")
    switch_back: HttpRequest = Field(description="The request that switches back (on rollback).")


class SwitchReads(StrictModel):
    """How reads (and the application's writes) move to the new table: exactly one of the four."""

    view: ViewSwitch | None = Field(default=None, description="Swap a view.")
    rename: RenameSwitch | None = Field(default=None, description="Rename the tables.")
    variable: VariableSwitch | None = Field(default=None, description="Set an Airflow Variable.")
    http: HttpSwitch | None = Field(default=None, description="Call an HTTP endpoint.")

    @model_validator(mode="after")
    def _exactly_one(self) -> SwitchReads:
        given = [name for name in ("view", "rename", "variable", "http") if getattr(self, name) is not None]
        if len(given) != 1:
            raise PydanticCustomError("switch_shape", "give exactly one of `view`, `rename`, `variable` or `http` "
                                      "(given: {given})", {"given": given or "none"})
        return self

    @property
    def how(self) -> str:
        return next(name for name in ("view", "rename", "variable", "http") if getattr(self, name) is not None)

    @property
    def in_database(self) -> bool:
        """Done by SQL in the database (view, rename): atomic with the write lock; needs one database."""
        return self.view is not None or self.rename is not None


class DisableOldWrites(StrictModel):
    """What happens to the old table once reads are switched."""

    read_only: bool = Field(default=True, description="Refuse writes to the old table (a trigger that raises): a "
                            "write the application still sends there fails loudly instead of being lost. "
                            "Removed on rollback.")
    revoke_from: list[str] = Field(default_factory=list, description="Also REVOKE INSERT, UPDATE, DELETE on the old "
                                   "table from these roles (PostgreSQL); granted back on rollback.")


class SmokeCheck(StrictModel):
    """A check right after the switch: a query whose first column must be truthy, or an HTTP 2xx."""

    name: str = Field(description="Shown in the log and the report.")
    sql: str | None = Field(default=None, description="Query on the target; its first column must be truthy.")
    http: HttpRequest | None = Field(default=None, description="Request that must answer 2xx.")

    @model_validator(mode="after")
    def _sql_or_http(self) -> SmokeCheck:
        if (self.sql is None) == (self.http is None):
            raise PydanticCustomError("smoke_shape", "smoke check '{name}': give exactly one of `sql` or `http`",
                                      {"name": self.name})
        return self


class CutoverWindow(StrictModel):
    """When a cutover may run (e.g. Sundays 02:00-06:00 Europe/Berlin)."""

    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(
        default_factory=lambda: list(_DAYS), description="Days the window opens on.")
    start: str = Field(description="Opening time, HH:MM (24 h) in `timezone`.")
    end: str = Field(description="Closing time, HH:MM; before `start` means the next day.")
    timezone: str = Field(default="UTC", description="IANA time zone, e.g. `Europe/Berlin`.")
    outside: Literal["wait", "fail"] = Field(default="wait", description="Outside the window (or too close to its "
                                             "end to finish): wait for the next one, deferred, or fail safe.")

    @field_validator("start", "end")
    @classmethod
    def _clock(cls, v: str) -> str:
        if not _CLOCK.fullmatch(v):
            raise PydanticCustomError("clock", "'{value}' is not a time of day HH:MM", {"value": v})
        return v

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise PydanticCustomError("timezone", "'{value}' is not a known time zone (e.g. `Europe/Berlin`)",
                                      {"value": v}) from None
        return v

    @model_validator(mode="after")
    def _not_empty(self) -> CutoverWindow:
        if self.start == self.end or not self.days:
            raise PydanticCustomError("window_empty", "the cutover window is empty (start equals end, or no days)")
        return self


class CutoverStep(StrictModel):
    """Switch the application from the old table to the new one that a `dual_write` step keeps in sync.

    Tasks: ``verify`` (consistency up to a captured point) → ``approve`` (a person, in the Airflow UI) →
    ``wait_window`` (deferred until the cutover window) → ``catch_up`` (replay until the lag is small) →
    ``switch`` (brief write lock on the old table: final replay, reverse capture on the new table, the switch,
    counts at the lock's snapshot) → ``smoke`` → ``disable_old_writes``. Rolling back switches reads back
    and replays every write made on the new side into the old table."""

    kind: Literal["cutover"] = Field(description="`cutover`.")
    id: str = Field(description="Unique step id within the plan: letters, digits and _ (max 63).")
    description: str = Field(default="", description="What the step does, shown in the task's docs.")
    dual_write: str = Field(description="Id of the `dual_write` step whose tables are switched (earlier in the plan).")
    switch_reads: SwitchReads = Field(description="How reads move to the new table.")
    disable_old_writes: DisableOldWrites = Field(default_factory=DisableOldWrites,
                                                 description="What happens to the old table afterwards.")
    max_lock_seconds: float = Field(default=5.0, gt=0, le=600, description="Fail and roll back if the write lock "
                                    "on the old table is held longer (checked before switching).")
    approval: bool = Field(default=True, description="Hold for a person's approval (Airflow's ApprovalOperator) "
                           "before the cutover; its body summarises the verification.")
    window: CutoverWindow | None = Field(default=None, description="Only cut over inside this window.")
    smoke: list[SmokeCheck] = Field(default_factory=list, description="Checks right after the switch.")
    tags: list[str] = Field(default_factory=list, description="Free-form labels.")

    @field_validator("id", "dual_write")
    @classmethod
    def _id_shape(cls, v: str) -> str:
        return _identifier("step_id", v)

    @model_validator(mode="after")
    def _names(self) -> CutoverStep:
        names = [self.switch_reads.view.name] if self.switch_reads.view else []
        names += [self.switch_reads.rename.old_table_becomes] if self.switch_reads.rename else []
        for name in names:
            if not QUALIFIED_NAME.fullmatch(name):
                raise PydanticCustomError("table_name", "'{name}' is not a table or view name", {"name": name})
        return self

    def check_in_plan(self, plan: Any, position: int) -> None:
        """The named dual_write step comes earlier; an in-database switch needs both tables in one database."""
        earlier = {s.id: s for s in plan.steps[:position]}
        named = earlier.get(self.dual_write)
        if named is None or getattr(named, "kind", None) != "dual_write":
            raise PydanticCustomError(
                "cutover_reference", "cutover step '{step}' names `dual_write: {name}`, which is not a dual_write "
                "step earlier in the plan", {"step": self.id, "name": self.dual_write})
        if self.switch_reads.in_database and plan.connections.separate_source:
            raise PydanticCustomError(
                "switch_needs_one_database", "cutover step '{step}' switches by `{how}`, which works only when the "
                "old and new tables are in one database; the plan's source and target connections differ: switch "
                "with `variable` or `http` instead", {"step": self.id, "how": self.switch_reads.how})
