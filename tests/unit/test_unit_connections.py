"""Connections given to the CLI: ``--conn ID=URI``, ``--conn ID=env:VAR``, ``--conn-file FILE``; malformed URIs are
named for what is wrong (never "not defined"), and no message or output quotes a password."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import airflow_migrate_provider
from airflow_migrate_provider.connections import (
    ConnectionOptionError,
    gather,
    load_conn_file,
    parse_conn_option,
    uri_problem,
)

PASSWORD = "Pw-5ecret-42"
EXAMPLE = Path(airflow_migrate_provider.__file__).parent / "examples" / "add_user_preferences.yaml"


@pytest.mark.parametrize("uri, says", [
    (f"app:{PASSWORD}@db.internal/app", "has no scheme"),
    (f"postgresql://app:{PASSWORD}@db.internal:54x2/app", "malformed port '54x2'"),
    (f"postgresql://app:{PASSWORD}@db.internal:99999/app", "malformed port '99999'"),
    (f"postgresql://app:{PASSWORD}@[127.0.0.1/app", "malformed host"),
    (f"postgresql://app:{PASSWORD}@127.0.0.1]/app", "malformed host"),
    (f"bogus://app:{PASSWORD}@db/app", "scheme 'bogus'"),
    (f"postgresql://app:{PASSWORD}@db/app name", "whitespace"),
    (" ", "is empty"),
])
def test_a_malformed_uri_is_named_for_what_is_wrong_without_its_password(uri: str, says: str) -> None:
    problem = uri_problem(uri)
    assert problem is not None and says in problem
    assert PASSWORD not in problem

    with pytest.raises(ConnectionOptionError) as caught:
        parse_conn_option(f"app_db={uri}")
    assert "'app_db'" in str(caught.value) and says in str(caught.value)
    assert PASSWORD not in str(caught.value)
    assert caught.value.exit_code == 2


@pytest.mark.parametrize("uri", [
    f"postgresql://app:{PASSWORD}@db.internal:5432/app?sslmode=require",
    "postgres://app@db/app",
    "postgresql:///app?host=/var/run/postgresql",
    f"mysql://root:{PASSWORD}@[::1]:3306/shop",
    "mariadb://root@127.0.0.1/shop",
    "sqlite:////srv/data/app.db",
    "postgresql+psycopg://app@db/app",
])
def test_well_formed_uris_pass(uri: str) -> None:
    assert uri_problem(uri) is None
    assert parse_conn_option(f"app_db={uri}") == ("app_db", uri)


def test_env_reads_the_uri_from_a_variable(monkeypatch) -> None:
    uri = f"postgresql://app:{PASSWORD}@db/app"
    monkeypatch.setenv("APP_DB_URI", uri)
    assert parse_conn_option("app_db=env:APP_DB_URI") == ("app_db", uri)


def test_env_with_an_unset_or_malformed_variable_says_so(monkeypatch) -> None:
    monkeypatch.delenv("NOT_SET_ANYWHERE", raising=False)
    with pytest.raises(ConnectionOptionError, match="environment variable NOT_SET_ANYWHERE is not set"):
        parse_conn_option("app_db=env:NOT_SET_ANYWHERE")
    monkeypatch.setenv("APP_DB_URI", f"app:{PASSWORD}@db/app")
    with pytest.raises(ConnectionOptionError, match="has no scheme") as caught:
        parse_conn_option("app_db=env:APP_DB_URI")
    assert PASSWORD not in str(caught.value)
    with pytest.raises(ConnectionOptionError, match="does not name an environment variable"):
        parse_conn_option("app_db=env:NOT-A-NAME")


@pytest.mark.parametrize("value", ["app_db", f"app:{PASSWORD}@db/app", "=postgresql://db/app", "app_db="])
def test_a_conn_option_without_id_and_uri_is_refused_without_echoing_a_password(value: str) -> None:
    with pytest.raises(ConnectionOptionError, match="expects ID=URI or ID=env:VARIABLE") as caught:
        parse_conn_option(value)
    assert PASSWORD not in str(caught.value)


def _private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.mark.parametrize("text", [
    f"# connections\napp_db = postgresql://app:{PASSWORD}@db/app\n\nlegacy_db=env:LEGACY_URI\n",
    json.dumps({"app_db": f"postgresql://app:{PASSWORD}@db/app", "legacy_db": "env:LEGACY_URI"}),
    f"app_db: postgresql://app:{PASSWORD}@db/app?sslmode=require&x=1\nlegacy_db: 'env:LEGACY_URI'\n",
])
def test_a_conn_file_holds_lines_or_a_json_or_yaml_map(tmp_path: Path, monkeypatch, text: str) -> None:
    monkeypatch.setenv("LEGACY_URI", "sqlite:////srv/legacy.db")
    found = load_conn_file(_private(tmp_path / "conns", text), warn=pytest.fail)
    assert found["app_db"].startswith(f"postgresql://app:{PASSWORD}@db/app")
    assert found["legacy_db"] == "sqlite:////srv/legacy.db"


def test_a_conn_file_others_may_read_is_refused_and_a_group_readable_one_warned_about(tmp_path: Path) -> None:
    text = f"app_db=postgresql://app:{PASSWORD}@db/app\n"
    with pytest.raises(ConnectionOptionError, match="chmod 600"):
        load_conn_file(_private(tmp_path / "open", text, 0o644), warn=pytest.fail)
    warnings: list[str] = []
    assert load_conn_file(_private(tmp_path / "group", text, 0o640), warn=warnings.append)
    assert len(warnings) == 1 and "group may read it" in warnings[0]


@pytest.mark.parametrize("text, says", [
    (f"app_db=app:{PASSWORD}@db/app\n", ":1: the URI of connection 'app_db' has no scheme"),
    (f"app_db=postgresql://db/app\nnot a line {PASSWORD}\n", ":2: expected ID=URI"),
    (f"app_db: [postgresql://app:{PASSWORD}@db/app\n", "neither ID=URI lines nor"),
    ("[1, 2]\n", "expected ID=URI lines or a JSON/YAML map"),
    (f'{{"app_db": "postgresql://app:{PASSWORD}@db:54x2/app"}}', "malformed port '54x2'"),
])
def test_a_bad_conn_file_names_the_file_and_what_is_wrong(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(ConnectionOptionError, match="conns") as caught:
        load_conn_file(_private(tmp_path / "conns", text), warn=pytest.fail)
    assert says in str(caught.value)
    assert PASSWORD not in str(caught.value)


def test_conn_options_win_over_the_file(tmp_path: Path) -> None:
    path = _private(tmp_path / "conns", "app_db=postgresql://file@db/app\nlegacy_db=postgresql://file@db/legacy\n")
    found = gather(["app_db=postgresql://option@db/app"], path, warn=pytest.fail)
    assert found == {"app_db": "postgresql://option@db/app", "legacy_db": "postgresql://file@db/legacy"}


def test_render_refuses_a_uri_without_scheme_and_never_prints_its_password(cli) -> None:
    result = cli("render", EXAMPLE, "--conn", f"demo_db=app:{PASSWORD}@db.internal/app")
    assert result.returncode == 2
    assert "the URI of connection 'demo_db' has no scheme" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_render_masks_a_schemeless_uri_given_through_the_api() -> None:
    from airflow_migrate_provider.masking import mask_uri

    assert mask_uri(f"app:{PASSWORD}@db.internal/app") == "app:***@db.internal/app"
    assert mask_uri(f"app:{PASSWORD}@x@db.internal/app") == "app:***@db.internal/app"
    assert PASSWORD not in mask_uri(f"app:{PASSWORD}/x@db.internal/app")


@pytest.mark.parametrize("uri, says", [
    (f"postgresql://app:{PASSWORD}@127.0.0.1:54x2/app", "malformed port '54x2'"),
    (f"postgresql://app:{PASSWORD}@[127.0.0.1/app", "malformed host"),
    (f"nosuchdb://app:{PASSWORD}@127.0.0.1/app", "scheme 'nosuchdb'"),
])
def test_render_with_a_malformed_uri_says_what_is_malformed(cli, uri: str, says: str) -> None:
    result = cli("render", EXAMPLE, "--conn", f"demo_db={uri}")
    assert result.returncode == 2
    assert says in result.stderr and "not defined" not in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_render_with_conn_from_env_and_file_prints_the_uri_masked(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("DEMO_DB_URI", f"postgresql://app:{PASSWORD}@db.internal/app")
    by_env = cli("render", EXAMPLE, "--conn", "demo_db=env:DEMO_DB_URI")
    by_file = cli("render", EXAMPLE, "--conn-file",
                  _private(tmp_path / "conns", f"demo_db=postgresql://app:{PASSWORD}@db.internal/app\n"))
    for result in (by_env, by_file):
        assert result.returncode == 0, result.stderr
        assert "demo_db = postgresql://app:***@db.internal/app" in result.stdout
        assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize("uri, says", [
    (f"postgresql://app:{PASSWORD}@127.0.0.1:54x2/app", "malformed port '54x2'"),
    (f"app:{PASSWORD}@127.0.0.1/app", "has no scheme"),
])
def test_a_malformed_airflow_conn_variable_is_named_not_called_undefined(monkeypatch, uri: str, says: str) -> None:
    from airflow_migrate_provider.errors import ConnectionUnavailable
    from airflow_migrate_provider.hooks.migration import MigrationHook

    monkeypatch.setenv("AIRFLOW_CONN_APP_DB", uri)
    with pytest.raises(ConnectionUnavailable) as caught:
        MigrationHook("app_db").get_engine()
    assert "AIRFLOW_CONN_APP_DB" in str(caught.value) and says in str(caught.value)
    assert "not defined" not in str(caught.value) and PASSWORD not in str(caught.value)
    assert not caught.value.transient
