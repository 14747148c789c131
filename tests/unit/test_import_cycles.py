"""No import cycles in helixd and helixctl: between modules, and between helixd's packages.

The graph is read from the source with ``ast``: an ``import`` anywhere in a module counts,
at its top or inside a function (a lazy import is still a dependency, only a later one);
an import under ``if TYPE_CHECKING:`` does not (it never runs). ``from package import
name`` is an edge to the submodule when ``name`` is one, else to the package.

Packages are DESIGN.md's layers (``helixd.control``, ``helixd.jobs``, …; a module at the
top, like ``helixd.daemon``, is its own layer; all of helixctl is one): "imports run one
way, top to bottom, never back up", so a package may not import one that imports it.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("helixd", "helixctl")

Graph = dict[str, set[str]]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {
        _module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))
    }


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement that can run, at any depth."""
    for node in ast.iter_child_nodes(tree):
        runs = node.orelse if isinstance(node, ast.If) and _is_type_checking(node) else [node]
        for statement in runs:
            if isinstance(statement, ast.Import | ast.ImportFrom):
                yield statement
            yield from _imports(statement)


def module_graph() -> Graph:
    """Module → the modules of helixd and helixctl it imports."""
    sources = _sources()

    def resolve(name: str) -> str | None:
        while name and name not in sources:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {}
    for module, path in sources.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        names: list[str] = []
        for node in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names += [alias.name for alias in node.names]
                continue
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # ``from a.b import c``: the submodule a.b.c where there is one, else a.b.
            names += [
                f"{base}.{alias.name}" if f"{base}.{alias.name}" in sources else base
                for alias in node.names
            ]
        graph[module] = {t for t in map(resolve, names) if t is not None} - {module}
    return graph


def layer(module: str) -> str:
    """The package a module belongs to, as DESIGN.md's layers count them."""
    parts = module.split(".")
    if parts[0] == "helixctl":
        return "helixctl"
    return ".".join(parts[:2])


def package_graph(modules: Graph) -> Graph:
    """Layer → the layers it imports."""
    graph: Graph = {}
    for module, targets in modules.items():
        graph.setdefault(layer(module), set()).update(
            layer(t) for t in targets if layer(t) != layer(module)
        )
    return graph


def cycles(graph: Graph, limit: int = 100) -> list[list[str]]:
    """Elementary cycles, each from its smallest node, in order (at most ``limit``)."""
    found: list[list[str]] = []

    def walk(start: str, path: list[str]) -> None:
        for nxt in sorted(graph.get(path[-1], ())):
            if len(found) >= limit:
                return
            if nxt == start:
                found.append([*path, start])
            elif nxt > start and nxt not in path:
                walk(start, [*path, nxt])

    for start in sorted(graph):
        walk(start, [start])
    return found


def _report(found: list[list[str]]) -> str:
    return "\n".join(" → ".join(cycle) for cycle in found)


def test_no_module_imports_itself_back() -> None:
    found = cycles(module_graph())
    print(_report(found))
    assert found == [], f"import cycles between modules:\n{_report(found)}"


def test_no_package_imports_one_that_imports_it() -> None:
    modules = module_graph()
    found = cycles(package_graph(modules))
    # Which modules make each edge of a cycle, to say where to cut.
    culprits = [
        f"  {a} → {b}: "
        + ", ".join(
            f"{m} → {t}"
            for m in sorted(modules)
            if layer(m) == a
            for t in sorted(modules[m])
            if layer(t) == b
        )
        for cycle in found
        for a, b in itertools.pairwise(cycle)
    ]
    report = _report(found) + ("\n" + "\n".join(culprits) if culprits else "")
    print(report)
    assert found == [], f"import cycles between packages:\n{report}"


def test_the_graph_sees_every_kind_of_import() -> None:
    """The checks above would pass on an empty graph; this one would not."""
    graph = module_graph()
    assert "helixd.control.api" in graph["helixd.control.models_api"]  # top-level from-import
    assert "helixctl.cli" in graph["helixctl.core"]  # a lazy import, inside main()
    assert "helixd.protocol" in graph["helixctl.status"]
    # TYPE_CHECKING-only: diagnose imports Context for its annotations alone.
    assert "helixctl.context" not in graph["helixctl.diagnose"]
    # A cycle is found when there is one.
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
