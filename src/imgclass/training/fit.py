"""Fit a model from a method spec, scoring it on a validation set when one is given."""

from __future__ import annotations

import numpy as np

from ..data import ImageDataset
from ..errors import DataError
from ..models import build_model
from ..tasks import headline, metrics


def fit_model(train: ImageDataset, method: str, val: ImageDataset | None = None, seed: int = 0,
              n_jobs: int | None = None, max_pixels: int | None = None, preprocess=None, log=print):
    """Build the estimator for ``method``, fit it on ``train`` and score it on ``val``.

    Returns ``(model, val_probabilities or None)``; validation metrics land in ``model.meta_["metrics"]``.
    """
    if not train.is_labelled:
        raise DataError(f"{train.name}: no labels to train on; give a folder per class, a CSV or JSONL")
    model = build_model(method, seed=seed, n_jobs=n_jobs, preprocess=preprocess, max_pixels=max_pixels)
    model.fit(train)
    if model.errors_:
        log(f"skipped {len(model.errors_)} unreadable training images (listed in the report)")
    model.meta_["train_skipped"] = list(model.errors_)
    model.meta_["data_fingerprint"] = train.fingerprint()
    P = None
    if val is not None and len(val):
        P = model.predict_proba(val)
        model.meta_["val_skipped"] = list(model.errors_)
        if model.errors_:
            log(f"skipped {len(model.errors_)} unreadable validation images (listed in the report)")
        ok = ~np.isnan(P).any(axis=1)
        if ok.any():
            m = metrics(model.task_, val.targets[ok], P[ok], model.classes_)
            model.meta_["metrics"] = {"val": headline(model.task_, m)}
    return model, P
