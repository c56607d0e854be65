"""The verification report analysts read: the log table, the XCom summary, the JSON and HTML artifacts."""

from __future__ import annotations

import json

from airflow_migrate_provider.core.verify.base import CheckResult, Difference
from airflow_migrate_provider.core.verify.suite import VerifyReport, column_rules
from airflow_migrate_provider.plan.model import ColumnTolerance


def report() -> VerifyReport:
    changed = [Difference("changed", key=i, column="name", source=f"n{i}", target="x") for i in range(3)]
    return VerifyReport("verify_users", [
        CheckResult("row_counts", True, "1,000 rows", "1,000 rows", seconds=0.01),
        CheckResult("checksums", False, "1,000 rows", "1,000 rows", "1 segment differed; 5 changed", 0.2,
                    differences=changed, total_differences=5),
        CheckResult("performance", True, "12 ms", "14 ms", "slower by 16 %", warning=True),
    ], seconds=0.3)


def test_log_table_lists_every_check_and_the_capped_differences() -> None:
    text = report().table()
    lines = text.splitlines()
    assert lines[0].split() == ["check", "source", "target", "result", "time"]
    assert "checksums" in lines[3] and "FAILED" in lines[3]
    assert "WARNING" in lines[4]
    assert "changed key 0 column name: source 'n0', target 'x'" in text
    assert "… and 2 more" in text


def test_summary_is_small_and_says_where_the_report_is(tmp_path) -> None:
    rep = report()
    path = rep.write(tmp_path / "reports")
    summary = rep.summary()
    assert summary == {"step": "verify_users", "passed": False, "report": str(path),
                       "checks": {"row_counts": "passed", "checksums": "failed (5 differences)",
                                  "performance": "warning"}}
    assert len(json.dumps(summary)) < 500  # fits XCom comfortably


def test_artifacts_hold_the_full_report(tmp_path) -> None:
    rep = report()
    path = rep.write(tmp_path)
    data = json.loads(path.read_text())
    assert data["passed"] is False and [c["check"] for c in data["checks"]] == ["row_counts", "checksums",
                                                                                 "performance"]
    assert data["checks"][1]["differences"][0] == {"kind": "changed", "key": 0, "column": "name", "source": "n0",
                                                   "target": "x", "detail": ""}
    page = (tmp_path / "verify_users.html").read_text()
    assert "verify step verify_users: FAILED" in page and "<td>checksums</td>" in page


def test_tolerances_become_comparison_rules() -> None:
    rules = column_rules({"doc": ColumnTolerance(as_json=True, trim=True), "at": ColumnTolerance(time_zone="UTC")})
    assert rules["doc"].json and rules["doc"].trim and rules["at"].time_zone == "UTC"
