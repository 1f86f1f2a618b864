"""The one place that builds ONNX Runtime sessions: threads, providers, graph optimisation, caching."""

from __future__ import annotations

import os
from typing import Any

#: execution providers of every session (CPU: imgclass ships no GPU runtime)
PROVIDERS = ["CPUExecutionProvider"]

_CACHE: dict[tuple, Any] = {}  # per-process sessions of model files, keyed by file and options


def ort_threads(default: int) -> int:
    """Intra-op threads: ``IMGCLASS_ORT_THREADS`` when it is a positive number, else ``default``
    (a caller that runs in parallel workers passes 1, one that has the machine to itself all cores)."""
    n = int(os.environ.get("IMGCLASS_ORT_THREADS") or 0)
    return n if n > 0 else int(default)


def session(model: bytes | str | os.PathLike, *, threads: int | None = None, inter_threads: int | None = None,
            optimize: bool = True, cache: bool = False):
    """An ONNX Runtime ``InferenceSession`` of ``model`` (serialised bytes or a file).

    ``threads`` / ``inter_threads``: intra- and inter-op thread counts (``None``: ONNX Runtime's default).
    ``optimize=False`` runs the graph exactly as written (for probing intermediate values).
    ``cache``: reuse one session per (file, options) in this process, e.g. in each joblib worker."""
    import onnxruntime as ort

    key = None
    if cache and not isinstance(model, (bytes, bytearray)):
        key = (str(model), threads, inter_threads, optimize)
        if key in _CACHE:
            return _CACHE[key]
    so = ort.SessionOptions()
    if threads is not None:
        so.intra_op_num_threads = int(threads)
    if inter_threads is not None:
        so.inter_op_num_threads = int(inter_threads)
    so.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                   else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    src = bytes(model) if isinstance(model, (bytes, bytearray)) else str(model)
    sess = ort.InferenceSession(src, so, providers=PROVIDERS)
    if key is not None:
        _CACHE[key] = sess
    return sess


__all__ = ["PROVIDERS", "ort_threads", "session"]
