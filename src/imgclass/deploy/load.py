"""Loading a model for inference with the right runtime: the bundle's up-to-date ONNX export through ONNX
Runtime when there is one, else the bundle itself."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ConfigError

RUNTIMES = ("auto", "torch", "onnx")


def resolve_model(model, max_pixels: int | None = None, n_jobs: int | None = None, runtime: str = "auto"):
    """A model object, or the bundle at a path loaded; optionally set its image limit and workers.

    ``runtime`` for a bundle path: ``auto`` uses its exported ``model.onnx`` with ONNX Runtime when there
    is one made from the current weights (else the bundle itself), ``onnx`` requires it, ``torch`` runs
    the network in torch."""
    from ..models import load_model

    if runtime not in RUNTIMES:
        raise ConfigError(f"--runtime {runtime}: choose auto, torch or onnx")
    if isinstance(model, (str, os.PathLike)) and not str(model).startswith("imagenet:"):
        from .runtime import OnnxModel, onnx_is_current

        folder = Path(model) if Path(model).is_dir() else Path(model).parent
        if runtime != "torch":
            ok, why = onnx_is_current(folder)
            if ok:
                model = OnnxModel(folder, n_jobs=n_jobs)
            elif runtime == "onnx":
                raise ConfigError(f"--runtime onnx: {folder}: {why}; run imgclass export {folder}")
    model = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    if runtime == "torch" and hasattr(model, "engine"):
        model.engine = "torch"
    if max_pixels is not None:
        model.max_pixels = max_pixels
    if n_jobs is not None:
        model.n_jobs = n_jobs
    return model


__all__ = ["RUNTIMES", "resolve_model"]
