"""A corpus of hostile or careless plan files: each must be refused by `airflow-migrate validate` with exit 1 and a
``file:line:col`` message, quickly, in bounded memory, touching no database.

``CASES`` maps a case name to its file content (bytes) and, where it is known, the line the first problem must be
reported at. ``SPECIAL`` cases are not plain files (a FIFO, a device, a folder, a file over the size limit): they
are made by :func:`write_corpus`.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

from airflow_migrate_provider.plan.guard import MAX_PLAN_BYTES

# line numbers:  1 id / 2 connections / 3 target / 4 steps / 5 - id / 6 up / 7 down / 8 verify
HEAD = "id: hostile\nconnections:\n  target: app_db\n"
STEP = "  - id: create_table\n    up: CREATE TABLE t (a int)\n    down: DROP TABLE t\n    verify: SELECT 1\n"
VALID = HEAD + "steps:\n" + STEP


@dataclass(frozen=True)
class Case:
    content: bytes
    line: int | None = None  # the line the first problem is reported at, where the case fixes it


def _verify_step(kwargs: str) -> str:
    """A verify step (line 9 on) whose GX suite holds ``kwargs`` (one line, at line 16)."""
    return ("  - id: check\n    kind: verify\n    target: {table: t}\n    checks: []\n    expectations:\n"
            "      suite:\n        - type: expect_column_values_to_not_be_null\n          kwargs: " + kwargs + "\n")


def _billion_laughs(indent: str, levels: int = 9, width: int = 9) -> str:
    lines = [f"{indent}a0: &a0 [" + ",".join(['"lol"'] * width) + "]"]
    lines += [f"{indent}a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _backfill(extra: str) -> str:
    return (VALID + "  - id: copy_users\n    kind: backfill\n    source: {table: users}\n    target: users_v2\n"
            "    key: id\n    append_only: true\n" + extra)


def _text_cases() -> dict[str, Case]:
    """Cases as text (UTF-8)."""
    deep = 600
    cases: dict[str, tuple[str, int | None]] = {
        # expansion and nesting
        "alias_bomb_kwargs": (VALID + "  - id: check\n    kind: verify\n    target: {table: t}\n    checks: []\n"
                              "    expectations:\n      suite:\n        - type: expect_column_values_to_not_be_null\n"
                              "          kwargs:\n" + _billion_laughs(" " * 12), None),
        "alias_bomb_tags": (VALID + "t0: &t0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"t{i}: &t{i} [" + ",".join([f"*t{i - 1}"] * 10) + "]\n" for i in range(1, 9))
            + "tags: [" + ",".join(["*t8"] * 10) + "]\n", None),
        "alias_bomb_text": (VALID + "description: &d \"" + "x" * 200_000 + "\"\nx: [" + ",".join(["*d"] * 200)
                            + "]\n", None),
        "alias_bomb_anchor_first": (HEAD + "defaults: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
            f"d{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]\n" for i in range(1, 8)) + "steps:\n" + STEP, None),
        "recursive_alias": (VALID + "tags: &t [a, *t]\n", 9),
        "recursive_mapping_alias": (VALID + "backup: &b {strategy: snapshot, tables: *b}\n", 9),
        "brackets_600_in_tags": (VALID + "tags: " + "[" * deep + "]" * deep + "\n", 9),
        "braces_600_in_description": (VALID + "description: " + "{a: " * deep + "1" + "}" * deep + "\n", 9),
        "brackets_600_in_kwargs": (VALID + _verify_step("[" * deep + "]" * deep), 16),
        "brackets_5000": (VALID + "tags: " + "[" * 5000 + "]" * 5000 + "\n", 9),
        "block_mapping_200_deep": (VALID + "".join(f"{'  ' * i}k{i}:\n" for i in range(200)) + "  " * 200 + "v\n",
                                   None),
        "block_sequence_100_deep": (VALID + "tags:\n" + "".join(f"{'  ' * i}-\n" for i in range(100)) + "  " * 100
                                    + "x\n", None),
        "many_values": (VALID + "tags: [" + ",".join(["a"] * 600_000) + "]\n", 9),
        "wide_mapping": (VALID + "x: {" + ",".join(f"k{i}: 1" for i in range(300_000)) + "}\n", None),
        # YAML features a plan must not use
        "python_object_tag": (VALID + "description: !!python/object/apply:os.system ['touch /tmp/pwned']\n", 9),
        "python_name_tag": (VALID + "description: !!python/name:os.system\n", 9),
        "python_object_document": ("--- !!python/object:collections.OrderedDict\n" + VALID, 1),
        "custom_tag": (VALID + "description: !Ref other\n", 9),
        "binary_tag": (VALID + "description: !!binary aGVsbG8=\n", 9),
        "set_tag": (VALID + "tags: !!set {a, b}\n", 9),
        "omap_tag": (VALID + "tags: !!omap [a: 1]\n", 9),
        "merge_key": (VALID + "base: &b {retries: 1}\nextra:\n  <<: *b\n", 11),
        "duplicate_top_level_key": (VALID + "id: again\n", 9),
        "duplicate_step_key": (VALID + "    up: DROP TABLE t\n", 9),
        "duplicate_step_id": (VALID + STEP, 9),
        "alias_as_key_duplicates": (HEAD.replace("id: hostile", "&k id: hostile") + "steps:\n" + STEP
                                    + "*k : again\n", None),
        "anchored_mapping_key": (VALID + "? &k [a, b]\n: 1\n", 9),
        "complex_key": (VALID + "? {a: 1}\n: 1\n", 9),
        "multiple_documents": (VALID + "---\n" + VALID, 9),
        "yaml_directive_2": ("%YAML 2.0\n---\n" + VALID, 1),
        # numbers
        "huge_int_digits": (VALID + "retries: " + "9" * 5000 + "\n", 9),
        "huge_int_range": (VALID + "lock_ttl_seconds: 1000000000000000000000000000000\n", 9),
        "negative_retries": (VALID + "retries: -1\n", 9),
        "inf_timeout": (VALID + "approval: {timeout_hours: .inf}\n", 9),
        "nan_throttle_max": (_backfill("    throttle: [{name: lag, query: SELECT 1, max: .nan}]\n"), 15),
        "inf_tolerance": (VALID + "  - id: check\n    kind: verify\n    target: {table: t}\n    checks: []\n"
                          "    performance:\n      tolerance_pct: .inf\n      queries: [{name: q, sql: SELECT 1}]\n",
                          14),
        "negative_map_index": (VALID + "fault_injection: {task: steps.create_table, map_index: -1}\n", 9),
        # text the database, the logs or Airflow cannot take
        "nul_escape": (VALID + 'description: "a\\0b"\n', 9),
        "lone_surrogate": (VALID + 'description: "\\ud800"\n', 9),
        "control_char": (VALID + "description: bell\x07\n", 9),
        "escape_char_in_id": (VALID.replace("id: hostile", 'id: "host\\x1bile"'), 1),
        # ids that only look right
        "plan_id_trailing_newline": (VALID.replace("id: hostile", 'id: "hostile\\n"'), 1),
        "step_id_trailing_newline": (VALID.replace("- id: create_table", '- id: "create_table\\n"'), 5),
        "conn_id_trailing_newline": (VALID.replace("target: app_db", 'target: "app_db\\n"'), 3),
        "table_trailing_newline": (_backfill("").replace("target: users_v2", 'target: "users_v2\\n"'), 12),
        "source_table_trailing_newline": (_backfill("").replace("{table: users}", '{table: "users\\n"}'), 11),
        "key_column_trailing_newline": (_backfill("").replace("key: id", 'key: "id\\n"'), 13),
        "backup_table_trailing_newline": (VALID + 'backup: {strategy: snapshot, tables: ["t\\n"]}\n', 9),
        "tag_trailing_newline": (VALID + 'tags: ["ok\\n"]\n', 9),
        "homoglyph_step_id": (VALID.replace("- id: create_table", "- id: cre\u0430te_table"), 5),
        "bidi_override_step_id": (VALID.replace("- id: create_table", "- id: create\u202e_table"), 5),
        "zero_width_conn_id": (VALID.replace("target: app_db", "target: app\u200b_db"), 3),
        "line_separator_in_id": (VALID.replace("id: hostile", 'id: "host\\Lile"'), 1),
        "bidi_tag": (VALID + "tags: [\"ok\u202e\"]\n", 9),
        "very_long_id": (VALID.replace("id: hostile", "id: " + "a" * 10_000), 1),
        "very_long_line_unknown_key": (VALID + "x" * 2_000_000 + ": 1\n", 9),
        "very_long_value_wrong_type": (VALID + "retries: " + "z" * 2_000_000 + "\n", 9),
        # what the DAG build would reject
        "before_step_clashes_with_gate": (VALID.replace("create_table", "before_drop") + "  - id: drop\n"
                                          "    up: DROP TABLE t\n    irreversible: true\n    verify: SELECT 1\n", 5),
        "tag_over_100": (VALID + "tags: [" + "t" * 101 + "]\n", 9),
        "empty_tag": (VALID + "tags: ['']\n", 9),
        "fault_unknown_task": (VALID + "fault_injection: {task: steps.create_tabel}\n", 9),
        "fault_on_approval": (VALID + "  - id: drop\n    up: DROP TABLE t\n    irreversible: true\n"
                              "    verify: SELECT 1\nfault_injection: {task: steps.before_drop.approve}\n", 13),
        "fault_map_index_unmapped": (VALID + "fault_injection: {task: steps.create_table, map_index: 0}\n", 9),
        # layout
        "empty_file": ("", 1),
        "only_comments": ("# nothing here\n# at all\n", 1),
        "only_document_marker": ("---\n", 2),
        "top_level_list": ("- id: x\n", 1),
        "top_level_scalar": ("just text\n", 1),
        "crlf_unknown_key": ((VALID + "colour: blue\n").replace("\n", "\r\n"), 9),
        "tab_indentation": (VALID.replace("    up:", "\tup:"), 6),
        "mixed_tabs_spaces": (VALID.replace("    down:", "  \t  down:"), 7),
        "bom_then_unknown_key": ("\ufeff" + VALID + "colour: blue\n", 9),
        "bom_in_the_middle": (VALID + "description: a\ufeffb\ncolour: blue\n", 10),
        "unclosed_quote": (VALID + 'description: "never closed\n', 10),
        "unclosed_bracket": (VALID + "tags: [a, b\n", 10),
        "steps_as_mapping": (HEAD + "steps: {id: x}\n", 4),
        "step_kind_number": (VALID.replace("  - id: create_table", "  - kind: 5\n    id: create_table"), 5),
        "unknown_step_kind": (VALID.replace("  - id: create_table", "  - kind: teleport\n    id: create_table"), 5),
        "null_id": (VALID.replace("id: hostile", "id:"), 1),
        "timestamp_id": (VALID.replace("id: hostile", "id: 2024-01-01"), 1),
        "irreversible_with_down": (VALID.replace("    verify:", "    irreversible: true\n    verify:"), 5),
    }
    return {name: Case(text.encode("utf-8", "surrogatepass"), line) for name, (text, line) in cases.items()}


def _byte_cases() -> dict[str, Case]:
    """Cases that are not UTF-8 text, or hold bytes YAML does not allow."""
    noise = random.Random(12).randbytes(4096)
    return {
        "nul_byte_line_5": Case(VALID.replace("- id: create_table", "- id: create\x00table").encode(), 5),
        "invalid_utf8_line_6": Case(VALID.encode().replace(b"CREATE TABLE", b"CREATE \xff TABLE"), 6),
        "latin1_file": Case((VALID + "description: caf\xe9\n").encode("latin-1"), 9),
        "utf16_file": Case(VALID.encode("utf-16"), 1),
        "random_binary": Case(noise, None),
        "png_header": Case(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + noise[:200], 1),
        "gzip_bytes": Case(b"\x1f\x8b\x08\x00" + noise[:300], 1),
        "truncated_utf8": Case(VALID.encode() + "description: \u00e9".encode()[:-1], 9),
    }


CASES: dict[str, Case] = {**_text_cases(), **_byte_cases()}
SPECIAL = ("over_size_limit", "dev_zero", "fifo", "folder", "missing_file")


def write_corpus(folder: Path) -> dict[str, Path]:
    """Every case as a file under ``folder`` (the special ones made as what they are); {name: path}."""
    paths: dict[str, Path] = {}
    for name, case in CASES.items():
        path = folder / f"{name}.yaml"
        path.write_bytes(case.content)
        paths[name] = path
    big = folder / "over_size_limit.yaml"
    with big.open("wb") as file:  # sparse: the cap + 1 bytes cost no disk
        file.write(VALID.encode())
        file.truncate(MAX_PLAN_BYTES + 1)
    paths["over_size_limit"] = big
    paths["dev_zero"] = folder / "dev_zero.yaml"
    paths["dev_zero"].symlink_to("/dev/zero")
    paths["fifo"] = folder / "fifo.yaml"
    os.mkfifo(paths["fifo"])
    paths["folder"] = folder / "folder.yaml"
    paths["folder"].mkdir()
    paths["missing_file"] = folder / "missing_file.yaml"
    return paths
