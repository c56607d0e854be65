"""Plan text is data, never a template: a description with Jinja syntax reaches the approval hold as written."""

from __future__ import annotations

import jinja2

from airflow_migrate_provider.plan.loader import parse_plan

HOSTILE = "drops {{ ti.xcom_pull('secret') }} and {% raw %} {# note #} for good"
PLAN = f"""
id: hostile_text
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
    def xcom_pull(self, task_ids: str) -> dict[str, str]:
        assert task_ids == "backup.create", "only the provider's own template may pull from XCom"
        return {"backup_id": "B-1"}


def test_a_description_with_jinja_syntax_is_shown_literally_in_the_approval_body() -> None:
    from airflow_migrate_provider.dag_builder import build_dag

    dag = build_dag(parse_plan(PLAN))
    approve = dag.get_task("steps.before_drop_old.approve")
    rendered = jinja2.Environment().from_string(approve.body).render(ti=FakeTi())
    assert HOSTILE in rendered
    assert "Backup: `B-1` (verified)" in rendered
