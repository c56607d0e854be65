"""The MariaDB copy fast path's pure parts: the load's text format, its statement, and keyset bounds (no server;
the round trips through a real server are in tests/integration/test_backfill_mariadb_values.py)."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal

from airflow_migrate_provider.core.dialects.mysql_copy import Layout, encode_rows, expand_row_comparison, split_idents


def test_values_are_encoded_as_load_data_text():
    layout = Layout(["`a`", "`b`", "`c`", "`d`", "`e`", "`f`", "`g`", "`h`"],
                    ["value", "value", "value", "binary", "datetime", "value", "value", "value"])
    row = ("tab\there\nback\\slash 'q' \x00", None, True, b"\x00\xff", "2024-03-01 10:00:00+05:30",
           Decimal("1E+2"), {"big": 12345678901234567890}, timedelta(hours=-26, microseconds=5))
    line = encode_rows([row], layout).decode()
    assert line == ("'tab\there\nback\\\\slash \\'q\\' \\0'\t\\N\t1\t00ff\t2024-03-01 04:30:00\t100\t"
                    "'{\"big\": 12345678901234567890}'\t-25:59:59.999995\n")


def test_dates_times_and_instants():
    layout = Layout(["`a`", "`b`", "`c`", "`d`"], ["value", "value", "datetime", "datetime"])
    at = datetime(2024, 1, 1, 23, 30, tzinfo=timezone(timedelta(hours=-8)))
    line = encode_rows([(date(2024, 2, 29), time(1, 2, 3, 4), at, "0000-00-00 00:00:00")], layout).decode()
    assert line == "2024-02-29\t01:02:03.000004\t2024-01-02 07:30:00\t'0000-00-00 00:00:00'\n"


def test_no_rows_no_text():
    assert encode_rows([], Layout(["`a`"], ["value"])) == b""


def test_load_statement_unhexes_binary_columns():
    sql = Layout(["`id`", "`b``x`"], ["value", "binary"]).load_sql("/tmp/d'ir/rows.tsv", "`t`")
    assert sql == ("LOAD DATA LOCAL INFILE '/tmp/d''ir/rows.tsv' INTO TABLE `t` CHARACTER SET utf8mb4 "
                   "FIELDS OPTIONALLY ENCLOSED BY '''' (`id`, @am_1) SET `b``x` = UNHEX(@am_1)")


def test_split_idents_keeps_commas_inside_backticks():
    assert split_idents("`a`, `b, c`, `d``e`") == ["`a`", "`b, c`", "`d``e`"]


def test_row_comparisons_are_expanded():
    assert expand_row_comparison(["a", "b"], ">", ["x", "y"]) == "(a > x OR (a = x AND (b > y)))"
    assert expand_row_comparison(["a", "b", "c"], "<=", ["x", "y", "z"]) == (
        "(a < x OR (a = x AND (b < y OR (b = y AND (c <= z)))))")
    assert expand_row_comparison(["a", "b"], "=", ["x", "y"]) == "(a = x AND b = y)"
