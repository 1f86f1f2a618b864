"""Prediction: probabilities, decisions, explanations and batch prediction into a CSV."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..data import ImageDataset
from ..data.decode import DEFAULT_MAX_PIXELS, ImageSource
from ..deploy.load import resolve_model


def predict_proba(model, images: Sequence[ImageSource] | ImageDataset, max_pixels: int | None = None,
                  tta: str | None = None) -> np.ndarray:
    """Class probabilities, one row per image (NaN rows for unreadable images); ``tta`` (``flip``,
    ``crops`` or ``flip+crops``) averages them over views of each image."""
    from ..models.tta import predict_proba_tta

    m = resolve_model(model, max_pixels)
    sources = list(images.sources) if isinstance(images, ImageDataset) else list(images)
    return predict_proba_tta(m, sources, tta)


def predict(model, images: Sequence[ImageSource] | ImageDataset, top_k: int = 1, max_pixels: int | None = None,
            tta: str | None = None):
    """A ``Prediction`` per image (decided label(s) with probability, top-k classes, hierarchical path);
    ``None`` for unreadable images. ``tta`` as in ``predict_proba``."""
    from ..models import predictions

    m = resolve_model(model, max_pixels)
    return predictions(m, predict_proba(m, images, tta=tta), top_k)


def explain(model, image: ImageSource, target: str | Sequence[str] | None = None, method: str = "gradcam",
            out: str | os.PathLike | None = None, max_pixels: int | None = None):
    """Heatmaps (``Explanation`` list, one per target) of what made the model score ``target`` on
    ``image``: ``gradcam``, ``gradcam++``, ``integrated-gradients`` (deep models) or ``occlusion``
    (any model). By default the prediction is explained (each predicted label of a multi-label model).
    With ``out``, each is written as a PNG: ``out`` itself, or ``<stem>-<target>.png`` for several."""
    from ..evaluation.explain import explain as _explain
    from ..evaluation.explain import output_paths

    m = resolve_model(model, max_pixels)
    exps = _explain(m, image, target=target, method=method, max_pixels=m.max_pixels or DEFAULT_MAX_PIXELS)
    if out is not None:
        for e, path in zip(exps, output_paths(out, exps)):
            e.save(path)
            e.path = str(path)
    return exps


def predict_to_csv(model, images: Sequence[ImageSource] | ImageDataset, out: str | os.PathLike, *, top_k: int = 3,
                   tta: str | None = None, log: Callable[[str], Any] = lambda m: None) -> dict[str, int]:
    """Predict ``images`` into the CSV ``out`` in chunks, skipping those already there (counts per outcome)."""
    from ..deploy.batch import predict_to_csv as _predict_to_csv

    sources = list(images.sources) if isinstance(images, ImageDataset) else list(images)
    return _predict_to_csv(resolve_model(model), sources, out, top_k=top_k, tta=tta, log=log)
