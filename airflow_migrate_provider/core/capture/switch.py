"""Switching reads between the old and new tables, and back: a view, a rename, an Airflow Variable, an HTTP call.

What the way back needs (a view's old definition, a Variable's old value) is read *before* the switch and
recorded in the ledger with the cutover's actions, so a rollback uses what was there, not what the plan says.
"""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.engine import Connection

from airflow_migrate_provider.core.dialects.capture import CaptureSql
from airflow_migrate_provider.errors import CutoverFailed
from airflow_migrate_provider.plan.steps.cutover import HttpRequest, SwitchReads

log = logging.getLogger(__name__)


class VariableStore(Protocol):
    """Where ``variable`` switches read and write (Airflow Variables under Airflow)."""

    def get(self, key: str) -> str | None: ...

    def set(self, key: str, value: str) -> None: ...

    def delete(self, key: str) -> None: ...


@dataclass(frozen=True)
class TableNames:
    """What the old and the new table are called now (a rename switch swaps names)."""

    old: str
    new: str


def names_after(switch: dict[str, Any], switched: bool) -> TableNames:
    """The tables' names before or after the recorded switch."""
    old, new = switch["old_table"], switch["new_table"]
    if switched and switch["how"] == "rename":
        return TableNames(switch["old_table_becomes"], old)
    return TableNames(old, new)


def prepare_switch(spec: SwitchReads, old_table: str, new_table: str, conn: Connection | None, sql: CaptureSql | None,
                   variables: VariableStore | None) -> dict[str, Any]:
    """What switching and switching back need, read before the switch (recorded in the ledger)."""
    recorded: dict[str, Any] = {"how": spec.how, "old_table": old_table, "new_table": new_table}
    if spec.view is not None:
        assert conn is not None and sql is not None
        try:
            recorded["view_before"] = sql.view_sql(conn, spec.view.name)
        except LookupError:
            raise CutoverFailed(f"switch_reads.view.name: view '{spec.view.name}' does not exist; create it (reading "
                                f"{old_table}) in an earlier schema step, and have the application read through "
                                f"it") from None
        recorded["view"] = spec.view.name
        recorded["view_after"] = sql.create_view_sql(spec.view.name, spec.view.select or
                                                     f"SELECT * FROM {sql.d.ident(new_table)}")
    elif spec.rename is not None:
        recorded["old_table_becomes"] = spec.rename.old_table_becomes
    elif spec.variable is not None:
        if variables is None:
            raise CutoverFailed("switch_reads.variable needs Airflow Variables: run the plan under Airflow")
        recorded.update(variable=spec.variable.key, value=spec.variable.value,
                        previous=variables.get(spec.variable.key))
    elif spec.http is not None:
        recorded.update(switch=spec.http.switch.model_dump(mode="json"),
                        switch_back=spec.http.switch_back.model_dump(mode="json"))
    return recorded


def describe(recorded: dict[str, Any], back: bool = False) -> str:
    how, old, new = recorded["how"], recorded["old_table"], recorded["new_table"]
    if how == "view":
        return f"view {recorded['view']} reads {old if back else new}"
    if how == "rename":
        gone = recorded["old_table_becomes"]
        return (f"{old} → {gone}, {new} → {old}" if not back else f"{old} → {new}, {gone} → {old}")
    if how == "variable":
        value = recorded["previous"] if back else recorded["value"]
        return f"Airflow Variable {recorded['variable']} = {value!r}" + (" (deleted)" if back and value is None else "")
    request = recorded["switch_back" if back else "switch"]
    return f"HTTP {request['method']} {request['url'].split('?', 1)[0]}"


def switch(recorded: dict[str, Any], conn: Connection | None, sql: CaptureSql | None,
           variables: VariableStore | None, back: bool = False) -> None:
    """Do the switch (or the switch back). View and rename run in ``conn``'s transaction (the lock's)."""
    how = recorded["how"]
    if how == "view":
        assert conn is not None and sql is not None
        sql.replace_view(conn, recorded["view"], recorded["view_before" if back else "view_after"])
    elif how == "rename":
        assert conn is not None and sql is not None
        old, new, gone = recorded["old_table"], recorded["new_table"], recorded["old_table_becomes"]
        sql.rename_tables(conn, [(old, new), (gone, old)] if back else [(old, gone), (new, old)])
    elif how == "variable":
        assert variables is not None
        value = recorded["previous"] if back else recorded["value"]
        if value is None:
            variables.delete(recorded["variable"])
        else:
            variables.set(recorded["variable"], value)
    else:
        call_http(HttpRequest.model_validate(recorded["switch_back" if back else "switch"]),
                  "switch back" if back else "switch")
    log.info("%s: %s", "switched back" if back else "switched reads", describe(recorded, back))


def call_http(request: HttpRequest, what: str) -> int:
    """Send ``request``; a non-2xx answer or no answer is a CutoverFailed. Returns the status."""
    data = json.dumps(request.body).encode() if request.body is not None else None
    req = urllib.request.Request(request.url, data=data, method=request.method,
                                 headers={"Content-Type": "application/json"} if data else {})
    shown = request.url.split("?", 1)[0]
    try:
        with urllib.request.urlopen(req, timeout=request.timeout_seconds) as response:
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        status = int(exc.code)
    except (urllib.error.URLError, OSError) as exc:
        raise CutoverFailed(f"{what}: HTTP {request.method} {shown} got no answer: {exc}") from None
    if not 200 <= status < 300:
        raise CutoverFailed(f"{what}: HTTP {request.method} {shown} answered {status}")
    return status
