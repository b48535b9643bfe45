"""kitmw's own import graph, read from the source with ``ast``: no circle, no private name
crossing a module boundary, and the benchmark suites kept to themselves.

Every import statement counts, at module level or inside a function (a lazy import is a
dependency all the same); only ``if TYPE_CHECKING:`` blocks are left out, since they
never run. ``from package import name`` is an edge to the submodule ``name`` when there
is one, else to the package.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kitmw"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _nodes(tree: ast.AST) -> Iterator[ast.AST]:
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if _is_type_checking(node):
            todo.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        todo.extend(ast.iter_child_nodes(node))


def _imports(module: str) -> Iterator[tuple[str, str, int]]:
    """(target module, imported name or "", line) of every kitmw import in ``module``."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in _nodes(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield alias.name, "", node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target in MODULES:
                for alias in node.names:
                    yield target, alias.name, node.lineno


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module in MODULES:
        edges = set()
        for target, name, _ in _imports(module):
            edges.add(f"{target}.{name}" if f"{target}.{name}" in MODULES else target)
        edges.discard(module)
        graph[module] = edges
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` (its modules, the first repeated at the end), or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path = [start]
        todo = [iter(sorted(graph[start]))]
        while todo:
            nxt = next(todo[-1], None)
            if nxt is None:  # every edge of path[-1] explored: no circle through it
                todo.pop()
                done.add(path.pop())
            elif nxt in path:
                return [*path[path.index(nxt) :], nxt]
            elif nxt not in done:
                path.append(nxt)
                todo.append(iter(sorted(graph.get(nxt, ()))))
    return None


def test_the_graph_sees_lazy_imports_and_skips_type_checking_ones() -> None:
    graph = _graph()
    assert "kitmw.bench.wsgi" in graph["kitmw.bench"]  # imported inside run_suite()
    assert "kitmw.exchange" not in graph["kitmw.chain"]  # only under TYPE_CHECKING
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_kitmw_has_no_import_circle() -> None:
    cycle = _cycle(_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or ())


def test_no_private_name_is_imported_from_another_kitmw_module() -> None:
    """A name another module needs is public in its (possibly private) module: importing a
    private *module* of one's own package (``from . import _asgi``) is fine."""
    crossing = []
    for module in MODULES:
        for target, name, line in _imports(module):
            if name.startswith("_") and not name.startswith("__") and f"{target}.{name}" not in MODULES:
                crossing.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {target}.{name}")
    assert crossing == [], "\n".join(crossing)


def test_no_private_attribute_of_another_kitmw_module_is_read() -> None:
    """``from . import _machine`` then ``_machine._check_int``: the same crossing, spelled
    as an attribute."""
    crossing = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for target, name, _ in _imports(module):
            if f"{target}.{name}" in MODULES:
                aliases[name] = f"{target}.{name}"
        for node in _nodes(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in MODULES and alias.asname:
                        aliases[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                for alias in node.names:  # ``from . import _asgi as asgi_helpers``
                    for target, name in list(aliases.items()):
                        if alias.name == target and alias.asname:
                            aliases[alias.asname] = name
        for node in _nodes(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and f"{aliases[node.value.id]}.{node.attr}" not in MODULES
            ):
                crossing.append(f"{path.relative_to(ROOT)}:{node.lineno}: {aliases[node.value.id]}.{node.attr}")
    assert crossing == [], "\n".join(crossing)


def test_the_benchmark_suites_are_one_room() -> None:
    """kitmw.bench imports kitmw, never the repository's benchmarks/ or tests/; nothing in
    kitmw but the command line imports kitmw.bench."""
    graph = _graph()
    for module in MODULES:
        inside = module == "kitmw.bench" or module.startswith("kitmw.bench.")
        users = {t for t in graph[module] if t == "kitmw.bench" or t.startswith("kitmw.bench.")}
        if not inside:
            assert module == "kitmw.cli" or not users, f"{module} imports {sorted(users)}"
    for module in [m for m in MODULES if m.startswith("kitmw.bench")]:
        for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and not getattr(node, "level", 0):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in {"benchmarks", "tests"} for n in names), module


#: The layers of docs/architecture.md, bottom first: a module imports only from its own
#: layer or below. The concerns are the packages the registry names (kitmw.concerns).
CORE = {"kitmw._types", "kitmw.errors", "kitmw.chain", "kitmw.exchange", "kitmw.concerns", "kitmw._paths",
        "kitmw._cache", "kitmw.routes"}
DRIVERS = {"kitmw.asgi", "kitmw.wsgi", "kitmw._client", "kitmw.httpx", "kitmw.httpx2", "kitmw.endpoint"}
TOP = {"kitmw.stack", "kitmw.fastapi", "kitmw.django", "kitmw.flask", "kitmw"}


def _layer(module: str) -> int:
    from kitmw.concerns import CONCERNS

    if module in CORE:
        return 0
    packages = {c.package for c in CONCERNS}
    if any(module == p or module.startswith(p + ".") for p in packages):
        return 1
    if module in DRIVERS:
        return 2
    if module in TOP or module.startswith(("kitmw.django.", "kitmw.fastapi.")):
        return 3
    return 4  # tools: testing, cli, demo, bench, __main__


def test_imports_point_one_way_core_concerns_drivers_stack() -> None:
    """A concern never imports a driver or the stack, and the core imports no concern."""
    wrong = []
    for module in MODULES:
        mine = _layer(module)
        if mine == 4:
            continue
        for target, _, line in _imports(module):
            if _layer(target) > mine and target != "kitmw":
                wrong.append(f"{module}:{line} imports {target}")
    assert not wrong, "imports pointing up the layers:\n" + "\n".join(wrong)
