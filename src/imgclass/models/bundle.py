"""The model bundle: ``model.json`` + ``estimator.skops`` (classical) or ``weights.safetensors`` (deep).

Loading never unpickles and never runs code from the bundle: ``model.json`` is checked against a schema
(``validate``), ``estimator.skops`` against an allow-list of exact type names (``skops_guard``), weights
for shapes and finite values (``weights``), and every file it names must lie inside the bundle folder.
Each estimator writes and restores its own state (``ImageClassifier.save`` / ``from_meta``); this module
picks the estimator a bundle names.
"""

from __future__ import annotations

import os
from pathlib import Path

from .validate import read_meta


def load_model(path: str | os.PathLike):
    """Load a bundle folder into a ready-to-predict model.

    ``imagenet:BACKBONE`` (e.g. ``imagenet:lite0``) gives the pretrained ImageNet-1k classifier.
    """
    if isinstance(path, str) and path.startswith("imagenet:"):
        from .pretrained import ImageNetClassifier

        return ImageNetClassifier.from_name(path)
    meta = read_meta(path)
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    if meta["kind"] == "feature_pipeline":
        from .classical import FeaturePipeline

        return FeaturePipeline.from_meta(folder, meta)
    from .deep import DeepClassifier

    return DeepClassifier.from_meta(folder, meta)
