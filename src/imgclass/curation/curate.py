"""``curate``: find blurry, badly exposed, duplicate, leaked, outlier and mislabelled images.

Nothing here writes to the user's images: results are CSV files, a report and lists of items to keep
or exclude (``imgclass train --exclude excluded.csv`` then trains without them).

>>> res = curate("photos/", out="curation/")                        # doctest: +SKIP
>>> res.counts()                                                     # doctest: +SKIP
{'blurry': 12, 'exact_duplicates': 3, 'near_duplicates': 40, 'label_issues': 95, ...}
>>> res.export_clean("clean.csv")  # also writes excluded.csv next to it # doctest: +SKIP
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ImageDataset, load_dataset
from ..data.decode import DEFAULT_MAX_PIXELS
from ..errors import ConfigError, DataError
from .duplicates import DuplicateLimits, exact_groups, near_duplicates
from .labels import confident_learning, neighbour_vote, out_of_fold_probabilities
from .outliers import (
    DEFAULT_Z,
    LAYER_CHANNELS,
    METHODS,
    layer_outlier_scores,
    layer_statistics,
    outlier_scores,
    refine_outlier_scores,
)
from .quality import QualityLimits, image_stats, quality_issues
from .result import DEFAULT_EXCLUDE, EXCLUDE_CHOICES, ISSUE_TYPES, CurationResult

_CHECKS = ("quality", "duplicates", "outliers", "labels")


def read_oof(path: str | os.PathLike, ds: ImageDataset) -> np.ndarray:
    """Out-of-fold probabilities from ``imgclass cv``'s ``oof.csv``, aligned to ``ds`` (NaN rows where
    the file has no entry)."""
    p = Path(path)
    try:
        rows = list(csv.DictReader(p.read_text(encoding="utf-8").splitlines()))
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc.strerror or exc}); give the oof.csv written by imgclass cv") from None
    if not rows or "path" not in rows[0]:
        raise DataError(f"{p}: not an oof.csv from imgclass cv (needs a path column and one column per class)")
    missing = [c for c in ds.classes if c not in rows[0]]
    if missing:
        raise DataError(f"{p}: has no column for class {missing[0]!r}; was it written for this dataset?")
    where = {ds.relpath(i): i for i in range(len(ds))}
    where.update({os.path.abspath(s): i for i, s in enumerate(ds.sources) if isinstance(s, str)})
    P = np.full((len(ds), len(ds.classes)), np.nan)
    hit = 0
    for r in rows:
        i = where.get(r["path"], where.get(os.path.abspath(r["path"])))
        if i is not None:
            P[i] = [float(r[c]) for c in ds.classes]
            hit += 1
    if hit == 0:
        raise DataError(f"{p}: none of its paths are in {ds.name}; run imgclass cv on the same data")
    return P


def _as_dataset(data) -> ImageDataset:
    return data if isinstance(data, ImageDataset) else load_dataset(data)


def _check_options(model: str, outlier_method: str, checks: Sequence[str]):
    """The parsed ``model`` spec, after checking the options a user can get wrong."""
    from ..models import parse_spec

    spec = parse_spec(model)
    if spec.kind != "features":
        raise ConfigError(f"--model {model}: curation needs a FEATURES+CLASSIFIER spec such as lite0+logreg (for a "
                          f"fine-tuned model, run `imgclass cv DATA --method {model} --out cv/` and pass --oof cv/oof.csv)")
    if outlier_method not in METHODS:
        raise ConfigError(f"--outlier-method {outlier_method}: choose {' or '.join(METHODS)}")
    bad = [c for c in checks if c not in _CHECKS]
    if bad:
        raise ConfigError(f"--checks {','.join(bad)}: choose from quality, duplicates, outliers, labels")
    return spec


def _read_images(ds: ImageDataset, n_jobs, max_pixels, timings: dict[str, float], log):
    """Per-image statistics of ``ds`` and the skipped files; fails when no image can be read."""
    t0 = time.perf_counter()
    stats = image_stats(ds.sources, n_jobs=n_jobs, max_pixels=max_pixels)
    timings["image_stats_s"] = time.perf_counter() - t0
    skipped = list(ds.skipped) + list(stats.errors)
    if not stats.ok.any():
        raise DataError(f"{ds.name}: none of the {len(ds)} images could be read"
                        + (f", e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""))
    log(f"read {int(stats.ok.sum())} of {len(ds)} images in {timings['image_stats_s']:.1f} s")
    return stats, skipped


def _needs_embeddings(checks: Sequence[str], oof, n_ok: int) -> bool:
    """Whether any requested check needs the embeddings (labels from a given ``oof`` alone do not)."""
    return bool({"duplicates", "outliers", "labels"} & set(checks)) and not (set(checks) == {"labels"} and oof is not None) \
        and not (set(checks) <= {"quality", "duplicates"} and n_ok < 2)


def _embed(ds: ImageDataset, spec, ok_rows: np.ndarray, skipped: list, seed: int, n_jobs, max_pixels,
           timings: dict[str, float]):
    """``(pipeline, embeddings, rows embedded, skipped)`` for the readable rows ``ok_rows``."""
    from ..models import FeaturePipeline

    t0 = time.perf_counter()
    pipe = FeaturePipeline(",".join(spec.features), spec.classifier, seed=seed, n_jobs=n_jobs, max_pixels=max_pixels)
    pipe.fit_extractor([ds.sources[i] for i in ok_rows])
    feats = pipe.features([ds.sources[i] for i in ok_rows], f"features ({','.join(spec.features)})")
    ok_rows = ok_rows[feats.ok]
    timings["features_s"] = time.perf_counter() - t0
    skipped = skipped + [e for e in feats.errors if e[0] not in {p for p, _ in skipped}]
    return pipe, feats.X, ok_rows, skipped


def _near_duplicates(E: np.ndarray, ok_rows: np.ndarray, stats, exact: list[list[int]],
                     limits: DuplicateLimits | None, timings: dict[str, float]):
    """Near-duplicate pairs among the embedded rows (exact duplicates left out), as dataset rows."""
    t0 = time.perf_counter()
    exclude = {(min(a, b), max(a, b)) for g in exact for a in g for b in g if a != b}
    okset = set(ok_rows.tolist())
    local = {(int(np.searchsorted(ok_rows, a)), int(np.searchsorted(ok_rows, b))) for a, b in exclude
             if a in okset and b in okset} or None
    nd = near_duplicates(E, stats.thumbs[ok_rows], limits, exclude=local)
    nd.pairs = ok_rows[nd.pairs] if len(nd.pairs) else nd.pairs
    timings["near_duplicates_s"] = time.perf_counter() - t0
    return nd


def _outlier_method(method: str, pipe, spec, notes: list[str]) -> str:
    """Resolve ``auto``/``layers`` to ``layers`` when the features are one EfficientNet-Lite embedding, else ``lof``."""
    if method not in ("auto", "layers"):
        return method
    backbone = getattr(pipe.extractor, "backbone", None) if len(spec.features) == 1 else None
    if backbone in LAYER_CHANNELS and getattr(pipe.extractor, "output", "") == "embedding":
        return "layers"
    if method == "layers":
        notes.append(f"outliers: --outlier-method layers needs an EfficientNet-Lite backbone "
                     f"({', '.join(LAYER_CHANNELS)}) as the features; used lof")
    return "lof"


def _outliers(ds: ImageDataset, E: np.ndarray, ok_rows: np.ndarray, y, q: dict, pipe, spec, outlier_method: str,
              seed: int, n_jobs, max_pixels, notes: list[str], timings: dict[str, float]):
    """``(outlier score per dataset row, the method used)``; NaN where an image was not scored."""
    t0 = time.perf_counter()
    method = _outlier_method(outlier_method, pipe, spec, notes)
    score = np.full(len(ds), np.nan)
    if method == "layers":
        L, lok = layer_statistics([ds.sources[i] for i in ok_rows], pipe.extractor, pipe.preprocess,
                                  n_jobs=n_jobs, max_pixels=max_pixels)
        if len(L) >= 5:
            rows = ok_rows[lok]
            s, _ = layer_outlier_scores(L, LAYER_CHANNELS[pipe.extractor.backbone], seed)
            flagged = np.zeros(len(ds), bool)  # images with a quality issue: not positives of the refinement
            for found in q.values():
                flagged[[i for i, *_ in found]] = True
            score[rows] = refine_outlier_scores(s, L, eligible=~flagged[rows], seed=seed)
    else:
        s, _, _ = outlier_scores(E, None if y is None else y[ok_rows], method, seed)
        score[ok_rows] = s
    # A blurred photo is reported once, as blurry: its texture statistics are unusual for the
    # same reason, and ranking it among the outliers would push out images whose content is.
    score[[i for i, *_ in q.get("blurry", [])]] = np.nan
    timings["outliers_s"] = time.perf_counter() - t0
    return score, method


def _oof_probabilities(ds: ImageDataset, E: np.ndarray, ok_rows: np.ndarray, y: np.ndarray, pipe, folds: int,
                       seed: int, n_jobs, notes: list[str]):
    """Out-of-fold class probabilities of ``pipe``'s classifier on the embeddings, NaN rows where none."""
    lab = y[ok_rows] >= 0
    counts = np.bincount(y[ok_rows][lab], minlength=len(ds.classes))
    if (counts[counts > 0] < 2).any() or (counts > 0).sum() < 2:
        notes.append("label issues: every class needs at least 2 labelled images for out-of-fold predictions; skipped")
        return None
    pipe.classes_, pipe.task_ = list(ds.classes), "multiclass"
    Pl = out_of_fold_probabilities(E[lab], y[ok_rows][lab], lambda: pipe.new_classifier(y), folds, seed, n_jobs)
    P = np.full((len(ds), len(ds.classes)), np.nan)
    P[ok_rows[lab], :Pl.shape[1]] = Pl
    P[ok_rows[lab], Pl.shape[1]:] = 0.0
    return P


