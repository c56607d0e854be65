"""Limits that keep a hostile or careless plan file from costing more than a plan may cost.

Every check here runs before (or instead of) the work it protects, and reports a :class:`PlanProblem` at the
line and column the user has to edit:

- **size**: a plan file holds at most :data:`MAX_PLAN_BYTES`; no more than that (+1 byte) is ever read, and
  only regular files are read (a device such as ``/dev/zero``, a FIFO or a socket is refused without waiting);
- **text**: UTF-8 only, and only the characters YAML allows (a NUL byte, a bad UTF-8 byte: their own position);
- **values**: at most :data:`MAX_PLAN_VALUES` values and :data:`MAX_PLAN_TEXT` characters of text *after
  aliases are resolved* (a YAML alias bomb: a few hundred bytes that expand to billions of values), nested at
  most :data:`MAX_NESTING` levels deep, no alias inside the value it names, no NUL or lone surrogate in text.

The value budget is checked twice: on the event stream while libyaml reads a large file (so composing the node
tree is bounded too), and on the composed node tree, where each node is counted once and multiplied by the
number of times aliases use it.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import yaml

from airflow_migrate_provider.errors import PlanError, PlanProblem

MAX_PLAN_BYTES = 10 * 1024 * 1024  # 10 MiB: documented in docs/plan-reference.md
MAX_PLAN_VALUES = 300_000  # keys, values and list items, counted after aliases are resolved
MAX_PLAN_TEXT = 2 * MAX_PLAN_BYTES  # characters of text (keys and values) after aliases are resolved
MAX_NESTING = 64  # lists/mappings inside one another
EVENT_CHECK_CHARS = 256 * 1024  # smaller texts cannot compose into a node tree worth bounding first
# what YAML 1.1 allows in a stream (PyYAML's Reader.NON_PRINTABLE, complemented)
_NON_PRINTABLE = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_BAD_TEXT = re.compile("[\x00\ud800-\udfff]")
_CANNOT_READ = "cannot read plan file"


def position(text: str, index: int) -> tuple[int, int]:
    """(line, column), both from 1, of character ``index`` of ``text``."""
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def read_plan_bytes(path: str | Path) -> bytes:
    """At most ``MAX_PLAN_BYTES`` of a regular file; PlanError for anything else (never blocks on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise _unreadable(path, str(exc)) from None
    try:
        _refuse_unless_regular(path, os.fstat(fd).st_mode)
        data = _read_at_most(fd, MAX_PLAN_BYTES + 1)
    except OSError as exc:
        raise _unreadable(path, str(exc)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_PLAN_BYTES:
        raise _too_big(str(path))
    return data


def _refuse_unless_regular(path: str | Path, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise _unreadable(path, "it is a folder; give a plan file (.yaml)")
    if not stat.S_ISREG(mode):
        raise _unreadable(path, "it is not a regular file (a device, FIFO or socket); give a plan file (.yaml)")


def _read_at_most(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.read(fd, min(size, 1024 * 1024))
        if not chunk:
            break
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _unreadable(path: str | Path, why: str) -> PlanError:
    return PlanError([PlanProblem(str(path), 1, 1, f"{_CANNOT_READ}: {why}")])


def _too_big(path: str) -> PlanError:
    return PlanError([PlanProblem(path, 1, 1, f"the plan is larger than {MAX_PLAN_BYTES // (1024 * 1024)} MiB "
                                  f"({MAX_PLAN_BYTES:,} bytes), the most a plan may be; split the migration into "
                                  "several plans")])


def decode_plan(data: bytes, path: str) -> str:
    """The UTF-8 text of a plan file; PlanError at the line and column of the first byte that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.start
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise PlanError([PlanProblem(path, 1, 1, f"{_CANNOT_READ}: it is UTF-16 text; save the plan as UTF-8")])
    line_start = data.rfind(b"\n", 0, bad) + 1
    line = data.count(b"\n", 0, bad) + 1
    column = len(data[line_start:bad].decode("utf-8", errors="replace")) + 1
    raise PlanError([PlanProblem(path, line, column, f"{_CANNOT_READ}: byte 0x{data[bad]:02x} is not UTF-8 "
                                 "text; save the plan as UTF-8")])


def check_text(text: str, path: str) -> None:
    """A plan's text: within the size limit, only characters YAML allows (the first other one, located)."""
    if len(text) > MAX_PLAN_BYTES or (len(text) * 4 > MAX_PLAN_BYTES and len(text.encode("utf-8", "surrogatepass"))
                                      > MAX_PLAN_BYTES):
        raise _too_big(path)
    found = _NON_PRINTABLE.search(text)
    if found is not None:
        char = found.group()
        what = "a NUL byte" if char == "\x00" else f"the control character U+{ord(char):04X}"
        raise PlanError([PlanProblem(path, *position(text, found.start()),
                                     f"{what} is not allowed in a plan (YAML allows only printable text, tabs and "
                                     "line breaks); remove it")])


def check_event_budget(text: str, path: str, loader: type) -> None:
    """Count the values of a large text on libyaml's event stream, before a node tree is built: more than a plan
    may hold is refused at the value that goes over (an error in the YAML itself is left to the composer, which
    locates it). Aliases count as one value here; what they expand to is counted on the node tree."""
    if len(text) <= EVENT_CHECK_CHARS:
        return
    values = 0
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.NodeEvent):  # a scalar, an alias, or the start of a list or mapping
                values += 1
                if values > MAX_PLAN_VALUES:
                    mark = event.start_mark
                    raise PlanError([PlanProblem(path, mark.line + 1, mark.column + 1, _values_message())])
    except yaml.YAMLError:
        return


def _values_message(count: int | None = None) -> str:
    what = (f"aliases expand this value to {count:,} values," if count is not None else "the plan holds")
    return (f"{what} more than the {MAX_PLAN_VALUES:,} values a whole plan may hold (keys, values and list items, "
            "each use of a YAML alias counted in full); write the values out once, or split the plan")


class _Budget:
    """Sizes of the node tree after aliases are resolved: each node is sized once, and a node used through
    aliases counts once per use. Iterative, so nesting costs no Python recursion."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sizes: dict[int, tuple[int, int]] = {}  # node id -> (values, characters) when resolved
        self.problems: list[PlanProblem] = []
        self.over = False  # a limit is exceeded: the walk stops there

    def problem(self, node: yaml.Node, message: str, *, over: bool = True) -> None:
        self.problems.append(PlanProblem(self.path, node.start_mark.line + 1, node.start_mark.column + 1, message))
        self.over = self.over or over

    def check(self, root: yaml.Node) -> None:
        open_nodes: set[int] = set()
        stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
        while stack and not self.over:
            node, depth, children_done = stack.pop()
            if children_done:
                open_nodes.discard(id(node))
                self._close(node)
            elif id(node) in open_nodes:
                self.problem(node, "a YAML alias refers to a list or mapping it is part of (a recursive value); "
                             "a plan cannot hold one: write the value out")
            elif id(node) not in self.sizes:
                self._open(node, depth, stack, open_nodes)

    def _open(self, node: yaml.Node, depth: int, stack: list[tuple[yaml.Node, int, bool]],
              open_nodes: set[int]) -> None:
        if isinstance(node, yaml.ScalarNode):
            self._scalar(node)
            return
        if depth > MAX_NESTING:
            self.problem(node, f"lists and mappings are nested too deeply here (more than {MAX_NESTING} levels); "
                         "a plan needs far fewer: flatten the value")
            return
        open_nodes.add(id(node))
        stack.append((node, depth, True))
        for child in reversed(_children(node)):
            stack.append((child, depth + 1, False))

    def _scalar(self, node: yaml.ScalarNode) -> None:
        bad = _BAD_TEXT.search(node.value)
        if bad is not None:
            what = "a NUL character (\\0)" if bad.group() == "\x00" else "a lone UTF-16 surrogate (\\uD800-\\uDFFF)"
            self.problem(node, f"this text holds {what}, which no database or log can store; remove it",
                         over=False)
        self.sizes[id(node)] = (1, len(node.value))

    def _close(self, node: yaml.Node) -> None:
        values, chars = 1, 0
        for child in _children(node):
            child_values, child_chars = self.sizes.get(id(child), (1, 0))
            values, chars = values + child_values, chars + child_chars
        self.sizes[id(node)] = (values, chars)
        if values > MAX_PLAN_VALUES:
            self.problem(node, _values_message(values))
        elif chars > MAX_PLAN_TEXT:
            self.problem(node, f"this value holds {chars:,} characters of text once its YAML aliases are resolved, "
                         f"more than the {MAX_PLAN_TEXT:,} a whole plan may hold; write the text out once")


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return list(node.value)


def check_node_budget(root: yaml.Node, path: str) -> None:
    """PlanError when the node tree, aliases resolved, is larger or deeper than a plan may be (or recursive)."""
    budget = _Budget(path)
    budget.check(root)
    if budget.problems:
        raise PlanError(budget.problems)
