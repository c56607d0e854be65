from pathlib import Path

from airflow_migrate_provider.plan.reference import plan_reference_markdown

DOC = Path(__file__).resolve().parents[2] / "docs" / "plan-reference.md"


def test_committed_plan_reference_matches_the_model():
    assert DOC.read_text() == plan_reference_markdown(), (
        "docs/plan-reference.md is stale: run `airflow-migrate reference > docs/plan-reference.md`"
    )


def test_reference_documents_every_step_field():
    text = plan_reference_markdown()
    for key in ("up", "down", "verify", "verify_down", "transactional", "irreversible", "lock_ttl_seconds"):
        assert f"| `{key}` |" in text