def _label_issues(ds: ImageDataset, E, ok_rows: np.ndarray, y: np.ndarray, pipe, oof, folds: int, seed: int,
                  n_jobs, notes: list[str], timings: dict[str, float]):
    """``(label issues, the probabilities they came from)`` by confident learning, either may be None."""
    t0 = time.perf_counter()
    issues, P = None, None
    if oof is not None:
        P = read_oof(oof, ds)
    elif E is not None:
        P = _oof_probabilities(ds, E, ok_rows, y, pipe, folds, seed, n_jobs, notes)
    if P is not None:
        Q = P
        if E is not None and len(E) > 20:
            # Blend in the labels of each image's nearest neighbours (30%): a second, local opinion
            # that catches flips the classifier's own probabilities miss.
            K = np.full_like(P, np.nan)
            K[ok_rows] = neighbour_vote(E, y[ok_rows], len(ds.classes))
            Q = np.where(np.isnan(K), P, 0.7 * P + 0.3 * K)
        issues = confident_learning(Q, y)
    timings["label_issues_s"] = time.perf_counter() - t0
    return issues, P


def _single_labels(ds: ImageDataset, notes: list[str]):
    """The targets when ``ds`` has one label per image, else None (with a note for multi-label data)."""
    if ds.is_labelled and ds.targets.ndim == 1:
        return ds.targets
    if ds.is_labelled:
        notes.append("multi-label data: label-issue search (confident learning) covers single-label tasks only; skipped")
    return None


