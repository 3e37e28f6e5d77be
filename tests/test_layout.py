"""The tree's shape: machine -> photos -> model -> store -> search/explore/labels/indexer -> app
-> tools -> cli/ui.

Read from the source (no imports run): every import of a vitsearch module points down the
layers or sideways, the UI sees nothing below the app, SQL stays in the store, and the
module-level imports form no cycle.
"""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vitsearch"
LAYERS = {
    "machine": 0,
    "photos": 1,
    "model": 2,
    "store": 3,
    "indexer": 4,
    "search": 4,
    "labels": 4,
    "explore": 4,
    "app": 5,
    "launch": 5,
    "tools": 6,
    "cli": 7,
    "ui": 7,
    "__main__": 8,
}
SHARED = {"errors", "records", "config", "__init__"}  # leaves every layer may use
UI_MAY_IMPORT = {"vitsearch.app", "vitsearch.records", "vitsearch.errors", "vitsearch.config"}


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = ast.parse(path.read_text(encoding="utf-8"))
    return found


def imported(tree: ast.Module, module_level: bool = False) -> set[str]:
    """Every absolute import (``a.b`` and, for ``from a.b import c``, ``a.b.c`` too), at
    module level or anywhere, leaving out ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()
    nodes = tree.body if module_level else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def imports(tree: ast.Module, module_level: bool = False) -> set[str]:
    """vitsearch modules imported, leaving out ``if TYPE_CHECKING:`` blocks."""
    return {name for name in imported(tree, module_level) if name.startswith("vitsearch")}


def known(name: str, names: set[str]) -> str | None:
    """The module a dotted import name refers to (``vitsearch.store.Library`` -> store)."""
    while name and name not in names:
        name = name.rpartition(".")[0]
    return name or None


def layer(module: str) -> int | None:
    top = module.split(".")[1] if "." in module else "__init__"
    return None if top in SHARED else LAYERS[top]


def test_imports_point_down_the_layers() -> None:
    tree = modules()
    wrong = []
    for name, source in tree.items():
        for target in {known(i, set(tree)) for i in imports(source)} - {None, name}:
            below, above = layer(name), layer(target)
            if below is not None and above is not None and above > below:
                wrong.append(f"{name} imports {target}")
    assert not wrong, wrong


def test_the_ui_sees_only_the_app_and_its_records() -> None:
    tree = modules()
    seen = {
        (name, target)
        for name, source in tree.items()
        if name.startswith("vitsearch.ui")
        for target in {known(i, set(tree)) for i in imports(source)}
        if target and not target.startswith("vitsearch.ui") and target not in UI_MAY_IMPORT
    }
    assert not seen, seen


def test_only_the_store_speaks_sql_or_touches_its_database() -> None:
    for path in PACKAGE.rglob("*.py"):
        if "store" in path.relative_to(PACKAGE).parts:
            continue
        text = path.read_text(encoding="utf-8")
        assert "sqlalchemy" not in text and "import sqlite3" not in text, path
        assert "._sql" not in text and ".db." not in text, path


def test_no_import_cycle() -> None:
    tree = modules()
    graph = {
        name: {known(i, set(tree)) for i in imports(source, module_level=True)} - {None, name}
        for name, source in tree.items()
    }
    # A package's __init__ importing its own modules is how packages re-export: not a cycle.
    for name in graph:
        graph[name] = {t for t in graph[name] if not (name.startswith(t + ".") and t in tree)}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as cycle:
        pytest.fail(f"import cycle: {' -> '.join(cycle.args[1])}")


def heavy_imports(tree: ast.Module, module_level: bool) -> set[str]:
    """torch and transformers, imported at module level or anywhere, leaving out
    ``if TYPE_CHECKING:`` blocks."""
    tops = {name.split(".")[0] for name in imported(tree, module_level)}
    return tops & {"torch", "transformers"}


def test_torch_is_the_model_packages_and_imported_on_load_only_by_pytorch() -> None:
    """Only model/ imports torch or transformers, and only model/pytorch/ at module level:
    importing ``vitsearch.model``, its top-level modules, ``exported/`` or ``choice/`` costs
    neither (a query on an export starts without them)."""
    outside, eager = [], []
    for name, source in modules().items():
        if not name.startswith("vitsearch.model") and heavy_imports(source, module_level=False):
            outside.append(name)
        if not name.startswith("vitsearch.model.pytorch.") and heavy_imports(source, True):
            eager.append(name)
    assert not outside and not eager, (outside, eager)
