"""The code's shape, checked: files stay small, no import loops between files, one ONNX session factory,
the CLI talks only to ``api``, and every estimator is an ``ImageClassifier`` with ``fit``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "imgclass"


def _modules() -> dict[str, Path]:
    mods = {}
    for p in SRC.rglob("*.py"):
        parts = list(p.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _import_graph() -> dict[str, set[str]]:
    """Module -> modules of imgclass it imports anywhere in the file (function-level imports included)."""
    mods = _modules()
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        package = m.split(".") if p.name == "__init__.py" else m.split(".")[:-1]
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                t = ".".join(base + ([node.module] if node.module else []))
                for a in node.names:
                    targets.append(f"{t}.{a.name}" if f"{t}.{a.name}" in mods else t)
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            for t in targets:
                # a package's own submodules importing its __init__ (re-exports) is not a loop between files
                if t in mods and t != m and not m.startswith(t + "."):
                    graph[m].add(t)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_source_file_over_600_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 600}
    assert long == {}


def test_no_import_loop_between_files():
    assert _cycles(_import_graph()) == []


def test_the_cycle_finder_sees_a_loop():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_one_onnx_session_factory():
    sites = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
             for _ in range(p.read_text(encoding="utf-8").count("InferenceSession("))]
    assert sites == ["runtime/session.py"]


@pytest.mark.parametrize("low, high", [("data", "models"), ("transforms", "features"), ("runtime", "models"),
                                       ("features", "models"), ("models", "serve"), ("serve", "api"),
                                       ("data", "training"), ("tasks", "models")])
def test_lower_layers_do_not_import_higher_ones(low, high):
    bad = sorted(f"{m} -> {t}" for m, ts in _import_graph().items() if m.startswith(f"imgclass.{low}")
                 for t in ts if t.startswith(f"imgclass.{high}"))
    assert bad == []


def test_every_estimator_fits_and_clones():
    from sklearn.base import clone

    from imgclass.models.base import ImageClassifier
    from imgclass.models.classical import FeaturePipeline
    from imgclass.models.deep import DeepClassifier
    from imgclass.models.pretrained import ImageNetClassifier

    for est in (FeaturePipeline("hog", "svm"), DeepClassifier("smallcnn", pretrained="scratch"),
                ImageNetClassifier("lite0")):
        assert isinstance(est, ImageClassifier) and callable(est.fit)
        twin = clone(est)
        assert type(twin) is type(est) and twin is not est
        assert twin.get_params().keys() == est.get_params().keys()
