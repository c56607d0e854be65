"""Airflow discovers the provider through its entry point and validates what it returns."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path

import jsonschema
import pytest
from packaging.utils import canonicalize_name

import airflow_migrate_provider
from airflow_migrate_provider.get_provider_info import get_provider_info

DISTRIBUTION = "airflow-migrate-provider"
ENTRY_POINT_GROUP = "apache_airflow_provider"


def our_entry_points() -> list[importlib.metadata.EntryPoint]:
    return [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
            if ep.value.startswith("airflow_migrate_provider.")]


def test_package_name_matches_the_distribution() -> None:
    # Airflow raises "... do not match. Please make sure they are aligned" otherwise
    dist_name = importlib.metadata.metadata(DISTRIBUTION)["Name"]
    assert get_provider_info()["package-name"] == canonicalize_name(dist_name)


def test_has_name_and_description() -> None:
    info = get_provider_info()
    assert isinstance(info["name"], str)
    assert info["name"].strip()
    assert isinstance(info["description"], str)
    assert info["description"].strip()


def test_entry_point_is_registered() -> None:
    [entry_point] = our_entry_points()
    assert entry_point.value == "airflow_migrate_provider.get_provider_info:get_provider_info"
    assert entry_point.dist is not None
    assert canonicalize_name(entry_point.dist.metadata["Name"]) == DISTRIBUTION
    assert entry_point.load()() == get_provider_info()


def test_provider_info_matches_airflow_runtime_schema() -> None:
    spec = importlib.util.find_spec("airflow")  # locates the package without importing it
    if spec is None or spec.origin is None:
        pytest.skip("apache-airflow is not installed")
    schema_file = Path(spec.origin).parent / "provider_info.schema.json"
    if not schema_file.exists():
        pytest.skip(f"this Airflow ships no {schema_file.name}")
    jsonschema.validate(get_provider_info(), json.loads(schema_file.read_text(encoding="utf-8")))


def test_declared_python_modules_exist() -> None:
    root = Path(airflow_migrate_provider.__file__).parent.parent
    info = get_provider_info()
    modules = [m for section in ("hooks", "operators") for entry in info.get(section, [])
               for m in entry["python-modules"]]
    assert modules
    for module in modules:
        path = root.joinpath(*module.split("."))
        assert path.with_suffix(".py").is_file() or (path / "__init__.py").is_file(), module


def test_documentation_url_is_declared() -> None:
    urls = importlib.metadata.metadata(DISTRIBUTION).get_all("Project-URL") or []
    assert any(u.split(",", 1)[0].strip().lower() == "documentation" for u in urls)
