"""The plan reference (docs/plan-reference.md), generated from the model so docs never drift."""

from __future__ import annotations

import types
import typing

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from airflow_migrate_provider.plan import guard
from airflow_migrate_provider.plan.base import TAG_MAX_CHARS
from airflow_migrate_provider.plan.model import (
    ApprovalSpec,
    BackfillPhases,
    BackfillSource,
    BackfillStep,
    BackupSpec,
    BatchSize,
    BenchmarkQuerySpec,
    ColumnTolerance,
    CompareSide,
    Connections,
    ExpectationSuite,
    ExpectedDifferences,
    FaultInjection,
    HealthGateStep,
    HealthMetricSpec,
    HealthThresholdSpec,
    PerformanceSpec,
    Plan,
    SchemaStep,
    ThrottleRule,
    VerifyStep,
)
from airflow_migrate_provider.plan.steps.cutover import (
    CutoverStep,
    CutoverWindow,
    DisableOldWrites,
    HttpRequest,
    HttpSwitch,
    RenameSwitch,
    SmokeCheck,
    SwitchReads,
    VariableSwitch,
    ViewSwitch,
)
from airflow_migrate_provider.plan.steps.dual_write import (
    CatchUpSettings,
    DualWriteSource,
    DualWriteStep,
    ReplaySettings,
)

SECTIONS: list[tuple[str, type[BaseModel], str]] = [
    ("Plan (top level)", Plan, ""),
    ("`connections`", Connections, ""),
    ("`backup`", BackupSpec, "See [backup.md](backup.md) for strategies, the manifest, rollback and retention."),
    ("`approval`", ApprovalSpec, "Applies to every step marked `irreversible: true`."),
    ("`fault_injection`", FaultInjection, "Test only."),
    ("Step `kind: schema` (the default)", SchemaStep,
     "SQL fields take one SQL text or a list of them; a text may hold several statements separated by `;`."),
    ("Step `kind: backfill`", BackfillStep,
     "Copies a large table in three phases (see docs/backfill.md): historical rows up to a high-water mark in "
     "key-range chunks (one Airflow mapped task each), then rows inserted or changed meanwhile, then a final "
     "sync under a brief write lock, then row counts. Every batch commits its rows with its checkpoint."),
    ("`backfill.source`", BackfillSource, ""),
    ("`backfill.batch`", BatchSize, ""),
    ("`backfill.throttle[]`", ThrottleRule, ""),
    ("`backfill.phases`", BackfillPhases, ""),
    ("Step `kind: verify`", VerifyStep,
     "Compares the source with the target and/or validates the target; any check that does not hold fails the "
     "step and the run rolls back. The report (a table in the task log, JSON and HTML files, a summary in XCom) "
     "lists each check with what differed. See docs/verification.md."),
    ("`verify.source` / `verify.target`", CompareSide, ""),
    ("`verify.tolerances.<column>`", ColumnTolerance, ""),
    ("`verify.expected_differences`", ExpectedDifferences, ""),
    ("`verify.expectations`", ExpectationSuite, ""),
    ("`verify.performance`", PerformanceSpec, ""),
    ("`verify.performance.queries[]`", BenchmarkQuerySpec, ""),
    ("Step `kind: health_gate`", HealthGateStep,
     "Samples application health (SQL or an HTTP JSON endpoint) every `interval_seconds` for `window_seconds`, "
     "deferring in between; the first sample over a threshold fails the step and the run rolls back. Baselines "
     "are sampled in preflight, before anything changes."),
    ("`health_gate.metrics[]`", HealthMetricSpec, ""),
    ("`health_gate.thresholds[]`", HealthThresholdSpec, ""),
    ("Step `kind: dual_write`", DualWriteStep,
     "Moves a table while the application keeps writing to it (see docs/dual-write.md): triggers capture every "
     "write to the old table, the history is copied like a backfill, the captured changes are replayed into the "
     "new table, and a deferred catch-up waits until the lag is under the threshold. Rolling back drops the "
     "capture and empties the new table."),
    ("`dual_write.source`", DualWriteSource, ""),
    ("`dual_write.replay`", ReplaySettings, ""),
    ("`dual_write.catch_up`", CatchUpSettings, ""),
    ("Step `kind: cutover`", CutoverStep,
     "Switches the application from the old table to the new one a `dual_write` step keeps in sync: consistency "
     "check while writes continue, approval, window, catch-up, then a brief write lock for the final replay and "
     "the switch, smoke checks, and the old table made read-only. Rolling back switches back and replays every "
     "write made on the new side into the old table."),
    ("`cutover.switch_reads`", SwitchReads, ""),
    ("`cutover.switch_reads.view`", ViewSwitch, ""),
    ("`cutover.switch_reads.rename`", RenameSwitch, ""),
    ("`cutover.switch_reads.variable`", VariableSwitch, ""),
    ("`cutover.switch_reads.http`", HttpSwitch, ""),
    ("HTTP request (`http.switch`, `http.switch_back`, `smoke[].http`)", HttpRequest, ""),
    ("`cutover.disable_old_writes`", DisableOldWrites, ""),
    ("`cutover.window`", CutoverWindow, ""),
    ("`cutover.smoke[]`", SmokeCheck, ""),
]


