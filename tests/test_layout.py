"""The code's shape keeps its promises: imports flow one way (no cycle between modules, nor
between the package's folders), every module says what it owns in its first line, and no
public name is hidden by a submodule of the same name."""

import ast
import importlib
import pkgutil
from pathlib import Path

import grimp
import pytest

import transferlab

PACKAGE = Path(transferlab.__file__).parent


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def imports() -> dict[str, set[str]]:
    """Who imports whom inside transferlab, function-level imports included (they are imports
    all the same), imports only for type checking left out."""
    graph = grimp.build_graph("transferlab", include_external_packages=False, exclude_type_checking_imports=True)
    return {m: set(graph.find_modules_directly_imported_by(m)) for m in graph.modules}


def test_no_module_imports_itself_through_others(imports):
    assert _cycles(imports) == []


def test_the_folders_import_each_other_one_way(imports):
    def unit(module: str) -> str:  # transferlab.training.engine -> transferlab.training
        return ".".join(module.split(".")[:2])

    units: dict[str, set[str]] = {}
    for module, targets in imports.items():
        units.setdefault(unit(module), set()).update(unit(t) for t in targets if unit(t) != unit(module))
    assert _cycles(units) == []


def test_every_module_says_what_it_owns():
    for path in sorted(PACKAGE.rglob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc.splitlines()[0]) > 10, f"{path.relative_to(PACKAGE)} has no docstring"


def test_no_exported_name_is_also_a_submodule():
    submodules = {m.name for m in pkgutil.iter_modules(transferlab.__path__)}
    assert not set(transferlab.__all__) & submodules
    for name in transferlab.__all__:
        assert getattr(transferlab, name) is not None
    importlib.import_module("transferlab.inference.metrics")
    assert callable(transferlab.evaluate) and callable(transferlab.predict) and callable(transferlab.export)
