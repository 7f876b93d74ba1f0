"""The shape of the house, checked: no import cycles (imports inside functions included), and the layers'
directions (the engine imports no adapter; the application layer imports no web framework or Streamlit).

An import inside a function hides a cycle from Python but not from a reader: the two modules still need
each other. So every ``import`` statement anywhere in a module counts.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from services.platform.config import REPO_ROOT

PACKAGES = ("engine", "services", "pages")
TOP_SCRIPTS = ("app.py", "ui_app.py")


def project_modules() -> dict[str, Path]:
    """Every module of the product, by dotted name (pages by their script path's name)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    for script in TOP_SCRIPTS:
        found[Path(script).stem] = REPO_ROOT / script
    return found


def imported_names(path: Path, name: str, is_package: bool) -> set[str]:
    """Every dotted name a module imports, anywhere in it (``from a import b`` gives ``a`` and ``a.b``)."""
    names = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (a name resolves to the longest module it names)."""
    modules = project_modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in imported_names(path, name, path.name == "__init__.py"):
            while imported and imported not in modules:
                imported = imported.rpartition(".")[0]
            if imported and imported != name and not name.startswith(f"{imported}."):
                targets.add(imported)  # a module importing its own package's __init__ is not a cycle
        graph[name] = targets
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walk_sees_imports_inside_functions():
    graph = import_graph()
    # services/ui/live.py imports the rules at module level; services/web/http.py imports users inside authenticate()
    assert "services.app.rules" in graph["services.ui.live"]
    assert "services.app.users" in graph["services.web.http"]


def test_no_import_cycles():
    found = cycles(import_graph())
    assert found == [], "import cycles (each a group of modules that import one another): " + "; ".join(
        " <-> ".join(group) for group in found)


def test_a_cycle_is_found_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(("layer", "forbidden"), [
    ("engine", ("services", "pages", "flask", "flask_socketio", "streamlit", "rq", "redis")),
    ("services.app", ("flask", "flask_socketio", "flask_jwt_extended", "streamlit", "werkzeug", "services.web",
                      "services.ui", "services.api", "pages")),
    ("services.storage", ("flask", "streamlit", "services.app", "services.web", "services.ui", "services.jobs")),
])
def test_each_layer_imports_only_what_is_below_it(layer, forbidden):
    modules = project_modules()
    wrong = sorted(
        f"{name} imports {imported}"
        for name, path in modules.items() if name == layer or name.startswith(f"{layer}.")
        for imported in imported_names(path, name, path.name == "__init__.py")
        if any(imported == f or imported.startswith(f"{f}.") for f in forbidden))
    assert wrong == []
