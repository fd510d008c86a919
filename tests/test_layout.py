"""The import graph follows the flow: models -> exporters -> runners -> core -> stages -> cli.

Read from the source (every import, the lazy ones inside functions too): a module may import its
own layer or the layers below it, never above, and no modules import each other in a cycle. A
lazy import hides a cycle from Python, not from this test."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"slmbench": REPO / "bench", "slmbench.models": REPO / "models", "slmbench.exporters": REPO / "exporters"}

# Lower layers never import higher ones. The hub (configuration, row, results file) sits with the
# core: every stage above reads and writes it; runners and exporters below never need it.
LAYERS = [
    ("base", ["slmbench.errors", "slmbench.host"]),
    ("models", ["slmbench.models"]),
    ("exporters", ["slmbench.exporters"]),
    ("runners", ["slmbench.runners"]),
    ("core", ["slmbench.core", "slmbench.config", "slmbench.prompts", "slmbench.rows", "slmbench.results"]),
    ("stages", ["slmbench.sweep", "slmbench.report", "slmbench.gate", "slmbench.tools"]),
    ("cli", ["slmbench.cli"]),
]


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[0] in ("models", "exporters") and package == "slmbench":
                continue  # never under bench/, but be safe
            name = ".".join([package, *[p for p in parts if p != "__init__"]])
            found[name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """Every slmbench module `path` imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        out.update(n for n in names if n in known)
    return out


def layer_of(name: str) -> int:
    if name == "slmbench":  # the root package: a docstring and the version
        return 0
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[1]):
                best = (rank, len(prefix))
    assert best is not None, f"{name} belongs to no layer: add its package to LAYERS"
    return best[0]


def graph() -> dict[str, set[str]]:
    found = modules()
    known = set(found)
    return {name: imports(path, known) - {name} for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_no_module_imports_a_layer_above_its_own():
    backward = sorted(f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
                      for a, deps in graph().items() for b in deps if layer_of(b) > layer_of(a))
    assert not backward, "\n".join(backward)


def test_no_import_cycles():
    assert not cycles(graph())


def test_the_checks_would_catch_a_cycle_and_a_backward_edge():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("slmbench.exporters.onnx") < layer_of("slmbench.runners.onnxruntime") < layer_of("slmbench.cli")
    assert "slmbench.exporters.artifact" in graph()["slmbench.core.benchmark"]  # lazy imports count too


def test_every_file_the_code_and_readme_cite_is_in_the_project():
    """Docstrings and comments cite project files by path (docs/metrics.md, bench/core/measure.py):
    each must exist here, not in some folder outside the project."""
    import re

    cited = re.compile(r"(?<![\w/.])((?:docs|bench|models|exporters|tests)/[\w/.-]*\w\.(?:md|py|toml)\b)")
    sources = [p for folder in FOLDERS.values() for p in folder.rglob("*.py")]
    sources += [REPO / "README.md", REPO / "Makefile", REPO / "pyproject.toml", *(REPO / "docs").glob("*.md"),
                *(REPO / "tests").glob("*.py"), *(REPO / "bench" / "sweep" / "shipped").glob("*.toml")]
    missing = sorted({f"{p.relative_to(REPO)}: {m}" for p in sources for m in cited.findall(p.read_text())
                      if "<" not in m and "*" not in m and not (REPO / m).exists()})
    assert not missing, "\n".join(missing)
    assert not [p for p in sources if "DESIGN.md" in p.read_text() and p.name != "test_layout.py"]
