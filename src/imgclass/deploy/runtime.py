"""``OnnxModel``: predict with an exported ``model.onnx`` and ONNX Runtime alone (no torch, no timm).

It behaves like the other models for ``imgclass.predict`` / ``evaluate`` / ``serve``: ``classes_``,
``task_``, ``decision_``, ``predict_proba`` and ``predict``. Everything it needs (classes, decision
rule, input size, resize mode) comes from the ONNX file's metadata; the graph itself normalises,
calibrates and applies the task's activation.

Decoding runs in a background thread while ONNX Runtime works on the previous chunk, so the two overlap.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.decode import DEFAULT_MAX_PIXELS, ImageSource
from ..errors import ConfigError, ModelFormatError
from .export import ONNX_FILE, read_metadata

#: pixels per inference batch (64 images of 256 x 256), as ``models.deep`` uses
_BATCH_PIXELS = 64 * 256 * 256


class OnnxModel:
    """A model backed by an exported ONNX file (a bundle folder holding ``model.onnx``, or the file)."""

    kind = "onnx"

    def __init__(self, path: str | os.PathLike, threads: int | None = None, n_jobs: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, batch_size: int = 64):
        from ..runtime import session
        from ..tasks.decision import Decision
        from ..transforms import Preprocess

        p = Path(path)
        self.file = p / ONNX_FILE if p.is_dir() else p
        if not self.file.exists():
            raise ModelFormatError(f"{p}: no {ONNX_FILE}; run imgclass export {p} first (or use --runtime torch)")
        meta = read_metadata(self.file)
        self.onnx_meta = meta
        self.session = session(self.file, threads=int(threads or os.cpu_count() or 1))
        self.classes_ = list(meta["classes"])
        self.task_ = meta["task"]
        self.taxonomy_ = meta.get("taxonomy")
        self.decision_ = Decision.from_dict(meta.get("decision"), task=self.task_, classes=self.classes_)
        self.preprocess = Preprocess.from_dict(meta["preprocess"])
        self.hflip = bool(meta.get("hflip", True))
        self.method = meta.get("method")
        self.meta_: dict[str, Any] = {"onnx": str(self.file)}  # calibration is inside the graph
        # Decoding defaults to one background thread in this process, overlapping ONNX Runtime (which
        # uses every core): decoding worker processes would compete with it for the cores.
        self.n_jobs = 1 if n_jobs is None else n_jobs
        self.max_pixels, self.batch_size = max_pixels, int(batch_size)
        self.errors_: list[tuple[str, str]] = []
        self.run_dir = None

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.file)!r}, task={self.task_}, classes={len(self.classes_)})"

    def probabilities_from_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities for uint8 ``(n, H, W, 3)`` RGB arrays already at the input size."""
        h, w = pixels.shape[1:3] if pixels.ndim == 4 else (1, 1)
        step = max(1, min(self.batch_size, _BATCH_PIXELS // max(1, int(h) * int(w))))  # bounds activation memory
        out = [self.session.run(None, {"image": np.ascontiguousarray(pixels[s:s + step])})[0]
               for s in range(0, len(pixels), step)]
        return np.concatenate(out).astype(np.float64) if out else np.zeros((0, len(self.classes_)))

    def predict_proba(self, X: Sequence[ImageSource]) -> np.ndarray:
        """``(n, n_classes)`` probabilities; NaN rows (and ``errors_`` entries) for unreadable images."""
        from concurrent.futures import ThreadPoolExecutor

        from ..features import decode_to_array

        sources = list(X.sources) if hasattr(X, "sources") else list(X)
        out = np.full((len(sources), len(self.classes_)), np.nan)
        errors: list[tuple[str, str]] = []
        chunk = 512
        starts = list(range(0, len(sources), chunk))

        def decode(s: int):
            px, ok, errs = decode_to_array(sources[s:s + chunk], self.preprocess, self.n_jobs, self.max_pixels,
                                           "predict", layout="NHWC")
            return s, px, ok, errs

        # decode chunk k+1 (worker processes) while ONNX Runtime scores chunk k
        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = pool.submit(decode, starts[0]) if starts else None
            for k in range(len(starts)):
                s, px, ok, errs = pending.result()
                pending = pool.submit(decode, starts[k + 1]) if k + 1 < len(starts) else None
                errors += errs
                if len(px):
                    rows = np.flatnonzero(ok) + s
                    out[rows] = self.probabilities_from_pixels(px)
        self.errors_ = errors
        return out

    def predict(self, X: Sequence[ImageSource], top_k: int = 1):
        from ..models import predictions

        return predictions(self, self.predict_proba(X), top_k)

    def save(self, *a, **k):  # pragma: no cover - an exported model is already deployed
        raise ConfigError("an ONNX model cannot be re-saved as a bundle; copy its model.onnx")


def onnx_is_current(bundle: Path) -> tuple[bool, str]:
    """Whether ``bundle/model.onnx`` is the export recorded in ``model.json`` and made from the bundle's
    current weights (and why not). A ``model.onnx`` that ``model.json`` does not record, or whose
    content differs from the record, is refused: nothing but ``imgclass export`` puts one there."""
    import hashlib

    from ..models import read_meta
    from ..models.validate import bundle_file
    from .export import _weights_digest

    f = bundle_file(bundle, ONNX_FILE)
    if not f.exists():
        return False, "no model.onnx"
    meta = read_meta(bundle)
    rec = meta.get("onnx")
    where = bundle / "model.json"
    if not rec:
        raise ModelFormatError(f"{f}: not recorded in {where.name} (no export made it); delete it or run "
                               f"imgclass export {bundle}")
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    if rec.get("file") != ONNX_FILE or rec.get("sha256") != h.hexdigest():
        raise ModelFormatError(f"{f}: differs from the export recorded in {where.name}; delete it or run "
                               f"imgclass export {bundle}")
    if rec.get("weights") != _weights_digest(bundle):
        return False, "model.onnx was exported from other weights (export again)"
    return True, ""


__all__ = ["OnnxModel", "onnx_is_current"]