def curate(data: ImageDataset | str | os.PathLike, *, model: str = "lite0+logreg", oof: str | os.PathLike | None = None,
           out: str | os.PathLike | None = None, folds: int = 5, seed: int = 0,
           outlier_method: str = "auto", outlier_z: float | None = None,
           quality: QualityLimits | None = None, duplicates: DuplicateLimits | None = None,
           checks: Sequence[str] = ("quality", "duplicates", "outliers", "labels"),
           n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
           log: Callable[[str], Any] = lambda m: None) -> CurationResult:
    """Curate ``data`` (a folder, CSV/JSONL file or dataset) and return a ``CurationResult``.

    Args:
        model: a ``FEATURES+CLASSIFIER`` method spec. Its features are the embeddings used for
            near-duplicates and outliers; its classifier gives the out-of-fold probabilities for
            label issues (``folds``-fold, on those features). Deep fine-tuned models: run
            ``imgclass cv`` and pass its ``oof.csv`` as ``oof``.
        oof: out-of-fold probabilities from ``imgclass cv`` (used instead of fitting ``model``'s classifier).
        outlier_method: ``auto`` (``layers`` when ``model``'s features are an EfficientNet-Lite
            backbone such as lite0, else ``lof``), ``layers`` (multi-layer statistics of that backbone
            plus an object-centred layout check: one more backbone pass, cached on disk; see
            ``outliers.layer_outlier_scores``), ``lof`` or ``iforest`` (on the embeddings);
            ``outlier_z``: the score above which an image is reported as an outlier (the full ranking
            is in ``stats.csv``); default ``outliers.DEFAULT_Z`` of the method (``layers``: 3.25 on its
            normal-score scale; ``lof``/``iforest``: 4 robust z-scores).
        checks: which detector families to run.
        out: when given, ``result.write(out)``.
    """
    t_all = time.perf_counter()
    spec = _check_options(model, outlier_method, checks)
    ds = _as_dataset(data)
    if len(ds) == 0:
        raise DataError(f"{ds.name}: no images to curate")
    timings: dict[str, float] = {}
    notes: list[str] = []
    stats, skipped = _read_images(ds, n_jobs, max_pixels, timings, log)
    q = quality_issues(stats, quality) if "quality" in checks else {}
    exact = exact_groups(stats.sha256) if "duplicates" in checks else []

    E, pipe, ok_rows = None, None, np.flatnonzero(stats.ok)
    if _needs_embeddings(checks, oof, len(ok_rows)):
        pipe, E, ok_rows, skipped = _embed(ds, spec, ok_rows, skipped, seed, n_jobs, max_pixels, timings)
    near = None
    if "duplicates" in checks and E is not None and len(E) > 1:
        near = _near_duplicates(E, ok_rows, stats, exact, duplicates, timings)
    y = _single_labels(ds, notes)
    score, used_method = None, outlier_method
    if "outliers" in checks and E is not None and len(E) >= 5:
        score, used_method = _outliers(ds, E, ok_rows, y, q, pipe, spec, outlier_method, seed, n_jobs, max_pixels,
                                       notes, timings)
    issues, P = None, None
    if "labels" in checks and y is not None:
        issues, P = _label_issues(ds, E, ok_rows, y, pipe, oof, folds, seed, n_jobs, notes, timings)
    timings["total_s"] = time.perf_counter() - t_all
    res = CurationResult(dataset=ds, stats=stats, quality=q, exact=exact, near=near, outlier_score=score,
                         outlier_z=DEFAULT_Z.get(used_method, 4.0) if outlier_z is None else outlier_z,
                         label_issues=issues, oof=P, features=",".join(spec.features),
                         timings=timings, notes=notes, skipped=skipped, embeddings=E,
                         embedded_rows=ok_rows if E is not None else None)
    _finish(res, ds, notes, log)
    if out is not None:
        res.write(out)
    return res


def _finish(res: CurationResult, ds: ImageDataset, notes: list[str], log) -> None:
    """Note the classes too small to judge and log what was found."""
    counts = {k: v for k, v in res.counts().items() if v}
    small = [c for c, k in (ds.class_counts().items() if ds.is_labelled else []) if k < 5]
    if small:
        notes.append(f"classes with fewer than 5 images: {', '.join(small)}")
    log("found " + (", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()) or "no issues"))


__all__ = ["DEFAULT_EXCLUDE", "EXCLUDE_CHOICES", "ISSUE_TYPES", "CurationResult", "curate", "read_oof"]
