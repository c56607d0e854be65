"""PostgreSQL restores whose cost grows with what changed (core/backup/segments.py): a restore after a few changed
rows of a large table writes those rows only (counted by a trigger on the table), finds them segment by segment,
and is still verified before it commits: a sync that does not reproduce the backed-up rows, or that writes more
rows than it meant to, is caught, and the restore rolls back."""

from __future__ import annotations

import pytest
from backup_it_support import open_target

from airflow_migrate_provider.core.backup import restore as restore_module
from airflow_migrate_provider.core.backup import segments, sync
from airflow_migrate_provider.core.backup.restore import compare_backup, restore_backup
from airflow_migrate_provider.errors import RestoreFailed

ROWS = 5000
SETUP = [
    "CREATE TABLE big (id bigint PRIMARY KEY, name text, amount numeric(10,2), doc jsonb)",
    f"INSERT INTO big SELECT g, 'name ' || g, g / 100.0, jsonb_build_object('g', g) "
    f"FROM generate_series(1, {ROWS}) AS g",
    "CREATE TABLE writes (op text, n bigint)",
    "CREATE FUNCTION count_writes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "INSERT INTO writes VALUES (TG_OP, 1); RETURN NULL; END $$",
    "CREATE TRIGGER big_writes AFTER INSERT OR UPDATE OR DELETE ON big FOR EACH ROW EXECUTE FUNCTION count_writes()",
]
DAMAGE = [
    "UPDATE big SET name = 'changed', amount = amount + 1 WHERE id IN (7, 1234, 4999)",
    "DELETE FROM big WHERE id IN (1, 2500)",
    "INSERT INTO big VALUES (9001, 'new', 0, '{}'), (9002, 'new', 0, '{}')",
]
BACKUP_BIG = "UPDATE big SET name = name"


@pytest.fixture(params=["snapshot", "pg_dump"])
def big(request, pg_database, tmp_path):
    t = open_target(pg_database, request.param, tmp_path / "backups")
    t.sql(*SETUP)
    yield t
    t.engine.dispose()


def table_text(t) -> list[tuple]:
    return t.rows("SELECT id, name, amount::text, doc::text FROM big ORDER BY id")


def writes_by_restore(t, damage: list[str]) -> dict[str, int]:
    t.sql(*damage, "DELETE FROM writes")
    return writes(t)


def writes(t) -> dict[str, int]:
    return dict(t.rows("SELECT op, count(*) FROM writes GROUP BY op"))


def test_segment_restore_writes_only_the_changed_rows(big):
    t = big
    before = table_text(t)
    b = t.backup(BACKUP_BIG)
    assert b.table("big").segments and sum(n for _, n, _ in b.table("big").segments) == ROWS
    assert writes_by_restore(t, DAMAGE) == {}

    report = restore_backup(t.engine, b)

    assert [s.action for s in report.tables] == ["synchronised"] and report.all_equal
    assert writes(t) == {"UPDATE": 3, "INSERT": 2, "DELETE": 2}  # the 7 changed rows, nothing else
    assert table_text(t) == before
    assert all(s.equal for s in compare_backup(t.engine, b))


def test_segment_restore_compares_the_differing_segments_only(big, monkeypatch):
    t = big
    b = t.backup(BACKUP_BIG)
    t.sql(*DAMAGE)
    staged: list[int] = []
    real_stage = segments.stage

    def counting_stage(conn, manifest, state, source, index):
        live, backed_up = real_stage(conn, manifest, state, source, index)
        staged.append(conn.exec_driver_sql(f"SELECT count(*) FROM {backed_up}").scalar())
        return live, backed_up

    monkeypatch.setattr(segments, "stage", counting_stage)
    state = {s.table: s for s in compare_backup(t.engine, b)}["big"]
    assert not state.equal and state.segments and len(state.segments) <= 7

    restore_backup(t.engine, b)

    assert len(staged) == 1 and 0 < staged[0] < ROWS // 20  # a few segments' rows, not the table


