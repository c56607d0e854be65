"""YAML → Plan, reporting every problem with file:line:col.

YAML is parsed with PyYAML's *safe* composer into a node tree: no tags beyond the core schema, no
Python objects, no environment expansion. We keep each node's position so pydantic's error locations
(``steps.1.down``) can be mapped back to the line a user has to edit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.constructor import SafeConstructor

from airflow_migrate_provider.errors import PlanError, PlanProblem
from airflow_migrate_provider.plan.model import DUPLICATE_STEP_ID, STEP_KINDS, Plan, duplicate_step_ids

Loc = tuple[str | int, ...]
SELF_DESCRIBING_ERRORS = frozenset(
    {"sql_list", "missing_down", "irreversible_with_down", "step_id", "plan_id", "conn_id", DUPLICATE_STEP_ID}
)
CORE_TAGS = {
    "tag:yaml.org,2002:" + name
    for name in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp")
}


class _Positions:
    """Maps a location path (keys and list indexes) to the (line, column) it was written at."""

    def __init__(self) -> None:
        self.key_at: dict[Loc, tuple[int, int]] = {}
        self.value_at: dict[Loc, tuple[int, int]] = {}

    def find(self, loc: Loc) -> tuple[int, int]:
        """Position of ``loc``, or of its nearest ancestor that exists in the file."""
        for end in range(len(loc), -1, -1):
            prefix = loc[:end]
            if prefix in self.key_at:
                return self.key_at[prefix]
            if prefix in self.value_at:
                return self.value_at[prefix]
        return (1, 1)


def _mark(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _node_kind(tag: str) -> type[yaml.Node]:
    return {"tag:yaml.org,2002:map": yaml.MappingNode, "tag:yaml.org,2002:seq": yaml.SequenceNode}.get(
        tag, yaml.ScalarNode)


def _walk(node: yaml.Node, loc: Loc, pos: _Positions, problems: list[tuple[Loc, str]],
          walked: set[int] | None = None) -> None:
    """Record positions, and reject what yaml.safe_load accepts silently (duplicate keys, non-core tags)
    or fails on without a position (values that cannot be constructed, non-scalar keys)."""
    walked = set() if walked is None else walked
    pos.value_at[loc] = _mark(node)
    if id(node) in walked:
        return  # an alias of a node checked where it was anchored; walking it again is exponential
    walked.add(id(node))
    if node.tag not in CORE_TAGS:
        problems.append((loc, f"YAML tag '{node.tag}' is not allowed in a plan; write a plain value"))
        return
    if not isinstance(node, _node_kind(node.tag)):
        problems.append((loc, f"YAML tag '{node.tag}' does not fit this value; write a plain value"))
        return
    if isinstance(node, yaml.ScalarNode):
        try:
            SafeConstructor().construct_object(node)
        except Exception as exc:  # ValueError, KeyError, ... from PyYAML's constructors
            kind = node.tag.rsplit(":", 1)[-1]
            problems.append((loc, f"'{node.value}' is not a valid YAML {kind} ({exc}); quote it to make it text"))
    elif isinstance(node, yaml.MappingNode):
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                pos.value_at[(*loc, "?")] = _mark(key_node)
                problems.append(((*loc, "?"), "mapping keys must be plain text, not lists or mappings"))
                continue
            key = key_node.value
            child = (*loc, key)
            pos.key_at[child] = _mark(key_node)
            if key == "<<":
                problems.append((child, "YAML merge keys (<<) are not allowed in a plan; write keys out"))
                continue
            if key in seen:
                problems.append((child, f"duplicate key '{key}'"))
            seen.add(key)
            _walk(value_node, child, pos, problems, walked)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _walk(item, (*loc, index), pos, problems, walked)


def _user_loc(loc: Loc) -> Loc:
    """Drop the discriminator tag pydantic inserts after a step index (steps.1.schema.up → steps.1.up)."""
    if len(loc) > 2 and loc[0] == "steps" and isinstance(loc[1], int) and loc[2] in STEP_KINDS:
        return (*loc[:2], *loc[3:])
    return loc


def _describe(error: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{error['loc'][-1]}'" + (f" in {'.'.join(map(str, error['loc'][:-1]))}"
                                                      if len(error["loc"]) > 1 else "")
    if kind == "missing":
        return f"missing required key '{loc}'"
    if kind == "union_tag_not_found":
        if isinstance(error.get("input"), dict):
            return f"{loc}: `kind` must be text (known kinds: {', '.join(sorted(STEP_KINDS))})"
        return f"{loc}: a step must be a mapping with id, up, down and verify (got {error.get('input')!r})"
    if kind == "union_tag_invalid":
        return f"{loc}: unknown step kind '{error['ctx']['tag']}' (known kinds: {error['ctx']['expected_tags']})"
    message = error["msg"]
    # custom errors already name their subject; built-in ones need the field and what was given
    if kind in SELF_DESCRIBING_ERRORS:
        return f"{loc}: {message}" if loc else message
    given = error.get("input")
    shown = repr(given) if not isinstance(given, (dict, list)) else type(given).__name__
    return f"{loc}: {message} (got {shown})"


def parse_plan(text: str, path: str = "<plan>") -> Plan:
    """Parse and validate plan YAML text; raise PlanError listing every problem found."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise PlanError([PlanProblem(path, line, col, f"malformed YAML: {exc.problem or exc}")]) from None
    except yaml.YAMLError as exc:
        raise PlanError([PlanProblem(path, 1, 1, f"malformed YAML: {exc}")]) from None
    if root is None:
        raise PlanError([PlanProblem(path, 1, 1, "the plan file is empty")])

    pos = _Positions()
    found: list[tuple[Loc, str]] = []
    _walk(root, (), pos, found)
    if found:
        raise PlanError([PlanProblem(path, *pos.find(loc), msg) for loc, msg in found])

    data = yaml.SafeLoader(text).get_single_data()
    if not isinstance(data, dict):
        raise PlanError([PlanProblem(path, *pos.find(()), "a plan must be a mapping of keys (id, steps, ...)")])

    for index, step_id, first in duplicate_step_ids(data.get("steps")):
        found.append((("steps", index, "id"), f"duplicate step id '{step_id}' (first used at steps[{first}])"))
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            if error["type"] != DUPLICATE_STEP_ID:
                error["loc"] = _user_loc(tuple(error["loc"]))
                found.append((error["loc"], _describe(error)))
        plan = None
    if found or plan is None:
        problems = [PlanProblem(path, *pos.find(loc), msg) for loc, msg in found]
        problems.sort(key=lambda p: (p.line, p.column))
        raise PlanError(problems)
    return plan


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file; raise PlanError (never a bare traceback) on any problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanError([PlanProblem(str(path), 1, 1, f"cannot read plan file: {exc}")]) from None
    return parse_plan(text, str(path))
