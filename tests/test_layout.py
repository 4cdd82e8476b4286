"""The layout the README describes, read from the code's own imports (parsed, never executed): the modules
of `trainers/` and `sweep/` import each other without a circle, and `trainers/` never imports `sweep/`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("trainers", "sweep")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}
FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def import_statements(node: ast.AST, *, at_import: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements under `node`; `at_import`: only those that run when the module is imported
    (not inside a function body, where a deferred import runs when the function is called)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child
        elif not (at_import and isinstance(child, FUNCTIONS)):
            yield from import_statements(child, at_import=at_import)


def imported_modules(name: str, *, at_import: bool) -> set[str]:
    """The project modules that module `name` imports. `from a.b import c` imports module `a.b.c` where that
    is a module, else `a.b`; relative imports are resolved against the module's package."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for statement in import_statements(ast.parse(path.read_text(), filename=str(path)), at_import=at_import):
        if isinstance(statement, ast.Import):
            found.update(alias.name for alias in statement.names)
            continue
        base = statement.module or ""
        if statement.level:
            anchor = package.split(".")[: len(package.split(".")) - statement.level + 1]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in statement.names:
            found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


def import_graph(*, at_import: bool) -> dict[str, set[str]]:
    """Each module of `trainers/` and `sweep/` -> the project modules it imports."""
    return {name: imported_modules(name, at_import=at_import) for name in MODULES}


def test_the_walk_sees_every_package_and_the_imports_of_each_form():
    graph = import_graph(at_import=True)
    assert {"trainers.train", "trainers.detector.verdict", "sweep.driver", "sweep.space"} <= set(graph)
    assert "sweep.space" in graph["sweep.run"]  # from sweep.space import load_space
    assert "sweep.progress" in graph["sweep.callbacks"]  # from sweep import progress
    assert "sweep.driver" not in graph["sweep.run"]  # imported inside main(): only when a sweep runs
    assert "sweep.driver" in import_graph(at_import=False)["sweep.run"]


@pytest.mark.parametrize("at_import", [True, False], ids=["at-import", "anywhere"])
def test_the_modules_import_each_other_without_a_circle(at_import):
    try:
        TopologicalSorter(import_graph(at_import=at_import)).prepare()
    except CycleError as circle:
        pytest.fail("import circle: " + " -> ".join(reversed(circle.args[1])))


def sweep_imports_of_trainers(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Each module of `trainers/` that imports from `sweep/` -> what it imports from there."""
    upward = {name: sorted(m for m in graph[name] if m.split(".")[0] == "sweep") for name in graph}
    return {name: found for name, found in upward.items() if name.split(".")[0] == "trainers" and found}


def test_trainers_never_import_sweep():
    assert sweep_imports_of_trainers(import_graph(at_import=False)) == {}


def test_a_planted_circle_and_upward_import_are_found(tmp_path, monkeypatch):
    """The checks above can fail: two planted modules that import each other, one of them deferred, and a
    trainers module that imports the driver."""
    a, b, upward = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "upward.py"
    a.write_text("from sweep import b\n")
    b.write_text("def later():\n    from . import a\n")
    upward.write_text("def run():\n    import sweep.driver\n")
    for name, path in (("sweep.a", a), ("sweep.b", b), ("trainers.upward", upward)):
        monkeypatch.setitem(MODULES, name, path)
    assert imported_modules("sweep.a", at_import=True) == {"sweep.b"}
    assert imported_modules("sweep.b", at_import=True) == set()
    assert imported_modules("sweep.b", at_import=False) == {"sweep.a"}
    with pytest.raises(CycleError):
        TopologicalSorter(import_graph(at_import=False)).prepare()
    TopologicalSorter(import_graph(at_import=True)).prepare()
    assert sweep_imports_of_trainers(import_graph(at_import=False)) == {"trainers.upward": ["sweep.driver"]}
