"""Secrets never reach logs or rendered output: URIs and messages containing them are masked."""

from __future__ import annotations

import pytest

from airflow_migrate_provider.masking import mask_text, mask_uri


@pytest.mark.parametrize(
    "uri, masked",
    [
        ("postgresql://app:s3cret@db.internal:5432/app", "postgresql://app:***@db.internal:5432/app"),
        ("postgresql+psycopg://app:s3cret@db/app", "postgresql+psycopg://app:***@db/app"),
        ("mysql://root:hunter2@127.0.0.1/shop?charset=utf8mb4", "mysql://root:***@127.0.0.1/shop?charset=utf8mb4"),
        ("postgresql://app:p%40ss%2Fw0rd@db/app", "postgresql://app:***@db/app"),  # percent-encoded
        ("postgresql://app:db@db/app", "postgresql://app:***@db/app"),  # password equal to the host
        ("postgresql://app:5432@db:5432/app", "postgresql://app:***@db:5432/app"),  # ... or to the port
        ("postgresql://:only_pw@db/app", "postgresql://:***@db/app"),
    ],
)
def test_password_in_userinfo_is_masked(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


@pytest.mark.parametrize(
    "uri, masked",
    [
        ("postgresql://db/app?password=s3cret&sslmode=require", "postgresql://db/app?password=***&sslmode=require"),
        ("postgresql://db/app?sslmode=require&token=abc123", "postgresql://db/app?sslmode=require&token=***"),
        ("postgresql://app:pw@db/app?token=abc&application_name=x",
         "postgresql://app:***@db/app?token=***&application_name=x"),
        ("https://api.example.com/v1?api_key=zz&Password=Y", "https://api.example.com/v1?api_key=***&Password=***"),
    ],
)
def test_secrets_in_query_string_are_masked(uri: str, masked: str) -> None:
    assert mask_uri(uri) == masked


@pytest.mark.parametrize(
    "uri",
    [
        "postgresql://app@db.internal:5432/app",
        "postgresql://db/app?sslmode=require&application_name=migrate",
        "mysql://root@localhost/shop",
    ],
)
def test_passwordless_uris_are_left_intact(uri: str) -> None:
    assert mask_uri(uri) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "sqlite:////srv/data/app.db",  # absolute path
        "sqlite:///relative/app.db",
        "sqlite:///:memory:",
        "postgresql:///app?host=/var/run/postgresql",  # Unix socket
    ],
)
def test_uris_without_host_are_left_intact(uri: str) -> None:
    assert mask_uri(uri) == uri


def test_unparseable_uri_is_fully_masked() -> None:
    assert mask_uri("postgresql://app:pw@[::1") == "***"


def test_password_never_survives_masking() -> None:
    for uri in ("postgresql://app:Zq9!xY@db/app", "postgresql://app:Zq9!xY@db/app?password=Zq9!xY"):
        assert "Zq9!xY" not in mask_uri(uri)


def test_mask_text_masks_uris_inside_a_message() -> None:
    message = ('connection to postgresql://app:s3cret@db:5432/app failed: timeout; '
               'fallback mysql://root:hunter2@replica/app failed too')
    masked = mask_text(message)
    assert masked == ('connection to postgresql://app:***@db:5432/app failed: timeout; '
                      'fallback mysql://root:***@replica/app failed too')
    assert "s3cret" not in masked
    assert "hunter2" not in masked


def test_mask_text_leaves_messages_without_credentials_alone() -> None:
    for text in ("relation \"users\" does not exist",
                 "could not connect to postgresql://app@db:5432/app",
                 "user:pass@host is not a URI"):
        assert mask_text(text) == text


def test_mask_text_masks_multiline_messages() -> None:
    message = "line one\n  DSN: postgresql://u:pw1@h/db\nline three"
    assert mask_text(message) == "line one\n  DSN: postgresql://u:***@h/db\nline three"


def test_mask_text_masks_query_string_secrets() -> None:
    masked = mask_text("could not connect to postgresql://db/app?user=app&password=s3cret&sslmode=require")
    assert "s3cret" not in masked
    assert "sslmode=require" in masked
