"""Run a plan's `kind: verify` step: its checks in order, one report (log table, JSON and HTML artifacts)."""

from __future__ import annotations

import html
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from airflow_migrate_provider.core.summary import format_table
from airflow_migrate_provider.core.verify.base import CheckResult, ColumnRule, Side
from airflow_migrate_provider.errors import BenchmarkError, TransientError, VerifySpecError
from airflow_migrate_provider.plan.model import ColumnTolerance, CompareSide, VerifyStep

log = logging.getLogger(__name__)


def column_rules(tolerances: dict[str, ColumnTolerance]) -> dict[str, ColumnRule]:
    """The plan's per-column tolerances as the comparison rules of core.verify."""
    return {name: ColumnRule(numeric_scale=t.numeric_scale, float_epsilon=t.float_epsilon,
                             timestamp_precision=t.timestamp_precision, time_zone=t.time_zone, trim=t.trim,
                             case_insensitive=t.case_insensitive, json=t.as_json)
            for name, t in tolerances.items()}


def side(engine: Engine, spec: CompareSide, label: str) -> Side:
    return Side(engine, table=spec.table, query=spec.query, filter=spec.filter, label=label)


@dataclass
class VerifyReport:
    """Every check of one verify step: what analysts read in the task log and in the artifacts."""

    step_id: str
    results: list[CheckResult] = field(default_factory=list)
    seconds: float = 0.0
    artifact: str | None = None  # the JSON report's path, once written

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.results)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    def table(self) -> str:
        rows = [[r.check, r.source or "-", r.target or "-",
                 "passed" if r.passed and not r.warning else "WARNING" if r.passed else "FAILED",
                 f"{r.seconds:.2f}s"] for r in self.results]
        lines = [format_table(["check", "source", "target", "result", "time"], rows)]
        for r in self.results:
            if r.detail:
                lines.append(f"{r.check}: {r.detail}")
            shown = [f"  - {d}" for d in r.differences]
            more = r.total_differences - len(r.differences)
            lines += shown + ([f"  … and {more:,} more"] if more > 0 else [])
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step_id, "passed": self.passed, "seconds": round(self.seconds, 3),
                "checks": [r.to_json() for r in self.results]}

    def summary(self) -> dict[str, Any]:
        """Small enough for XCom: each check's outcome, and where the full report is."""
        return {"step": self.step_id, "passed": self.passed, "report": self.artifact,
                "checks": {r.check: ("passed" if r.passed and not r.warning else "warning" if r.passed else
                                     f"failed ({r.total_differences or len(r.differences)} differences)")
                           for r in self.results}}

    def write(self, directory: Path) -> Path:
        """``<step>.json`` and ``<step>.html`` in ``directory``; returns the JSON's path."""
        directory.mkdir(parents=True, exist_ok=True)
        data = self.to_json()
        json_path = directory / f"{self.step_id}.json"
        json_path.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
        (directory / f"{self.step_id}.html").write_text(_html(data), encoding="utf-8")
        self.artifact = str(json_path)
        return json_path


def _html(data: dict[str, Any]) -> str:
    rows = "".join(
        f"<tr class='{'ok' if c['passed'] else 'bad'}'><td>{html.escape(c['check'])}</td>"
        f"<td>{html.escape(c['source'])}</td><td>{html.escape(c['target'])}</td>"
        f"<td>{'passed' if c['passed'] else 'FAILED'}</td><td>{c['seconds']:.2f}s</td>"
        f"<td>{html.escape(c['detail'])}<ul>"
        + "".join(f"<li>{html.escape(json.dumps(d, default=str))}</li>" for d in c["differences"])
        + "</ul></td></tr>" for c in data["checks"])
    verdict = "passed" if data["passed"] else "FAILED"
    return (f"<!doctype html><meta charset='utf-8'><title>verify {html.escape(data['step'])}: {verdict}</title>"
            "<style>body{font-family:sans-serif}td,th{border:1px solid #ccc;padding:4px;vertical-align:top}"
            ".bad{background:#fde2e1}.ok{background:#e6f4ea}</style>"
            f"<h1>verify step {html.escape(data['step'])}: {verdict}</h1><table><tr><th>check</th><th>source</th>"
            f"<th>target</th><th>result</th><th>time</th><th>details</th></tr>{rows}</table>")


def run_verify_step(step: VerifyStep, source: Engine, target: Engine, plan_dir: Path | None = None) -> VerifyReport:
    """Run every check the step declares, in order; a check that cannot run raises (fails safe), naming the
    plan field to edit (``steps.<id>.<field>: ...``). A transient error (retrying can succeed) is raised as is.
    """
    try:
        return _run_checks(step, source, target, plan_dir)
    except TransientError:
        raise
    except (VerifySpecError, BenchmarkError) as exc:  # VerifySpecError includes ExpectationSuiteError
        raise VerifySpecError(f"steps.{step.id}.{exc}") from exc


def _run_checks(step: VerifyStep, source: Engine, target: Engine, plan_dir: Path | None) -> VerifyReport:
    t0 = time.monotonic()
    report = VerifyReport(step.id)
    tgt = side(target, step.target, "target")
    src = side(source, step.source, "source") if step.source is not None else None
    rules = column_rules(step.tolerances)
    columns = step.columns or None
    expected = step.expected_differences
    for check in step.checks:
        assert src is not None  # the model requires a source for checks
        log.info("verify step '%s': running %s", step.id, check)
        from airflow_migrate_provider.core.verify import checksums, rows, structure

        if check == "row_counts":
            result = rows.row_counts(src, tgt)
        elif check == "schemas":
            result = structure.schemas(src, tgt, expected.schemas)
        elif check == "indexes":
            result = structure.indexes(src, tgt, expected.indexes)
        elif check == "constraints":
            result = structure.constraints(src, tgt, expected.constraints)
        elif check == "data_sample":
            result = rows.data_sample(src, tgt, step.key, columns, rules, step.sample_size)
        else:
            result = checksums.checksums(src, tgt, step.key, columns, rules, segments=step.segments)
        report.results.append(result)
    if step.expectations is not None:
        from airflow_migrate_provider.core.verify.expectations import run_expectations

        spec = step.expectations
        path = spec.path
        if path is not None and plan_dir is not None and not Path(path).is_absolute():
            path = str(plan_dir / path)
        table = spec.table or step.target.table
        if table is None:
            from airflow_migrate_provider.errors import VerificationFailed

            raise VerificationFailed(step.id, "(expectations)", "expectations need a table: set "
                                     f"steps.{step.id}.expectations.table (the target side is a query)")
        report.results.append(run_expectations(target, table, suite=spec.suite, suite_path=path, name=step.id))
    if step.performance is not None:
        from airflow_migrate_provider.core.verify.performance import BenchmarkQuery, compare_performance

        perf = step.performance
        queries = [BenchmarkQuery(q.name, q.sql, q.target_sql) for q in perf.queries]
        report.results.append(compare_performance(source, target, queries, runs=perf.runs, warmup=perf.warmup,
                                                  tolerance_pct=perf.tolerance_pct,
                                                  fail_on_degradation=perf.on_degradation == "fail"))
    report.seconds = time.monotonic() - t0
    return report
