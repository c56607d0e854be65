"""Plan text is data, never a template: Jinja syntax anywhere in a plan reaches every templated field of every
operator the DAG builder creates as written, rendered by Airflow's own template machinery; a
``{{ conn.app_db.password }}`` in a description never turns into the password."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

import airflow_migrate_provider
from airflow_migrate_provider.plan.loader import parse_plan

SECRET = "S3cret-from-the-connection"
HOSTILE = "drops {{ ti.xcom_pull('secret') }} and {% raw %} {# note #} {{ conn.app_db.password }} for good"
EXAMPLES = Path(airflow_migrate_provider.__file__).parent / "examples"
# every templated field an operator of a built DAG has; a new one must be added here, and so checked below
KNOWN_TEMPLATE_FIELDS = {"ApprovalOperator": {"subject", "body"}, "BackfillOperator": {"chunk"},
                         "DualWriteOperator": {"chunk"}}
PLAN = f"""
id: hostile_text
description: "{HOSTILE}"
connections: {{target: app_db}}
backup: {{strategy: snapshot}}
steps:
  - id: drop_old
    description: "{HOSTILE}"
    up: DROP TABLE old_users
    irreversible: true
    verify: SELECT 1
"""


class FakeTi:
    def xcom_pull(self, task_ids: str, **_: Any) -> dict[str, str]:
        assert task_ids.startswith(("backup.create", "steps.")), "only the provider's own templates pull from XCom"
        return {"backup_id": "B-1", "summary": "all rows equal"}


class Secrets:
    """``conn.<id>.password``, ``var.value.<key>``...: every attribute leads to the secret."""

    def __getattr__(self, name: str) -> Any:
        return SECRET if name in ("password", "value", "get_uri") else Secrets()

    def __str__(self) -> str:
        return SECRET


def _hostile(example: str, approval: bool = False) -> str:
    data = yaml.safe_load((EXAMPLES / example).read_text())
    data["description"] = HOSTILE
    for step in data["steps"]:
        step["description"] = HOSTILE
        if step.get("kind") == "cutover" and approval:
            step["approval"] = True
    return yaml.safe_dump(data, sort_keys=False)


def _dags() -> list[Any]:
    from airflow_migrate_provider.dag_builder import build_dag

    texts = [PLAN, _hostile("add_user_preferences.yaml"), _hostile("backfill_users.yaml"),
             _hostile("dual_write_users.yaml", approval=True)]
    return [build_dag(parse_plan(text), source_text=text) for text in texts]


def _context(task: Any) -> dict[str, Any]:
    return {"conn": Secrets(), "var": Secrets(), "ti": FakeTi(), "task": task, "params": {}, "run_id": "r1"}


def _templated_values(task: Any) -> dict[str, Any]:
    """Field → its value before rendering; a mapped task's fixed (partial) values (its mapped one comes from
    XCom at run time, which Airflow never renders)."""
    if hasattr(task, "partial_kwargs"):
        return {f: task.partial_kwargs[f] for f in task.template_fields if f in task.partial_kwargs}
    return {f: getattr(task, f) for f in task.template_fields}


def test_every_templated_field_is_known() -> None:
    seen: dict[str, set[str]] = {}
    for dag in _dags():
        for task in dag.tasks:
            if task.template_fields:
                seen.setdefault(task.task_type, set()).update(task.template_fields)
            assert "doc_md" not in task.template_fields and "params" not in task.template_fields
    assert seen == KNOWN_TEMPLATE_FIELDS


@pytest.mark.parametrize("dag", _dags(), ids=lambda d: d.dag_id)
def test_no_templated_field_evaluates_plan_text(dag: Any) -> None:
    shown = 0
    for task in dag.tasks:
        env = task.get_template_env()
        for field, value in _templated_values(task).items():
            rendered = str(task.render_template(value, _context(task), env))
            assert SECRET not in rendered, f"{task.task_id}.{field} rendered plan text as a template"
            shown += HOSTILE in rendered
    approvals = [t for t in dag.tasks if t.task_type == "ApprovalOperator"]
    assert shown >= len(approvals) > 0 or not approvals
    for task in approvals:
        assert HOSTILE in str(task.render_template(task.body, _context(task), task.get_template_env()))


def test_plan_text_outside_templated_fields_is_kept_as_written() -> None:
    """The DAG and task docs (not templated in Airflow 3.3) hold the text exactly as the plan has it."""
    dag = _dags()[0]
    assert HOSTILE in dag.doc_md and not dag.doc_md.rstrip().endswith(".md")  # a doc_md ending .md is read as a file
    assert dag.get_task("steps.drop_old").doc_md == HOSTILE


def test_a_description_with_jinja_syntax_is_shown_literally_in_the_approval_body() -> None:
    from airflow_migrate_provider.dag_builder import build_dag

    dag = build_dag(parse_plan(PLAN))
    approve = dag.get_task("steps.before_drop_old.approve")
    rendered = jinja2.Environment().from_string(approve.body).render(ti=FakeTi())
    assert HOSTILE in rendered
    assert "Backup: `B-1` (verified)" in rendered


@pytest.mark.parametrize("text", ["{", "}}", "{{", "{%", "{#", "{{{", "{% endraw %}", "'}}", "{{ '{' }}", "\\{"])
def test_template_safe_survives_awkward_text(text: str) -> None:
    from airflow.sdk.definitions._internal.templater import SandboxedEnvironment

    from airflow_migrate_provider.dag_builder import template_safe

    assert SandboxedEnvironment().from_string(template_safe(text)).render() == text