def test_restore_after_most_segments_changed_synchronises_the_whole_table_at_once(big, monkeypatch):
    """Past a quarter of the segments, staging them one set at a time costs more than one whole-table pass: the
    restore takes that path (no segment staging) and still ends equal to the backup."""
    t = big
    before = table_text(t)
    b = t.backup(BACKUP_BIG)
    t.sql("UPDATE big SET amount = amount + 1 WHERE mod(id, 3) = 0")
    monkeypatch.setattr(segments, "stage", lambda *a: pytest.fail("segments were staged"))
    state = {s.table: s for s in compare_backup(t.engine, b)}["big"]
    assert not state.equal and state.segments is None and "segments differ" in state.actual

    report = restore_backup(t.engine, b)

    assert [s.action for s in report.tables] == ["synchronised"] and report.all_equal
    assert table_text(t) == before


def test_unchanged_table_is_not_restored_and_nothing_is_written(big):
    t = big
    b = t.backup(BACKUP_BIG)
    t.sql("DELETE FROM writes")
    report = restore_backup(t.engine, b)
    assert [s.action for s in report.tables] == ["unchanged"] and report.all_equal
    assert writes(t) == {}


def test_segment_restore_rolls_back_when_the_restored_rows_differ(big, monkeypatch):
    """A sync that leaves one changed row behind: the exact check of the restored segments refuses the commit."""
    t = big
    b = t.backup(BACKUP_BIG)
    t.sql(*DAMAGE)
    damaged = table_text(t)
    real = sync._update_and_insert

    def forgetful_update(conn, dialect, manifest, source, diff=None):
        written = real(conn, dialect, manifest, source, diff)
        conn.exec_driver_sql("UPDATE big SET name = 'still wrong' WHERE id = 7")
        return written

    monkeypatch.setattr(sync, "_update_and_insert", forgetful_update)
    with pytest.raises(RestoreFailed, match="did not reproduce the backed-up rows: 2 row"):
        restore_backup(t.engine, b)
    assert table_text(t) == damaged  # rolled back


def test_segment_restore_checks_the_whole_table_when_other_rows_were_written(big, monkeypatch):
    """A write outside the differing segments (here by the restore's own connection, as a trigger could) makes the
    transaction's counts differ from the sync's: the whole table is checksummed, finds it, and rolls back."""
    t = big
    b = t.backup(BACKUP_BIG)
    t.sql(*DAMAGE)
    damaged = table_text(t)
    real = sync._update_and_insert
    state = {s.table: s for s in compare_backup(t.engine, b)}["big"]
    outside = t.scalar(f"SELECT min(id) FROM big WHERE (hashtextextended(ROW(id)::text, 2) & 1023) "
                       f"<> ALL(ARRAY{state.segments}::bigint[])")

    def collateral_update(conn, dialect, manifest, source, diff=None):
        written = real(conn, dialect, manifest, source, diff)
        conn.exec_driver_sql(f"UPDATE big SET name = 'collateral' WHERE id = {outside}")
        return written

    monkeypatch.setattr(sync, "_update_and_insert", collateral_update)
    whole: list[set[str] | None] = []
    real_compare = restore_module.compare

    def recording_compare(conn, backup, only=None):
        whole.append(only)
        return real_compare(conn, backup, only)

    monkeypatch.setattr(restore_module, "compare", recording_compare)
    with pytest.raises(RestoreFailed, match="did not reproduce the manifest"):
        restore_backup(t.engine, b)
    assert whole[-1] == {"big"}  # the fallback: the whole table checksummed
    assert table_text(t) == damaged


def test_segment_restore_without_a_write_outside_needs_no_whole_table_checksum(big, monkeypatch):
    t = big
    b = t.backup(BACKUP_BIG)
    t.sql(*DAMAGE)
    calls: list[set[str] | None] = []
    real_compare = restore_module.compare

    def recording_compare(conn, backup, only=None):
        calls.append(only)
        return real_compare(conn, backup, only)

    monkeypatch.setattr(restore_module, "compare", recording_compare)
    report = restore_backup(t.engine, b)
    assert report.all_equal and calls == [None]  # the one comparison before the work; the proof did the rest
