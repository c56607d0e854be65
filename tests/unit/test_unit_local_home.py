"""The Airflow home of a local run: only a home the command created is ever reset or removed (local_home)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from airflow_migrate_provider.errors import AirflowHomeRefused
from airflow_migrate_provider.local_home import MARKER, LocalHome, prepare_home, remove_home

pytestmark = pytest.mark.timeout(30)


def test_no_home_given_makes_a_marked_temporary_one(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))

    home = prepare_home(None)

    assert home.temporary
    assert home.path.parent == tmp_path
    assert (home.path / MARKER).is_file()


def test_a_missing_home_is_created_absolute_and_marked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    home = prepare_home(Path("rel") / "home")

    assert home.path == tmp_path / "rel" / "home"
    assert home.path.is_absolute()
    assert not home.temporary
    assert (home.path / MARKER).is_file()


def test_an_empty_directory_is_accepted(tmp_path):
    (tmp_path / "empty").mkdir()

    assert prepare_home(tmp_path / "empty").path == tmp_path / "empty"
    assert (tmp_path / "empty" / MARKER).is_file()


def test_a_home_marked_by_an_earlier_run_is_reused(tmp_path):
    first = prepare_home(tmp_path / "home")
    (first.path / "airflow.db").write_bytes(b"metadata of the earlier run")

    again = prepare_home(tmp_path / "home")

    assert again.path == first.path
    assert (again.path / "airflow.db").read_bytes() == b"metadata of the earlier run"  # prepare_home deletes nothing


def test_a_non_empty_home_it_did_not_create_is_refused_and_left_alone(tmp_path):
    real = tmp_path / "airflow"
    real.mkdir()
    (real / "airflow.cfg").write_text("[core]\n")

    with pytest.raises(AirflowHomeRefused) as refused:
        prepare_home(real)

    message = str(refused.value)
    assert str(real) in message and "not created by airflow-migrate" in message
    assert "leave --airflow-home out" in message
    assert refused.value.exit_code == 2
    assert sorted(p.name for p in real.iterdir()) == ["airflow.cfg"]  # not even marked


def test_a_file_is_refused(tmp_path):
    (tmp_path / "home").write_text("x")

    with pytest.raises(AirflowHomeRefused, match="is a file"):
        prepare_home(tmp_path / "home")


def test_a_home_that_cannot_be_created_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")

    with pytest.raises(AirflowHomeRefused, match="cannot create it"):
        prepare_home(tmp_path / "file" / "home")


def test_removing_a_temporary_home_removes_all_of_it(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    home = prepare_home(None)
    (home.path / "logs" / "dag").mkdir(parents=True)
    (home.path / "airflow.db").write_bytes(b"x")

    assert remove_home(home) is None
    assert not home.path.exists()


def test_removing_a_temporary_home_keeps_its_backup_files(tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    home = prepare_home(None)
    (home.path / "migration_backups").mkdir()
    (home.path / "migration_backups" / "b1.sqlite").write_bytes(b"backup")
    (home.path / "airflow.db").write_bytes(b"x")
    (home.path / "logs").mkdir()

    kept = remove_home(home)

    assert kept == home.path / "migration_backups"
    assert os.listdir(home.path) == ["migration_backups"]
    assert (kept / "b1.sqlite").read_bytes() == b"backup"


def test_a_home_that_was_given_is_never_removed(tmp_path):
    with pytest.raises(ValueError, match="never removed"):
        remove_home(LocalHome(tmp_path, temporary=False))
    assert tmp_path.is_dir()
