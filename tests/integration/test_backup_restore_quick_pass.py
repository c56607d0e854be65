"""The restore's quick first pass on PostgreSQL (core/backup/segments.py, ``quick_segment_sums``): the live table is
compared with the backup by a 64-bit hash of each row's typed values summed per segment, without hashing any row's
text. Changes that PostgreSQL's own hash functions cannot see (they are built for hash joins: int8 halves folded,
numeric sign and scale, -0, 1 day = 24 hours, jsonb nesting, two rows swapping a value) are still found and
restored; an unchanged table is left alone without reading the backup or hashing row text; a backup made before
the quick pass still restores through the row-text pass."""

from __future__ import annotations

import pytest
from backup_it_support import open_target

from airflow_migrate_provider.core.backup import segments
from airflow_migrate_provider.core.backup.pg_dump import PgDumpStrategy
from airflow_migrate_provider.core.backup.restore import compare_backup, restore_backup
from airflow_migrate_provider.core.backup.strategies import STRATEGIES
from airflow_migrate_provider.core.dialects.pg_restore import PgSegmentRestore
from airflow_migrate_provider.core.dialects.postgresql import PostgresDialect

ROWS = 3000
SETUP = [
    "CREATE TABLE odd (id bigint PRIMARY KEY, big bigint, num numeric, f float8, iv interval, ts timestamptz, "
    "doc jsonb, label char(6), note text)",
    f"INSERT INTO odd SELECT g, 0, 1.5, 0, interval '1 day', timestamptz '2024-01-01 00:00:00+00', "
    f"'[[1], 2]', 'ab', 'note ' || g FROM generate_series(1, {ROWS}) AS g",
]
BACKUP_ODD = "UPDATE odd SET note = note"
# each: a change whose values PostgreSQL's own hash of the type does not tell apart from the backed-up ones
INVISIBLE_TO_NATIVE_HASHES = {
    "int8_halves_folded": "UPDATE odd SET big = 4294967297 WHERE id = 17",
    "numeric_sign": "UPDATE odd SET num = -1.5 WHERE id = 17",
    "numeric_scale": "UPDATE odd SET num = 1.50 WHERE id = 17",
    "float_negative_zero": "UPDATE odd SET f = '-0' WHERE id = 17",
    "interval_day_is_24_hours": "UPDATE odd SET iv = interval '24 hours' WHERE id = 17",
    "jsonb_nesting": "UPDATE odd SET doc = '[[1, 2]]' WHERE id = 17",
    "timestamp_moved": "UPDATE odd SET ts = ts + interval '1 microsecond' WHERE id = 17",
    "null_versus_empty": "UPDATE odd SET note = NULL WHERE id = 17",
    "two_rows_swap_a_value": "UPDATE odd SET note = CASE id WHEN 17 THEN 'note 18' ELSE 'note 17' END "
                             "WHERE id IN (17, 18)",
}


@pytest.fixture(params=["snapshot", "pg_dump"])
def odd(request, pg_database, tmp_path):
    t = open_target(pg_database, request.param, tmp_path / "backups")
    t.sql(*SETUP)
    yield t
    t.engine.dispose()


def table_text(t) -> list[tuple]:
    return t.rows("SELECT o::text FROM odd AS o ORDER BY id")


def no_row_text_pass(monkeypatch) -> None:
    """Hashing the rows' text (the slow pass) now fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("the restore hashed the rows' text")

    monkeypatch.setattr(PgSegmentRestore, "segment_sums", refuse)
    monkeypatch.setattr(PostgresDialect, "table_hash", refuse)


@pytest.mark.parametrize("change", sorted(INVISIBLE_TO_NATIVE_HASHES))
def test_the_quick_pass_sees_changes_native_hashes_miss_and_they_are_restored(odd, monkeypatch, change):
    t = odd
    before = table_text(t)
    b = t.backup(BACKUP_ODD)
    assert b.table("odd").quick and b.table("odd").quick["scheme"].startswith("hre1:")
    t.sql(INVISIBLE_TO_NATIVE_HASHES[change])
    assert table_text(t) != before
    no_row_text_pass(monkeypatch)
    loaded: list[str | None] = []
    real_load = PgDumpStrategy._load

    def recording_load(self, conn, location, table, into, where=None):
        loaded.append(where)
        real_load(self, conn, location, table, into, where)
        assert conn.exec_driver_sql(f"SELECT count(*) FROM {into}").scalar() < ROWS // 100

    monkeypatch.setattr(PgDumpStrategy, "_load", recording_load)

    report = restore_backup(t.engine, b)

    assert [s.action for s in report.tables] == ["synchronised"] and report.all_equal
    assert table_text(t) == before
    if t.strategy == "pg_dump":  # only the differing segments' rows were kept from the archive
        assert len(loaded) == 1 and loaded[0] and " IN (" in loaded[0]
    assert all(s.equal for s in compare_backup(t.engine, b))


def test_an_unchanged_table_is_skipped_without_reading_the_backup_or_hashing_row_text(odd, monkeypatch):
    t = odd
    b = t.backup(BACKUP_ODD)
    no_row_text_pass(monkeypatch)

    def refuse(*args, **kwargs):
        raise AssertionError("the restore read rows it did not need")

    monkeypatch.setattr(segments, "stage", refuse)
    monkeypatch.setattr(STRATEGIES[t.strategy], "relations", refuse)

    report = restore_backup(t.engine, b)

    assert [s.action for s in report.tables] == ["unchanged"] and report.all_equal


def test_a_backup_without_quick_sums_restores_through_the_row_text_pass(odd):
    t = odd
    before = table_text(t)
    b = t.backup(BACKUP_ODD)
    for manifest in b.tables:
        manifest.quick = None  # as recorded before the quick pass existed
    t.sql(INVISIBLE_TO_NATIVE_HASHES["numeric_sign"])

    report = restore_backup(t.engine, b)

    assert [s.action for s in report.tables] == ["synchronised"] and report.all_equal
    assert table_text(t) == before
