"""With CI=true a missing PostgreSQL or MariaDB fails the suite; on a laptop it skips (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PG_TEST = "tests/integration/test_core_status.py"


def _run_pg_tests(ci: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env.update(CI=ci, MIGRATE_TEST_PG_URL="postgresql://postgres@127.0.0.1:1/postgres")
    return subprocess.run(
        [sys.executable, "-m", "pytest", PG_TEST, "-k", "postgresql", "-q", "-p", "no:cacheprovider", "-rs"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )


@pytest.mark.timeout(150)
def test_missing_postgres_fails_in_ci():
    result = _run_pg_tests("true")
    assert result.returncode == 1, result.stdout[-2000:]
    assert "CI=true: a missing database service is a failure, not a skip" in result.stdout


@pytest.mark.timeout(150)
def test_missing_postgres_skips_outside_ci():
    result = _run_pg_tests("")
    assert result.returncode == 0, result.stdout[-2000:]
    assert "skipped" in result.stdout and "PostgreSQL is not reachable at 127.0.0.1:1" in result.stdout


@pytest.mark.timeout(150)
def test_missing_mariadb_fails_in_ci():
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env.update(CI="true", MIGRATE_TEST_MYSQL_URL="mysql://root@127.0.0.1:1/test")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", PG_TEST, "-k", "mariadb", "-q", "-p", "no:cacheprovider", "-rs"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1, result.stdout[-2000:]
    assert "MariaDB is not reachable at 127.0.0.1:1" in result.stdout
    assert "CI=true: a missing database service is a failure, not a skip" in result.stdout
