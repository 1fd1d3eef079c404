"""The package's shape: no two modules import each other (directly or round a longer circle), counting imports inside
functions too, and names imported through a package resolved to the module that defines them."""

from __future__ import annotations

import ast
from pathlib import Path

import edgeray

ROOT = Path(edgeray.__file__).parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = ("edgeray", *path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts).removesuffix(".__init__")] = path
    return modules


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """``(module, name)`` for every ``from edgeray... import name`` and ``(module, None)`` for ``import edgeray...``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edgeray"):
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.startswith("edgeray")]
    return found


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules it imports; a name taken from a package counts as the submodule the package got it from."""
    modules = _modules()
    packages = {name for name, path in modules.items() if path.name == "__init__.py"}
    # where each package's re-exported names come from
    origin = {
        (package, name): module
        for package in packages
        for module, name in _imports(modules[package])
        if name is not None and module in modules
    }

    def target(module: str, name: str | None) -> str | None:
        for _ in range(10):  # follow re-exports through nested packages
            if name is not None and f"{module}.{name}" in modules:
                return f"{module}.{name}"
            if module in packages and name is not None and (module, name) in origin:
                module = origin[(module, name)]
                continue
            return module if module in modules and module not in packages else None
        return None

    graph = {}
    for module, path in modules.items():
        if module in packages:
            continue
        deps = {target(m, n) for m, n in _imports(path)}
        graph[module] = {d for d in deps if d is not None and d != module}
    return graph


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_in_the_package():
    graph = import_graph()
    assert "edgeray.stream.tomo" in graph and "edgeray.tomo.streaming" in graph["edgeray.stream.tomo"]
    assert circles(graph) == []


def test_the_command_line_is_one_module_per_group():
    from edgeray.cli import GROUPS, build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # every group a module registered
    assert {"simulate", "info", "view", "ptycho", "nn", "tomo", "detector", "edge", "demo"} <= set(commands)
    for module in GROUPS:
        assert len(Path(module.__file__).read_text().splitlines()) < 500, module.__name__
