"""The plug-in boundaries hold: only a kind's own modules name it, and the package has no import cycle.

Rollback, preflight, status, backup, render, the DAG builder and the operators ask ``kind_of(step)``; a
``isinstance(step, BackfillStep)`` or ``step.kind == "verify"`` there would make a new kind silently take
someone else's path.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[3] / "airflow_migrate_provider"
# where a kind is defined: its behaviour, its engine, its plan model, and the ledger's format-1 reader
KIND_HOMES = ("core/kinds/", "core/backfill/", "core/verify/", "core/capture/", "plan/", "core/actions.py")
STEP_MODELS = {"SchemaStep", "BackfillStep", "VerifyStep", "HealthGateStep", "DualWriteStep", "CutoverStep",
               "READ_ONLY_KINDS", "STEP_KINDS"}
KIND_NAMES = {"schema", "backfill", "verify", "health_gate", "dual_write", "cutover"}


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if not str(p.relative_to(PACKAGE)).startswith(KIND_HOMES))


def _kind_references(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in STEP_MODELS:
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.alias) and node.name in STEP_MODELS:
            found.append((getattr(node, "lineno", 0), f"import {node.name}"))
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            names_kind = any(isinstance(s, ast.Attribute) and s.attr == "kind" for s in sides) or any(
                isinstance(s, ast.Call) and ast.unparse(s).endswith(("get('kind')", 'get("kind")')) for s in sides)
            literal = any(isinstance(s, ast.Constant) and s.value in KIND_NAMES for s in sides)
            if names_kind or literal:
                found.append((node.lineno, ast.unparse(node)))
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outside_a_kind_names_a_kind(path: Path) -> None:
    found = _kind_references(ast.parse(path.read_text(encoding="utf-8")))
    assert not found, f"{path.relative_to(PACKAGE)} names a step kind (ask kind_of(step) instead): {found}"


def test_the_boundary_check_catches_kind_branching() -> None:
    sample = "if isinstance(step, BackfillStep): pass\nif step.kind == 'verify': pass\nif x.get('kind') == y: pass"
    assert len(_kind_references(ast.parse(sample))) == 3


def _runtime_nodes(tree: ast.Module) -> list[ast.AST]:
    """Every node that can run: the whole module, function bodies included, minus ``if TYPE_CHECKING:``."""
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and ast.unparse(node.test) ==
               "TYPE_CHECKING" for body in node.body for n in ast.walk(body)}
    return [n for n in ast.walk(tree) if id(n) not in skipped]


def _imports(path: Path) -> set[str]:
    """Modules of the package a module imports when it runs (at import time or inside its functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("airflow_migrate_provider"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("airflow_migrate_provider"))
    return found


def test_no_import_cycle_in_the_package() -> None:
    modules = {".".join(("airflow_migrate_provider", *p.relative_to(PACKAGE).with_suffix("").parts))
               .removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")}
    graph = {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}
    # a package's __init__ that re-exports its own submodules is not a cycle through the submodules
    for name in graph:
        graph[name] = {m for m in graph[name] if not m.startswith(name + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt):], nxt]
                pytest.fail("import cycle: " + " → ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
