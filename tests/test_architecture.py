"""The package's import graph, read from the source (ast): no cycle, and no module importing another's private names.

Every import counts, module-level and inside functions alike (a lazy import is still a dependency), except
those under ``if TYPE_CHECKING:``. ``from . import x`` counts as importing the module ``x``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ghostedge"

#: what the CLI rework of issue 19 still has to remove (cli.py defines the app and its options, commands.py
#: registers the commands on it, cli imports commands to register them): listed, so that everything else is
#: checked now; an entry that is gone must be taken off (the tests below fail on a stale entry)
KNOWN_EDGES: set[tuple[str, str]] = set()
KNOWN_PRIVATE: set[tuple[str, str, str]] = set()


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def _resolve(mod: str, is_pkg: bool, level: int, target: str | None) -> str:
    """The absolute name of a relative import ``from <level dots><target> import ...`` made in ``mod``."""
    if level == 0:
        return target or ""
    base = mod.split(".")
    base = base if is_pkg else base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def imports(known: dict[str, Path]) -> dict[str, list[tuple[str, list[str]]]]:
    """module -> [(imported ghostedge module, names imported from it)]."""
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for mod, path in known.items():
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_checking_nodes(tree)
        is_pkg = path.name == "__init__.py"
        edges: list[tuple[str, list[str]]] = []
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                edges += [(a.name, []) for a in node.names if a.name.split(".")[0] == "ghostedge"]
            elif isinstance(node, ast.ImportFrom):
                src = _resolve(mod, is_pkg, node.level, node.module)
                if src.split(".")[0] != "ghostedge":
                    continue
                names = []
                for a in node.names:
                    sub = f"{src}.{a.name}"
                    if sub in known:          # from . import x: the module x
                        edges.append((sub, []))
                    else:
                        names.append(a.name)
                if names:
                    edges.append((src, names))
        out[mod] = [(m, n) for m, n in edges if m in known and m != mod]
    return out


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (a list of modules, first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state:
                found = visit(m)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def _graph(edges: dict[str, list[tuple[str, list[str]]]]) -> dict[str, set[str]]:
    """Module -> modules it imports; a package's own ``__init__`` re-exporting its submodules is not an edge
    back into them from outside (importing ``ghostedge.backends.tensorrt.runner`` runs the package first)."""
    return {m: {t for t, _ in es} for m, es in edges.items()}


def test_the_checker_finds_a_cycle():
    """The checker itself: a two-module cycle and a private import are found (a test that can fail)."""
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert _resolve("ghostedge.backends.tensorrt.runner", False, 2, "cuda") == "ghostedge.backends.cuda"
    assert _resolve("ghostedge.backends.tensorrt", True, 1, "runner") == "ghostedge.backends.tensorrt.runner"
    assert _resolve("ghostedge.build", False, 1, "backends.common") == "ghostedge.backends.common"


def test_the_import_graph_has_no_cycle():
    edges = imports(_modules())
    assert len(edges) > 30 and any(edges.values())   # the source was read
    graph = _graph(edges)
    stale = [e for e in KNOWN_EDGES if e[1] not in graph.get(e[0], ())]
    assert not stale, f"{stale} no longer exist: take them off KNOWN_EDGES"
    for a, b in KNOWN_EDGES:
        graph[a].discard(b)
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_another_modules_private_names():
    found = {(mod, src, name) for mod, es in imports(_modules()).items() for src, names in es
             for name in names if name.startswith("_") and not name.startswith("__")}
    assert KNOWN_PRIVATE <= found, f"{KNOWN_PRIVATE - found} no longer happen: take them off KNOWN_PRIVATE"
    bad = [f"{mod} imports {name} from {src}" for mod, src, name in sorted(found - KNOWN_PRIVATE)]
    assert not bad, "; ".join(bad)


@pytest.mark.parametrize("low,high", [("ghostedge.backends", "ghostedge.build"), ("ghostedge.backends", "ghostedge.bench"),
                                      ("ghostedge.backends", "ghostedge.commands"), ("ghostedge.backends", "ghostedge.cli"),
                                      ("ghostedge.backends", "ghostedge.export"),
                                      ("ghostedge.backends", "ghostedge.quantize")])
def test_backends_import_no_stage(low: str, high: str):
    """Layering: CLI -> stages -> backends -> core; a backend never reaches up into a stage."""
    up = [f"{m} imports {t}" for m, es in imports(_modules()).items() if m.startswith(low)
          for t, _ in es if t == high or t.startswith(high + ".")]
    assert not up, "; ".join(up)


def test_every_backend_module_is_in_the_registry():
    """Adding a backend is its folder plus one registry line: every backends/<name> with a BACKEND is listed."""
    from ghostedge.backends.registry import all_backends

    declared = set()
    for mod, path in _modules().items():
        parts = mod.split(".")
        if len(parts) == 3 and parts[1] == "backends" and "BACKEND = Backend(" in path.read_text():
            declared.add(parts[2])
    assert declared and declared == set(all_backends()), (declared, set(all_backends()))
