"""YAML → Plan, reporting every problem with file:line:col.

YAML is parsed with PyYAML's *safe* composer into a node tree: no tags beyond the core schema, no
Python objects, no environment expansion. The text is parsed once, with libyaml's C parser where PyYAML
has it (``yaml.CSafeLoader``, about 10x faster than the pure-Python one; it keeps the same node positions),
and the plain data handed to pydantic is built from that node tree in the same pass that checks it. Node
positions are kept so pydantic's error locations (``steps.1.down``) can be mapped back to the line a user
has to edit; they are looked up in the node tree only when there is an error to place.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.constructor import SafeConstructor

from airflow_migrate_provider.errors import PlanError, PlanProblem
from airflow_migrate_provider.plan import guard
from airflow_migrate_provider.plan.graph_check import graph_problems
from airflow_migrate_provider.plan.model import DUPLICATE_STEP_ID, STEP_KINDS, Plan, duplicate_step_ids

Loc = tuple[str | int, ...]
Position = tuple[int, int]
SELF_DESCRIBING_ERRORS = frozenset(
    {"sql_list", "missing_down", "irreversible_with_down", "step_id", "plan_id", "conn_id", DUPLICATE_STEP_ID}
)
_TAG = "tag:yaml.org,2002:"
STR_TAG, NULL_TAG, MAP_TAG, SEQ_TAG = _TAG + "str", _TAG + "null", _TAG + "map", _TAG + "seq"
CORE_TAGS = frozenset(_TAG + name for name in ("str", "int", "float", "bool", "null", "map", "seq", "timestamp"))
_VALIDATED_KEEP = 16  # plans kept by validated_plan: one per DAG of a parsing process is plenty
_validated: dict[int, tuple[dict[str, Any], Plan]] = {}
# the C loader when PyYAML was built with libyaml; errors are re-parsed with the pure-Python one (see _compose)
FAST_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
REPARSE_CHARS = 1024 * 1024  # malformed YAML larger than this keeps libyaml's message (the Python parser is slow)
MESSAGE_CHARS = 600  # a problem's message shows at most this much (a value quoted in it is cut in the middle)


def _mark(node: yaml.Node) -> Position:
    return node.start_mark.line + 1, node.start_mark.column + 1


def _node_kind(tag: str) -> type[yaml.Node]:
    return {MAP_TAG: yaml.MappingNode, SEQ_TAG: yaml.SequenceNode}.get(tag, yaml.ScalarNode)


def _find(root: yaml.Node, loc: Loc) -> Position:
    """Where ``loc`` (keys and list indexes) was written: its key in a mapping, its item in a list, or the
    nearest ancestor that exists in the file. A repeated key resolves to its last occurrence."""
    node, at = root, _mark(root)
    for part in loc:
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.value == part:
                    child, at_key = value_node, _mark(key_node)
            if child is not None:
                at = at_key
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            child = node.value[part]
            at = _mark(child)
        if child is None:
            break
        node = child
    return at


class _Builder:
    """One pass over the node tree: the plain data pydantic validates, and what yaml.safe_load would accept
    silently (duplicate keys, non-core tags) or fail on without a position (values that cannot be
    constructed, non-scalar keys), each with the position it was written at.

    A node met again through an alias is not walked again (walking it again is exponential: an alias bomb);
    it stands for the same object, as in yaml.safe_load.
    """

    def __init__(self) -> None:
        self.problems: list[tuple[Position, str]] = []
        self._built: dict[int, Any] = {}
        self._constructor = SafeConstructor()

    def build(self, node: yaml.Node) -> Any:
        known = self._built.get(id(node), self)
        if known is not self:
            return known
        tag = node.tag
        if tag == STR_TAG and type(node) is yaml.ScalarNode:  # by far the most common: no constructor needed
            self._built[id(node)] = node.value
            return node.value
        if tag not in CORE_TAGS:
            return self._reject(node, f"YAML tag '{tag}' is not allowed in a plan; write a plain value")
        if not isinstance(node, _node_kind(tag)):
            return self._reject(node, f"YAML tag '{tag}' does not fit this value; write a plain value")
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node)
        if isinstance(node, yaml.SequenceNode):
            items: list[Any] = []
            self._built[id(node)] = items  # before the items: a recursive alias finds it
            items.extend(self.build(item) for item in node.value)
            return items
        value = None
        if tag != NULL_TAG:
            try:
                value = self._constructor.construct_object(node)
            except Exception as exc:  # ValueError, KeyError, ... from PyYAML's constructors
                kind = tag.rsplit(":", 1)[-1]
                self._reject(node, f"'{node.value}' is not a valid YAML {kind} ({exc}); quote it to make it text")
        self._built[id(node)] = value
        return value

    def _mapping(self, node: yaml.MappingNode) -> dict[Any, Any]:
        mapping: dict[Any, Any] = {}
        self._built[id(node)] = mapping
        seen: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.problems.append((_mark(key_node), "mapping keys must be plain text, not lists or mappings"))
                continue
            name = key_node.value
            if name == "<<":
                self.problems.append((_mark(key_node),
                                      "YAML merge keys (<<) are not allowed in a plan; write keys out"))
                continue
            if name in seen:
                self.problems.append((_mark(key_node), f"duplicate key '{name}'"))
            seen.add(name)
            key = self.build(key_node)  # a scalar of a core tag: hashable
            mapping[key] = self.build(value_node)
        return mapping

    def _reject(self, node: yaml.Node, message: str) -> None:
        self.problems.append((_mark(node), message))
        self._built[id(node)] = None
        return None


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


def _yaml_problem(path: str, exc: yaml.YAMLError, text: str) -> PlanProblem:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return PlanProblem(path, line, col, f"malformed YAML: {exc.problem or exc}")
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow, at its own position
        return PlanProblem(path, *guard.position(text, min(exc.position, len(text))), f"malformed YAML: {exc.reason}")
    return PlanProblem(path, 1, 1, f"malformed YAML: {exc}")


def _compose(text: str, path: str) -> yaml.Node:
    """The text's node tree (safe: core schema only), or PlanError for YAML that does not parse.

    Malformed YAML is parsed again by the pure-Python parser, whose messages and positions are the ones
    users (and the tests) know; libyaml words a few of them differently. libyaml's error stands where the
    pure-Python parser has none (e.g. nesting deeper than libyaml's limit of 1000 levels).
    """
    guard.check_text(text, path)
    guard.check_event_budget(text, path, FAST_LOADER)
    try:
        root = yaml.compose(text, Loader=FAST_LOADER)
    except yaml.YAMLError as fast_error:
        error = fast_error
        if FAST_LOADER is not yaml.SafeLoader and len(text) <= REPARSE_CHARS:
            try:
                yaml.compose(text, Loader=yaml.SafeLoader)
            except yaml.YAMLError as exc:
                error = exc
            except RecursionError:
                pass
        raise PlanError([_yaml_problem(path, error, text)]) from None
    if root is None:
        raise PlanError([PlanProblem(path, 1, 1, "the plan file is empty")])
    guard.check_node_budget(root, path)
    return root


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic garbage collection while a plan is parsed.

    Parsing allocates a node per scalar and builds containers that all stay alive until the end, so every
    collection the allocations trigger finds nothing to free, and the older generations are scanned again
    and again as they grow: a 10 MB plan took 3x longer with the collector on. Nothing made here forms a
    cycle that needs the collector (a recursive YAML alias is freed at the next collection after this).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def parse_plan(text: str, path: str = "<plan>") -> Plan:
    """Parse and validate plan YAML text; raise PlanError listing every problem found."""
    with _gc_paused():
        try:
            return _parse(text, path)
        except RecursionError:  # deeper than Python's recursion limit, in our checks or in pydantic's
            raise PlanError([PlanProblem(path, 1, 1, "the YAML is nested too deeply for a plan")]) from None


def _parse(text: str, path: str) -> Plan:
    root = _compose(text, path)
    builder = _Builder()
    data = builder.build(root)
    if builder.problems:
        raise PlanError([PlanProblem(path, *at, _short(msg)) for at, msg in builder.problems])
    if not isinstance(data, dict):
        raise PlanError([PlanProblem(path, *_mark(root), "a plan must be a mapping of keys (id, steps, ...)")])

    found: list[tuple[Loc, str]] = [
        (("steps", index, "id"), f"duplicate step id '{step_id}' (first used at steps[{first}])")
        for index, step_id, first in duplicate_step_ids(data.get("steps"))
    ]
    try:
        plan = Plan.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            if error["type"] != DUPLICATE_STEP_ID:
                error["loc"] = _user_loc(tuple(error["loc"]))
                found.append((error["loc"], _describe(error)))
        plan = None
    if plan is not None and not found:
        found = graph_problems(plan)  # what the DAG build would reject
    if found or plan is None:
        problems = [PlanProblem(path, *_find(root, loc), _short(msg)) for loc, msg in found]
        problems.sort(key=lambda p: (p.line, p.column))
        raise PlanError(problems)
    return plan


def _short(message: str) -> str:
    """A message fit for one terminal line: a huge value quoted in it keeps its start and end (where the advice
    is), and control characters from the plan (a newline, an escape sequence, a bidi override) are shown escaped."""
    if len(message) > MESSAGE_CHARS:
        keep = MESSAGE_CHARS // 2
        message = f"{message[:keep]} [... {len(message) - 2 * keep:,} characters ...] {message[-keep:]}"
    if message.isprintable():
        return message
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in message)


def locate(path: str | Path, loc: tuple[str | int, ...]) -> tuple[int, int]:
    """(line, column) of a field of a valid plan file (``("steps", 2, "up")``), for problems found after loading."""
    return _find(_compose(read_plan_text(path), str(path)), loc)


def read_plan_text(path: str | Path) -> str:
    """A plan file's text; PlanError (never a bare traceback) when it cannot be read: not a regular file,
    larger than ``guard.MAX_PLAN_BYTES`` (no more than that is read), or not UTF-8 (located)."""
    return guard.decode_plan(guard.read_plan_bytes(path), str(path))


def load_plan(path: str | Path) -> Plan:
    """Read and validate a plan file; raise PlanError (never a bare traceback) on any problem."""
    path = Path(path)
    return parse_plan(read_plan_text(path), str(path))


def validated_plan(data: dict[str, Any]) -> Plan:
    """``Plan.model_validate(data)``, validated once per dict object.

    For the operators' ``plan``: every operator of a DAG holds the same plan dict (``build_dag`` dumps the
    plan once), and ``plan`` is read many times per task, and once per task by ``airflow-migrate render``.
    Keyed by the dict's identity; the entry keeps the dict alive, so the id cannot be reused by another
    one. A copied operator (Airflow deep-copies tasks) holds a copy of the dict and gets its own entry.
    Plan dicts are never changed in place (a task's dict comes from the DAG file, parsed again per run).
    """
    entry = _validated.get(id(data))
    if entry is not None and entry[0] is data:
        return entry[1]
    plan = Plan.model_validate(data)
    if len(_validated) >= _VALIDATED_KEEP:
        _validated.pop(next(iter(_validated), None), None)  # the oldest (pop: another thread may be at it too)
    _validated[id(data)] = (data, plan)
    return plan
