"""Clustering images: features → L2 → PCA/UMAP → a scikit-learn algorithm, as a ``ClusterResult`` (``cluster``).

>>> from imgclass.learning.cluster import cluster                            # doctest: +SKIP
>>> res = cluster("photos/", features="lite0", algo="kmeans", k="auto", out="runs/clusters")  # doctest: +SKIP
>>> model = res.name("few_labels.csv"); model.save("runs/clusters/model")    # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..._util import progress_bar
from ...data import ImageDataset, from_paths, load_dataset
from ...data.decode import DEFAULT_MAX_PIXELS
from ...errors import ConfigError, DataError
from .algorithms import (
    ALGORITHMS,
    REDUCTIONS,
    SELF_K,
    _fit_labels,
    _reduce_steps,
    _silhouette,
    cluster_features,
    make_algorithm,
)
from .metrics import NOISE, cluster_accuracy, clustering_metrics
from .result import ClusterResult


def _scan_clusters(features: str) -> int | None:
    """The number of clusters a ``pretrain --method scan`` or ``selflabel`` run in ``features`` was trained
    for, else None."""
    from ...features.backbones import pretrained_dir, read_pretrained_dir
    from ..selfsup.config import CLUSTER_METHODS

    folder = pretrained_dir(features)
    if folder is None:
        return None
    info = read_pretrained_dir(folder)
    return int(info["config"]["clusters"]) if info.get("method") in CLUSTER_METHODS else None


def _as_dataset(data) -> ImageDataset:
    if isinstance(data, ImageDataset):
        return data
    if isinstance(data, (list, tuple)):
        return from_paths(data)
    return load_dataset(data)


def cluster(data: ImageDataset | str | os.PathLike | Sequence[str], features: str = "lite0", algo: str = "kmeans",
            k: int | str | None = None, *, reduce: str = "pca", dims: int | None = 50, whiten: bool = False,
            normalize: bool = True, seed: int = 0, out: str | os.PathLike | None = None,
            k_range: tuple[int, int] = (2, 20), params: dict[str, Any] | None = None,
            preprocess: Any = None, n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            log: Callable[[str], Any] = lambda m: None) -> ClusterResult:
    """Cluster the images of ``data`` (a folder — labelled by sub-folders or flat and unlabelled —, a
    CSV/JSONL file, an ``ImageDataset`` or a list of image paths).

    Args:
        features: feature spec as in method specs: ``lite0`` (frozen EfficientNet-Lite0 embeddings,
            cached on disk), ``hog``, ``color_hist``, ``pixels``, ``hog,color_hist``, ...
        algo: one of ``ALGORITHMS``.
        k: number of clusters; ``"auto"`` picks the ``k`` in ``k_range`` with the best silhouette
            (lowest BIC for ``gmm``); ``None`` means the number of classes for labelled data, else
            ``"auto"``. Must stay ``None``/``"auto"`` for ``dbscan``, ``hdbscan`` and ``meanshift``.
        reduce, dims, whiten: ``pca`` (default) to ``dims`` components, ``umap`` (needs umap-learn) or
            ``none``; ``whiten`` scales the PCA components to unit variance (then re-normalises rows).
        normalize: L2-normalise each feature row first (cosine geometry).
        params: extra keyword arguments for the scikit-learn algorithm (e.g. ``{"eps": 0.3}``).
        preprocess: a ``Preprocess`` or its dict (default: the features' own pre-processing).
        out: when given, ``ClusterResult.write(out)`` is called.

    Unreadable images are skipped and listed in ``result.skipped``. User errors raise ``ConfigError``
    or ``DataError`` naming the option and what to do.
    """
    from ...features import extractor_names

    algo, k, lo, hi = _check_options(algo, k, reduce, dims, k_range)
    ds = _as_dataset(data)
    if isinstance(k, int) and k > len(ds):
        raise ConfigError(f"--k {k}: {ds.name} has only {len(ds)} images; choose at most {len(ds)}")
    extractor, pipe, feats, skipped = _features(ds, features, k, preprocess, seed, n_jobs, max_pixels)
    n = len(feats.X)
    sources = [s for s, good in zip(ds.sources, feats.ok) if good]
    notes: list[str] = []
    truth, classes, y = _truth(ds, feats.ok, notes)
    k = _default_k(k, algo, y, n, ds.name, features, notes)

    steps = _reduce_steps(feats.X.astype(np.float64), reduce, dims, whiten, normalize, seed, notes)
    Z = feats.X.astype(np.float64)
    for _, s in steps:
        Z = s.transform(Z)
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    used_dims = Z.shape[1]

    k_curve = None
    if k == "auto":
        labels, k_curve = _choose_k(algo, Z, lo, hi, seed, params, ds.name, log)
    else:
        labels, _ = _fit_labels(algo, k, Z, seed, params)
    labels, n_clusters = _relabel_by_size(labels)
    centers = (np.stack([Z[labels == c].mean(axis=0) for c in range(n_clusters)]) if n_clusters
               else np.zeros((0, used_dims)))
    if n_clusters == 0:
        notes.append(f"{algo} put every image in noise; loosen it with --param (e.g. a larger eps)")

    res = ClusterResult(labels_=labels, cluster_centers_=centers, embedding_=Z, k=n_clusters, algo=algo,
                        features=",".join(extractor_names(extractor)),
                        reduce=reduce, dims=used_dims if reduce != "none" else None, seed=seed, sources=sources,
                        truth=truth, classes=classes, metrics=_metrics(Z, labels, y, seed), k_curve=k_curve,
                        skipped=skipped, notes=notes, data_name=ds.name, _pipeline=pipe, _steps=steps)
    if out is not None:
        res.write(out)
    return res


def _check_options(algo: str, k, reduce: str, dims: int | None, k_range: tuple[int, int]):
    """``(algo, k, k-min, k-max)`` normalised, after checking the options a user can get wrong."""
    algo = (algo or "").strip().lower()
    if algo not in ALGORITHMS:
        raise ConfigError(f"--algo {algo or '(empty)'}: unknown algorithm; choose from {', '.join(ALGORITHMS)}")
    if reduce not in REDUCTIONS:
        raise ConfigError(f"--reduce {reduce}: choose none, pca or umap")
    if dims is not None and int(dims) < 1:
        raise ConfigError(f"--dims {dims}: give a positive number of dimensions (e.g. 50)")
    if isinstance(k, str) and k != "auto":
        try:
            k = int(k)
        except ValueError:
            raise ConfigError(f"--k {k}: give a number of clusters (e.g. 10) or 'auto'") from None
    if algo in SELF_K and isinstance(k, int):
        raise ConfigError(f"--k {k}: {algo} finds the number of clusters itself; drop --k (tune it with "
                          f"{'--param eps=...' if algo == 'dbscan' else '--param min_cluster_size=...' if algo == 'hdbscan' else '--param bandwidth=...'})")
    if isinstance(k, int) and k < 2:
        raise ConfigError(f"--k {k}: give at least 2 clusters")
    lo, hi = (int(v) for v in k_range)
    if lo < 2 or hi < lo:
        raise ConfigError(f"k range {lo}..{hi}: needs 2 <= k-min <= k-max")
    return algo, k, lo, hi


def _features(ds: ImageDataset, features: str, k, preprocess, seed: int, n_jobs, max_pixels):
    """``(extractor, pipeline, features, skipped)`` of ``ds``; fails when fewer than 2 (or ``k``) images are readable."""
    from ...features import make_extractor
    from ...models import FeaturePipeline
    from ...transforms import Preprocess

    try:
        extractor = make_extractor(features)
    except ConfigError as exc:
        raise ConfigError(f"--features {features}: {exc}") from None
    if preprocess is not None and not isinstance(preprocess, Preprocess):
        preprocess = Preprocess.from_dict(preprocess)
    pipe = FeaturePipeline(extractor, "logreg", preprocess=preprocess, seed=seed, n_jobs=n_jobs,
                           max_pixels=max_pixels)
    pipe.fit_extractor(ds.sources)
    feats = pipe.features(ds.sources, f"features ({features})")
    skipped = list(ds.skipped) + list(feats.errors)
    n = len(feats.X)
    if n < 2:
        raise DataError(f"{ds.name}: {n} readable image{'s' if n != 1 else ''} of {len(ds)}; clustering needs at "
                        "least 2 (see the skipped files)" + (f", e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""))
    if isinstance(k, int) and k > n:
        raise ConfigError(f"--k {k}: only {n} of the {len(ds)} images are readable; choose at most {n}")
    return extractor, pipe, feats, skipped


def _truth(ds: ImageDataset, ok: np.ndarray, notes: list[str]):
    """``(class name per readable image, classes, class index per readable image)`` for single-label data."""
    truth, classes, y = None, list(ds.classes), None
    if ds.is_labelled and ds.targets.ndim == 1:
        t = ds.targets[ok]
        truth = [classes[int(v)] if v >= 0 else None for v in t]
        y = t
    elif ds.is_labelled:
        notes.append("labels are multi-label: ACC/NMI/ARI need one label per image and are not computed")
    return truth, classes, y


def _default_k(k, algo: str, y, n: int, data_name: str, features: str, notes: list[str]):
    """``k`` when given; else the number of classes, the pretrain run's ``--clusters`` or ``"auto"``."""
    if k is None and algo not in SELF_K:
        n_cls = len(np.unique(y[y >= 0])) if y is not None else 0
        if 2 <= n_cls < n:
            k = n_cls
            notes.append(f"k = {k}: the number of classes in {data_name} (use --k auto to choose it by "
                         f"{'BIC' if algo == 'gmm' else 'silhouette'})")
        elif scan_k := _scan_clusters(features):
            k = scan_k
            notes.append(f"k = {k}: the --clusters of the pretrain run {features} (use --k auto to choose it by "
                         f"{'BIC' if algo == 'gmm' else 'silhouette'})")
        else:
            k = "auto"
    if algo in SELF_K and k == "auto":
        notes.append(f"{algo} finds the number of clusters itself; k=auto is not needed")
        k = None
    return k


def _choose_k(algo: str, Z: np.ndarray, lo: int, hi: int, seed: int, params, data_name: str, log):
    """``(labels, k curve)`` for the ``k`` in ``lo..hi`` with the best silhouette (lowest BIC for ``gmm``)."""
    n = len(Z)
    ks = list(range(lo, min(hi, n - 1) + 1))
    if not ks:
        raise ConfigError(f"--k auto: {n} images are too few to compare k = {lo}..{hi}; give --k")
    crit = "bic" if algo == "gmm" else "silhouette"
    scores, fits = [], {}
    with progress_bar(len(ks), f"choosing k ({crit})", unit="k") as bar:
        for kk in ks:
            labels, est = _fit_labels(algo, kk, Z, seed, params)
            fits[kk] = labels
            scores.append(float(est.bic(Z)) if crit == "bic" else _silhouette(Z, labels, seed))
            bar.advance(1)
    valid = [(s, kk) for s, kk in zip(scores, ks) if s is not None]
    if not valid:
        raise DataError(f"--k auto: no k in {lo}..{hi} gave a usable {crit} on {data_name}; give --k")
    best_k = (min(valid) if crit == "bic" else max(valid, key=lambda t: (t[0], -t[1])))[1]
    log(f"k = {best_k} by {crit}")
    return fits[best_k], {"criterion": crit, "k": ks, "score": scores, "chosen": best_k}


def _relabel_by_size(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Renumber clusters so 0 is the largest, then by size (noise stays -1); also returns their number."""
    ids, counts = np.unique(labels[labels != NOISE], return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    remap = {int(old): new for new, old in enumerate(order)}
    return np.asarray([remap.get(int(v), NOISE) for v in labels], dtype=np.int64), len(order)


def _metrics(Z: np.ndarray, labels: np.ndarray, y, seed: int) -> dict[str, Any]:
    """Cluster count, noise and silhouette, plus ACC/NMI/ARI against the labelled images' classes."""
    n_clusters = len(np.unique(labels[labels != NOISE]))
    metrics: dict[str, Any] = {"n": len(Z), "k": n_clusters, "noise": int((labels == NOISE).sum()),
                               "silhouette": _silhouette(Z, labels, seed)}
    if y is not None and (y >= 0).any():
        lab = y >= 0
        metrics.update(clustering_metrics(y[lab], labels[lab]))
        metrics["n_labelled"] = int(lab.sum())
        metrics["classes"] = len(np.unique(y[lab]))
    return metrics

__all__ = ["ALGORITHMS", "REDUCTIONS", "SELF_K", "ClusterResult", "cluster", "cluster_accuracy", "cluster_features",
           "clustering_metrics", "make_algorithm"]
