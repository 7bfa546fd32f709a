"""The import graph: no circles, and no layer importing one above it (lazy imports included).

Layers, bottom up: errors/fileio/distributed/rundir/config (leaves) -> data -> training ->
evaluation metrics (``tfmf.evaluation``, ``.rating``, ``.ranking``: they only call a model's
``score``/``predict``) -> models -> model selection, tuning -> runner -> export -> cli.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "tfmf"


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """module -> tfmf modules it imports anywhere in its body (top level or inside functions)."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                # `from pkg import submodule` depends on the submodule, not on pkg's body.
                targets = subs if all(t in modules for t in subs) else [node.module] + subs
            for t in targets:
                if t in modules and t != name:
                    deps.add(t)
        graph[name] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                found.append(stack[stack.index(m):] + [m])
            elif m not in state:
                visit(m)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return found


def test_no_import_circles():
    graph = import_graph()
    # Package __init__ files that only re-export (tfmf, tfmf.models) are lazy by design.
    graph = {k: {d for d in v if d not in ("tfmf",)} for k, v in graph.items()}
    assert not _cycles(graph), _cycles(graph)


def test_no_layer_imports_a_higher_one():
    above = {
        "tfmf.data": ("tfmf.training", "tfmf.models", "tfmf.evaluation", "tfmf.tuning",
                      "tfmf.runner", "tfmf.export", "tfmf.cli", "tfmf.registry"),
        "tfmf.training": ("tfmf.models", "tfmf.evaluation", "tfmf.tuning", "tfmf.runner",
                          "tfmf.export", "tfmf.cli", "tfmf.registry"),
        "tfmf.models": ("tfmf.evaluation.model_selection", "tfmf.tuning", "tfmf.runner",
                        "tfmf.export", "tfmf.cli"),
        "tfmf.evaluation.rating": ("tfmf.models", "tfmf.runner", "tfmf.export", "tfmf.cli"),
        "tfmf.evaluation.ranking": ("tfmf.models", "tfmf.runner", "tfmf.export", "tfmf.cli"),
        "tfmf.runner": ("tfmf.export", "tfmf.cli"),
        "tfmf.tuning": ("tfmf.runner", "tfmf.export", "tfmf.cli"),
        "tfmf.config": ("tfmf.evaluation", "tfmf.models", "tfmf.runner", "tfmf.training"),
        "tfmf.rundir": ("tfmf.runner", "tfmf.models", "tfmf.training", "tfmf.cli"),
    }
    bad = []
    for mod, deps in import_graph().items():
        for layer, forbidden in above.items():
            if mod == layer or mod.startswith(layer + "."):
                bad += [(mod, d) for d in deps if d.startswith(forbidden)]
    assert not bad, bad


def test_data_inspect_and_the_data_layer_load_no_tensorflow():
    code = ("import sys\nfrom tfmf.cli import main\n"
            "assert main(['data', 'inspect', 'sample', '--json']) == 0\n"
            "import tfmf.data, tfmf.data.splits, tfmf.rundir, tfmf.config\n"
            "assert 'tensorflow' not in sys.modules, 'TensorFlow was imported'\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stderr[-2000:]
    assert '"n_ratings"' in res.stdout or "ratings" in res.stdout