def _type_name(annotation: object) -> str:
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a) for a in args]
        return "step (see below)" if "SchemaStep" in names else " | ".join(names)
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    if origin is list:
        inner = _type_name(args[0])
        if inner == "SchemaStep" or inner.startswith("step"):
            return "list of steps (see below)"
        return "SQL text or list of SQL texts" if inner == "str" and annotation != list[str] else f"list of {inner}"
    return getattr(annotation, "__name__", str(annotation)).replace("NoneType", "null")


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        return f"`{field.default_factory()!r}`"
    if field.default is PydanticUndefined:
        return ""
    return f"`{field.default!r}`" if field.default is not None else "`null`"


def _limits() -> list[str]:
    """What any plan file must stay within (``plan/guard.py``), stated where plan authors look."""
    return ["**Limits.** A plan file is UTF-8 YAML of at most "
            f"{guard.MAX_PLAN_BYTES // (1024 * 1024)} MiB ({guard.MAX_PLAN_BYTES:,} bytes; no more is read, and only "
            "regular files are: not a device or FIFO). After YAML aliases are resolved it may hold at most "
            f"{guard.MAX_PLAN_VALUES:,} values (keys, values and list items) and {guard.MAX_PLAN_TEXT:,} characters "
            f"of text, with lists and mappings nested at most {guard.MAX_NESTING} levels deep; an alias may not "
            "refer to a value it is part of. YAML tags (`!!python/...`), merge keys (`<<`), duplicate keys, "
            "control characters (a NUL) and non-finite numbers (`.inf`, `.nan`) are refused. Ids match in full "
            "(a trailing newline is not allowed). Everything the Airflow DAG build would reject is a validation "
            f"error: task ids used twice (a step `before_<id>` beside an irreversible step `<id>`), DAG tags over "
            f"{TAG_MAX_CHARS} characters, a `fault_injection.task` that is not a task of the plan's DAG."]


def plan_reference_markdown() -> str:
    lines = ["# Plan reference", "",
             "Generated from `airflow_migrate_provider/plan/model.py` by `airflow-migrate reference`; "
             "do not edit by hand. Unknown keys are errors; values are not coerced between types "
             "(`\"10\"` is not an integer, `\"yes\"` is not a boolean).", "", *_limits(), ""]
    for title, model, note in SECTIONS:
        lines += [f"## {title}", ""]
        if note:
            lines += [note, ""]
        lines += ["| key | type | default | description |", "|---|---|---|---|"]
        for name, field in model.model_fields.items():
            description = (field.description or "").replace("|", "\\|").replace("\n", " ")
            constraints = [f"{label} {getattr(m, attr)}" for m in field.metadata
                           for attr, label in (("ge", "≥"), ("le", "≤"), ("min_length", "at least"))
                           if hasattr(m, attr)]
            if constraints:
                description += f" ({', '.join(constraints)})"
            type_name = _type_name(field.annotation).replace("|", "or")
            lines.append(f"| `{name}` | {type_name} | {_default(field)} | {description} |")
        lines.append("")
    return "\n".join(lines)
