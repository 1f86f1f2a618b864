"""``suggest``: train on the labelled images, score a pool of unlabelled ones and rank them."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...data import ImageDataset, find_images, is_image_file, load_dataset
from ...errors import ConfigError, DataError
from .inputs import as_dataset, check_method, check_two_classes, feature_pipeline, source_name
from .strategies import check_strategy, geometry, select
from .suggestions import Suggestions


def _pool_sources(pool: ImageDataset | str | os.PathLike | Sequence) -> tuple[list, str]:
    if isinstance(pool, ImageDataset):
        return list(pool.sources), pool.name
    if isinstance(pool, (str, os.PathLike)):
        p = Path(pool)
        if p.is_dir():
            return find_images(p), str(pool)
        if p.is_file():
            if is_image_file(p):
                return [str(p)], str(pool)
            return list(load_dataset(p).sources), str(pool)
        raise DataError(f"--pool {pool}: no such folder; pass the folder of unlabelled images to rank")
    return list(pool), "pool"


def _real(src: Any) -> str | None:
    return os.path.realpath(src) if isinstance(src, (str, os.PathLike)) else None


def suggest(data: ImageDataset | str | os.PathLike, pool: ImageDataset | str | os.PathLike | Sequence,
            budget: int, strategy: str = "entropy", method: str = "lite0+logreg", *, seed: int = 0,
            task: str | None = None, n_jobs: int | None = None, max_pixels: int | None = None,
            out: str | os.PathLike | None = None, montage_images: int = 64,
            log: Callable[[str], Any] = lambda m: None) -> Suggestions:
    """The ``budget`` pool images most worth labelling next, most useful first.

    Trains ``method`` (a ``FEATURES+CLASSIFIER`` spec; default ``lite0+logreg``) on every labelled image
    of ``data`` (all its splits), scores every image of ``pool`` (a folder searched recursively, a
    CSV/JSONL, an ``ImageDataset`` or a list of paths) with ``strategy`` (see ``STRATEGIES``) and ranks
    them. Pool images that are also in ``data`` are left out. With ``out``, writes
    ``suggestions.csv`` (rank, path, score, predicted, probability) and ``montage.png`` there.

    Raises ``ConfigError`` for an unknown strategy, a deep (end-to-end) method or a pool with fewer
    images than ``budget`` (lower the budget: the command never silently returns fewer than asked,
    except when pool images turn out unreadable, which are skipped, listed in ``skipped`` and noted), and
    ``DataError`` for an empty or missing pool, ``data`` without labels or with fewer than two labelled
    classes.
    """
    strategy = check_strategy(strategy)
    if int(budget) < 1:
        raise ConfigError(f"--budget {budget}: must be at least 1 (how many images to label next)")
    budget = int(budget)
    check_method(method)  # every cheap check before the model (and torch, for deep features) is built
    ds = as_dataset(data, task)
    lab = np.flatnonzero(ds.labelled_mask)
    check_two_classes(ds.targets[lab], ds.classes, f"DATA {ds.name}")
    kept, pool_name, notes = _new_images(pool, ds, budget)

    model = feature_pipeline(method, seed, n_jobs, max_pixels)
    lab_sources = [ds.sources[i] for i in lab]
    sources = lab_sources + kept
    log(f"{method}: features of {len(lab_sources)} labelled and {len(kept)} pool images")
    model.fit_extractor(sources)
    feats = model.features(sources, "features (labelled + pool)")
    pos = np.cumsum(feats.ok) - 1  # row of each readable source in feats.X
    ok_l, ok_p = feats.ok[:len(lab_sources)], feats.ok[len(lab_sources):]
    F_l, F_p = feats.X[pos[:len(lab_sources)][ok_l]], feats.X[pos[len(lab_sources):][ok_p]]
    y_l = ds.targets[lab][ok_l]
    pool_ok = [s for s, o in zip(kept, ok_p) if o]
    if not len(pool_ok):
        raise DataError(f"--pool {pool_name}: none of its {len(kept)} images could be read; see the skipped list")
    check_two_classes(y_l, ds.classes, f"DATA {ds.name}")
    if len(pool_ok) < budget:
        notes.append(f"only {len(pool_ok)} of the {budget} asked for: {len(kept) - len(pool_ok)} pool images "
                     "could not be read")

    model.classes_, model.task_, model.taxonomy_ = list(ds.classes), ds.task, ds.taxonomy
    model.fit_features(F_l, y_l)
    P = model.predict_proba_features(F_p)
    Z = geometry(np.vstack([F_l, F_p]), [strategy]).get(strategy)
    idx, scores = select(strategy, budget, proba=P, features=None if Z is None else Z[len(F_l):],
                         labelled_features=None if Z is None else Z[:len(F_l)], seed=seed)
    res = Suggestions(_rows(idx, scores, P, pool_ok, ds.classes), strategy=strategy, method=model.method, classes=ds.classes, budget=budget,
                      pool_size=len(pool_ok), n_labelled=len(F_l), skipped=feats.errors, notes=notes)
    res._sources = [pool_ok[j] for j in idx]
    if out is not None:
        res.write(out, montage_images)
    return res


def _new_images(pool, ds: ImageDataset, budget: int) -> tuple[list, str, list[str]]:
    """``(pool images not already in DATA, the pool's name, notes)``; refuses a pool smaller than ``budget``."""
    pool_list, pool_name = _pool_sources(pool)
    known = {r for r in (_real(ds.sources[i]) for i in range(len(ds))) if r}
    kept = [s for s in pool_list if _real(s) is None or _real(s) not in known]
    notes = []
    if len(kept) < len(pool_list):
        notes.append(f"{len(pool_list) - len(kept)} pool images are already in DATA and were left out")
    if not kept:
        extra = f" (all {len(pool_list)} are already in DATA)" if pool_list else ""
        raise DataError(f"--pool {pool_name}: no images to rank{extra}; put the unlabelled images there")
    if len(kept) < budget:
        raise ConfigError(f"--budget {budget}: the pool {pool_name} holds only {len(kept)} images; lower "
                          f"--budget to at most {len(kept)} or add images to the pool")
    return kept, pool_name, notes


def _rows(idx: np.ndarray, scores: np.ndarray, P: np.ndarray, pool: list, classes: list[str]) -> list[dict]:
    """One table row per picked pool image, in rank order."""
    rows = []
    for r, (j, s) in enumerate(zip(idx, scores), 1):
        c = int(np.argmax(P[j]))
        rows.append({"rank": r, "path": source_name(pool[j], int(j)), "score": None if not np.isfinite(s) else float(s),
                     "predicted": classes[c], "probability": float(P[j, c])})
    return rows
