"""The layering is a test: every import in src/modinspect (module-level, inside functions, and under
TYPE_CHECKING) goes down a layer or stays inside its own package, and no group of modules imports itself
round in a cycle. No allow-list.

    leaves (errors, config, version, names, files, gcpause, reports/)
      <- sources/ <- analysis/ <- run/ <- watching/ <- commands/, integrations/ <- cli/ <- modinspect
    render/ imports only leaves, and only cli/ and the package's front (show, to_json) import render/.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "modinspect"

LEAVES = frozenset(
    {"errors", "config", "version", "names", "files", "gcpause", "reports", "dtypes", "tensors"}
)
LEVEL = {
    "sources": 1,
    "analysis": 2,
    "run": 3,
    "watching": 4,
    "commands": 5,
    "integrations": 5,
    "cli": 7,
}
FRONT = frozenset({"modinspect", "modinspect.__main__"})


def module_names() -> dict[str, Path]:
    names = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


MODULES = module_names()


def _target(name: str) -> str | None:
    """The modinspect module an imported dotted name lives in (a name imported from a module is that module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> set[str]:
    """Every modinspect module `module` imports, wherever the import statement is."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            candidates = [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        for dotted in candidates:
            if dotted == "modinspect" or dotted.startswith("modinspect."):
                target = _target(dotted)
                if target is not None and target != module:
                    found.add(target)
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def group(module: str) -> str:
    """The layer package (sources, run, ...), a leaf's own name, or 'front' for the package itself."""
    if module in FRONT:
        return "front"
    return module.split(".")[1]


def allowed(importer: str, imported: str) -> bool:
    a, b = group(importer), group(imported)
    if a == "front":
        return True
    if b in LEAVES:
        return a not in LEAVES or b != a or importer != imported
    if a == b:
        return True
    if b == "render":
        return a == "cli"
    if a == "render" or a in LEAVES:
        return False
    if b == "front":
        return False
    return LEVEL[b] < LEVEL[a]


def test_every_module_belongs_to_a_layer() -> None:
    unknown = sorted(m for m in MODULES if group(m) not in {"front", "render", *LEAVES, *LEVEL})
    assert unknown == [], (
        f"modules outside every layer: {unknown}; add them to a layer package or to LEAVES"
    )


def test_no_import_goes_up_a_layer() -> None:
    bad = sorted(
        f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets if not allowed(a, b)
    )
    assert bad == []


def test_leaves_import_only_leaves() -> None:
    bad = sorted(
        f"{a} imports {b}"
        for a, t in GRAPH.items()
        if group(a) in LEAVES
        for b in t
        if group(b) not in LEAVES
    )
    assert bad == []


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    assert cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize(
    ("importer", "imported", "ok"),
    [
        ("modinspect.sources.safetensors", "modinspect.analysis.tree", False),
        ("modinspect.analysis.tree", "modinspect.sources.base", True),
        ("modinspect.render.console", "modinspect.run.reductions", False),
        ("modinspect.commands.stats", "modinspect.render.console", False),
        ("modinspect.cli.app", "modinspect.render.console", True),
        ("modinspect.names", "modinspect.sources.base", False),
        ("modinspect.run.stats", "modinspect.watching.watch", False),
        ("modinspect.watching.watch", "modinspect.run.stats", True),
    ],
)
def test_the_rule_itself(importer: str, imported: str, ok: bool) -> None:
    assert allowed(importer, imported) is ok


def test_the_top_level_holds_only_the_front_and_the_leaves() -> None:
    top = sorted(p.stem for p in SRC.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert set(top) <= LEAVES, sorted(set(top) - LEAVES)
