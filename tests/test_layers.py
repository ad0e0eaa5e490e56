"""No import circles in the metalearn package.

The import graph is read from the source (the AST of every module), not from a running process: every
`import metalearn.x`, `from metalearn.x import y`, `from metalearn import x` and relative import
counts, at module level or inside a function (a local import defers a dependency, it does not remove
it). A circle is a strongly connected component of more than one module, or a module importing
itself; the failure names each one, edge by edge, with file and line. When a new circle appears,
move the piece both sides need down a layer (as errors.py, stats.py and data/images.py were); a
local import or a re-export hides a circle without removing it.
"""
from __future__ import annotations

import ast
from pathlib import Path

import metalearn

Graph = dict[str, dict[str, tuple[Path, int]]]  # module -> {imported module: (file, line of the first import)}


def package_modules(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file under the package folder `root`."""
    modules = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join((package, *parts))] = path
    return modules


def _imported(node: ast.Import | ast.ImportFrom, name: str, is_package: bool) -> list[str]:
    """The dotted names an import statement in module `name` loads (those outside the package too)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:  # relative: from . import x, from ..y import z
        anchor = name if is_package else name.rpartition(".")[0]
        for _ in range(node.level - 1):
            anchor = anchor.rpartition(".")[0]
        base = f"{anchor}.{base}" if base else anchor
    # `from P import a` loads P, then P.a where that is a module; a package importing from itself
    # (`from . import a` in P/__init__.py) is already loading
    return ([] if base == name else [base]) + [f"{base}.{alias.name}" for alias in node.names]


def import_graph(root: Path, package: str) -> Graph:
    """Every module's imports of the package's modules (a name inside a module counts as the module)."""
    modules = package_modules(root, package)
    graph: Graph = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            for target in _imported(node, name, path.name == "__init__.py"):
                while target and target not in modules:  # metalearn.config.ConfigError -> metalearn.config
                    target = target.rpartition(".")[0]
                if target and (target not in edges or node.lineno < edges[target][1]):
                    edges[target] = (path, node.lineno)
    return graph


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in sorted(graph.get(node, {})):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while component[-1:] != [node]:
                component.append(stack.pop())
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return components


def _circle(graph: Graph, component: list[str]) -> list[str]:
    """One circle through the component's first module (breadth first, inside the component)."""
    start = component[0]
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if target in component and target not in came_from:
                    came_from[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{component} is not a circle")


def circles(graph: Graph, root: Path) -> list[str]:
    """Each circle of the graph, described edge by edge: 'a -> b (a.py:12) -> a (b.py:30)'."""
    found = []
    for component in strongly_connected(graph):
        if len(component) == 1 and component[0] not in graph[component[0]]:
            continue
        circle = _circle(graph, component)
        steps = [circle[0]]
        for source, target in zip(circle, circle[1:]):
            path, line = graph[source][target]
            steps.append(f"{target} ({path.relative_to(root.parent).as_posix()}:{line})")
        note = f" [the circle runs through {len(component)} modules: {', '.join(component)}]" if len(component) > len(circle) - 1 else ""
        found.append(" -> ".join(steps) + note)
    return found


def test_the_package_has_no_import_circles():
    root = Path(metalearn.__file__).resolve().parent
    graph = import_graph(root, "metalearn")
    assert {"metalearn.config", "metalearn.train", "metalearn.data.omniglot", "metalearn.rl.train"} <= set(graph)
    assert "metalearn.errors" in graph["metalearn.config"]  # the reader sees the package's imports
    found = circles(graph, root)
    assert not found, "import circles in metalearn (move what both sides need down a layer):\n  " + "\n  ".join(found)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_checker_finds_circles_through_local_and_relative_imports(tmp_path):
    root = tmp_path / "pkg"
    _write(root, {
        "__init__.py": "",
        "low.py": "import os\n",
        "a.py": "from pkg import low\nfrom pkg.b import thing\n",
        "b.py": "thing = 1\n\n\ndef later():\n    from .c import other  # a local import is a dependency too\n    return other\n",
        "c.py": "import pkg.a\nother = 2\n",
        "selfish.py": "from pkg.selfish import x\nx = 1\n",
        "sub/__init__.py": "from . import one  # a package loading its own module: no circle\n",
        "sub/one.py": "from ..low import os\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.sub.one"] == {"pkg.low": (root / "sub" / "one.py", 1)}
    assert set(graph["pkg.sub"]) == {"pkg.sub.one"}
    assert circles(graph, root) == [
        "pkg.a -> pkg.b (pkg/a.py:2) -> pkg.c (pkg/b.py:5) -> pkg.a (pkg/c.py:1)",
        "pkg.selfish -> pkg.selfish (pkg/selfish.py:1)",
    ]
    (root / "c.py").write_text("other = 2\n")  # the circle broken
    assert circles(import_graph(root, "pkg"), root) == ["pkg.selfish -> pkg.selfish (pkg/selfish.py:1)"]
