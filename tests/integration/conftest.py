"""Fixtures the integration tests share."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack

import pytest


@pytest.fixture(scope="module")
def pg_urls(pg_database_factory) -> Iterator[list[str]]:
    """Two PostgreSQL databases (SQLAlchemy URLs) that one test module's tests share."""
    with ExitStack() as stack:
        yield [stack.enter_context(pg_database_factory()).sqlalchemy_url for _ in range(2)]


@pytest.fixture(scope="module")
def mariadb_urls(mariadb_database_factory) -> Iterator[list[str]]:
    """Two MariaDB databases (SQLAlchemy URLs) that one test module's tests share."""
    with ExitStack() as stack:
        yield [stack.enter_context(mariadb_database_factory()).sqlalchemy_url for _ in range(2)]
