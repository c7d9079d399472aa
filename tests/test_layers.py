"""The package's layers (DESIGN.md): each module imports only from its own layer or below.

Every module under src/ is parsed (not imported) and each of its imports of `fashion_tagger`
is checked against the table of layers below. A new module is covered as soon as it exists: it
belongs to the layer of its top-level package (or module) name, and one that fits no layer
fails the test until it is given one.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "fashion_tagger"

#: Bottom first. A module may import its own layer and any layer below, never one above.
#: Names on one row are siblings: they may not import each other unless `ALLOWED_SIDEWAYS` says
#: so (training and inference never do; evaluation, curation and serving stand apart too). The ground
#: floor and the entry points are rows of helpers that may use each other freely.
LAYERS: list[set[str]] = [
    {"errors", "_io", "_net", "_cpu", "_progress", "_version", "taxonomy", "storage"},
    {"dataset"},
    {"sources", "testing"},
    {"model"},
    {"training", "inference"},
    {"evaluation", "curation", "serving"},
    {"quickstart"},
    {"cli", "__main__", "__init__"},
]
FREE_ROWS = (0, len(LAYERS) - 1)
ALLOWED_SIDEWAYS: set[tuple[str, str]] = {
    ("testing", "sources"),  # the fake marketplace serves the Vinted source's wire format
}


def _unit(module: str) -> str:
    """The layer unit of a dotted module name: its first name below the package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _rank() -> dict[str, int]:
    return {unit: i for i, row in enumerate(LAYERS) for unit in row}


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The `fashion_tagger` modules a file imports (at any depth: lazy imports count too)."""
    name = _module_name(path)
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != PACKAGE:
                continue
            # `from fashion_tagger.x import y` imports the submodule x.y when there is one
            out.update(f"{mod}.{a.name}" if _exists(f"{mod}.{a.name}") else mod for a in node.names)
    return out


def _exists(module: str) -> bool:
    base = SRC.joinpath(*module.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    files = sorted(p for p in (SRC / PACKAGE).rglob("*.py"))
    assert files, f"no sources under {SRC}"
    return {_module_name(p): {m for m in _imports(p) if _exists(m)} for p in files}


GRAPH = _graph()


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a layer or sideways within one, as readable lines."""
    rank = _rank()
    bad = []
    for mod, deps in sorted(graph.items()):
        src = _unit(mod)
        for dep in sorted(deps):
            dst = _unit(dep)
            if src == dst:
                continue
            if dst == "__init__" and src != "__init__":  # the public API; stages never need it
                bad.append(f"{mod} imports the package root ({dep}): import the module itself")
            elif rank[dst] > rank[src]:
                bad.append(f"{mod} imports {dep}: upward ({src} is below {dst})")
            elif (
                rank[dst] == rank[src]
                and rank[src] not in FREE_ROWS
                and (src, dst) not in ALLOWED_SIDEWAYS
            ):
                bad.append(f"{mod} imports {dep}: sideways ({src} and {dst} share a layer)")
    return bad


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Module-level import cycles (strongly connected components of more than one module, or
    a module importing itself), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def _parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Drop the edge from a package to its own submodules and back (`__init__` re-exports)."""
    return {
        mod: {d for d in deps if not d.startswith(mod + ".") and not mod.startswith(d + ".")}
        for mod, deps in graph.items()
    }


def test_every_module_has_a_layer() -> None:
    rank = _rank()
    missing = sorted({_unit(m) for m in GRAPH} - set(rank))
    assert not missing, f"add these to LAYERS in tests/test_layers.py: {missing}"


def test_no_import_goes_up_or_sideways() -> None:
    bad = layer_violations(GRAPH)
    assert not bad, "\n".join(bad)


def test_no_import_cycle() -> None:
    cycles = import_cycles(_parents(GRAPH))
    assert not cycles, "\n".join(" <-> ".join(c) for c in cycles)


def test_model_imports_no_stage() -> None:
    stages = {"training", "inference", "evaluation", "serving", "cli", "quickstart"}
    bad = [
        f"{mod} imports {dep}"
        for mod, deps in GRAPH.items()
        if _unit(mod) == "model"
        for dep in deps
        if _unit(dep) in stages
    ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    ("graph", "expect"),
    [
        ({"fashion_tagger.training.a": {"fashion_tagger.inference.b"}}, "sideways"),
        ({"fashion_tagger.model.a": {"fashion_tagger.training.b"}}, "upward"),
        ({"fashion_tagger.dataset.a": {"fashion_tagger.model.b"}}, "upward"),
        ({"fashion_tagger.serving.a": {"fashion_tagger"}}, "package root"),
        ({"fashion_tagger.serving.a": {"fashion_tagger.inference.b"}}, None),
    ],
)
def test_the_checks_catch_what_they_should(graph: dict[str, set[str]], expect: str | None) -> None:
    bad = layer_violations(graph)
    if expect is None:
        assert bad == []
    else:
        assert len(bad) == 1 and expect in bad[0]


def test_a_cycle_is_found() -> None:
    graph = defaultdict(set)
    graph["a"] = {"b"}
    graph["b"] = {"c"}
    graph["c"] = {"a"}
    graph["d"] = {"a"}
    assert import_cycles(dict(graph)) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": set()}) == []
