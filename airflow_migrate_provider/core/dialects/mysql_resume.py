"""Which statements of a schema step can be run again after a crash on MySQL/MariaDB, where every DDL statement
commits on its own.

A step runs statement by statement and records its progress in the ledger after each one. A data change (INSERT,
UPDATE, DELETE) commits together with that record, so a resumed step knows exactly whether it ran. A DDL statement
commits before the record can: if the worker dies in between, the resumed step runs it a second time. That is
harmless for a statement guarded by ``IF [NOT] EXISTS`` (or ``OR REPLACE``), or one that sets a state (MODIFY
COLUMN); anything else fails the second time ("Duplicate key name", "Table already exists") or does it twice.
"""

from __future__ import annotations

import re

from airflow_migrate_provider.core.dialects.types import ResumeHazard

_COMMENTS = re.compile(r"/\*.*?\*/|--[^\n]*|#[^\n]*", re.S)
_QUOTED = re.compile(r"'(?:[^'\\]|\\.|'')*'|\"(?:[^\"\\]|\\.|\"\")*\"|`[^`]*`", re.S)
_DATA = ("INSERT", "UPDATE", "DELETE", "REPLACE", "SELECT", "WITH", "DO", "SET", "TRUNCATE", "LOCK", "UNLOCK",
         "ANALYZE", "OPTIMIZE", "GRANT", "REVOKE", "CALL", "COMMIT", "START", "BEGIN")
_CREATE = re.compile(r"CREATE\s+(?P<replace>OR\s+REPLACE\s+)?(?:TEMPORARY\s+)?"
                     r"(?:(?:UNIQUE|FULLTEXT|SPATIAL)\s+)?(?:ALGORITHM\s*=\s*\w+\s+)?(?:DEFINER\s*=\s*\S+\s+)?"
                     r"(?:SQL\s+SECURITY\s+\w+\s+)?(?P<what>TABLE|INDEX|VIEW|TRIGGER|PROCEDURE|FUNCTION|EVENT|"
                     r"SEQUENCE|DATABASE|SCHEMA|USER|ROLE)\b(?P<guard>\s+IF\s+NOT\s+EXISTS)?")
_DROP = re.compile(r"DROP\s+(?:TEMPORARY\s+)?(?P<what>\w+)\b(?P<guard>\s+IF\s+EXISTS)?")
_RENAME_TABLE = re.compile(r"RENAME\s+TABLES?\b(?P<guard>\s+IF\s+EXISTS)?")
_ALTER = re.compile(r"ALTER\s+(?:ONLINE\s+)?(?:IGNORE\s+)?TABLE\s+(?:IF\s+EXISTS\s+)?\S+\s*(?P<clauses>.*)", re.S)
# ALTER TABLE clauses that are harmless to repeat: they set a state rather than add or remove something
_IDEMPOTENT_CLAUSE = re.compile(r"(MODIFY|ALTER|ALGORITHM|LOCK|ENGINE|COMMENT|DEFAULT|CHARACTER|CONVERT|"
                                r"AUTO_INCREMENT|FORCE|ROW_FORMAT|ORDER)\b")
_GUARDABLE_CLAUSE = re.compile(r"(?P<verb>ADD|DROP)\b(?P<rest>.*)", re.S)


def _normalized(statement: str) -> str:
    text = _QUOTED.sub("''", _COMMENTS.sub(" ", statement))
    return re.sub(r"\s+", " ", text).strip().upper()


def _split_clauses(clauses: str) -> list[str]:
    parts, depth, current = [], 0, []
    for char in clauses:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _alter_hazard(clauses: str, mariadb: bool) -> ResumeHazard | None:
    for clause in _split_clauses(clauses):
        if _IDEMPOTENT_CLAUSE.match(clause):
            continue
        guarded = _GUARDABLE_CLAUSE.match(clause)
        if guarded:
            needed = "IF NOT EXISTS" if guarded["verb"] == "ADD" else "IF EXISTS"
            if needed in guarded["rest"] or (guarded["verb"] == "ADD" and "PARTITION" in guarded["rest"][:12]):
                continue
            if mariadb:
                return ResumeHazard(f"`ALTER TABLE … {guarded['verb']} …` without {needed}",
                                    f"write `{guarded['verb']} … {needed} …` in the ALTER TABLE")
            return ResumeHazard(f"`ALTER TABLE … {guarded['verb']} …` (MySQL has no {needed} for it)", None)
        if clause.startswith(("RENAME", "CHANGE")):
            if mariadb and "IF EXISTS" in clause:
                continue
            return ResumeHazard(f"`ALTER TABLE … {clause.split()[0]} …` renames, and a rename cannot be repeated",
                                "write `CHANGE COLUMN IF EXISTS …` / `RENAME COLUMN IF EXISTS …`" if mariadb else None)
    return None


def resume_hazard(statement: str, mariadb: bool) -> ResumeHazard | None:
    """None when ``statement`` can run again after a crash with the same result; else why not, and the fix."""
    text = _normalized(statement)
    if not text or text.startswith(_DATA):
        return None
    created = _CREATE.match(text)
    if created:
        if created["replace"] or created["guard"]:
            return None
        what = created["what"]
        if what in ("INDEX",) and not mariadb:
            return ResumeHazard("`CREATE INDEX` (MySQL has no IF NOT EXISTS for it)",
                                None)
        return ResumeHazard(f"`CREATE {what}` without IF NOT EXISTS", f"write `CREATE {what} IF NOT EXISTS …`")
    dropped = _DROP.match(text)
    if dropped:
        if dropped["guard"]:
            return None
        if dropped["what"] == "INDEX" and not mariadb:
            return ResumeHazard("`DROP INDEX` (MySQL has no IF EXISTS for it)", None)
        what = dropped["what"]
        return ResumeHazard(f"`DROP {what}` without IF EXISTS", f"write `DROP {what} IF EXISTS …`")
    renamed = _RENAME_TABLE.match(text)
    if renamed:
        if renamed["guard"]:
            return None
        return ResumeHazard("`RENAME TABLE` cannot be repeated",
                            "write `RENAME TABLE IF EXISTS …`" if mariadb else None)
    altered = _ALTER.match(text)
    if altered:
        return _alter_hazard(altered["clauses"], mariadb)
    return None
