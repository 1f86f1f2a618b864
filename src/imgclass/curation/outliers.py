"""Outliers on embeddings: scikit-learn's LocalOutlierFactor or IsolationForest, over the whole set and
within each class; an image's score is the larger of its two robust z-scores."""

from __future__ import annotations

import numpy as np

from .quality import robust_z

METHODS = ("lof", "iforest")


def _scores(Z: np.ndarray, method: str, seed: int) -> np.ndarray:
    """Higher = more outlying."""
    n = len(Z)
    if n < 5:
        return np.zeros(n)
    if method == "lof":
        from sklearn.neighbors import LocalOutlierFactor

        return -LocalOutlierFactor(n_neighbors=int(min(20, n - 1))).fit(Z).negative_outlier_factor_
    from sklearn.ensemble import IsolationForest

    return -IsolationForest(random_state=seed).fit(Z).score_samples(Z)


def reduce_embeddings(E: np.ndarray, dims: int = 64, seed: int = 0) -> np.ndarray:
    """L2-normalise, then PCA to at most ``dims`` components (scikit-learn)."""
    from sklearn.decomposition import PCA

    X = np.asarray(E, dtype=np.float64)
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    d = int(min(dims, X.shape[1], max(1, len(X) - 1)))
    return PCA(n_components=d, random_state=seed).fit_transform(X) if d < X.shape[1] else X


def outlier_scores(E: np.ndarray, y: np.ndarray | None = None, method: str = "lof", seed: int = 0,
                   min_class: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(score, global z, per-class z)`` per row. Per-class scores need ``y`` (int, -1 = unlabelled)
    and at least ``min_class`` images in the class; elsewhere they are NaN."""
    Z = reduce_embeddings(E, seed=seed)
    zg = robust_z(_scores(Z, method, seed))
    zc = np.full(len(Z), np.nan)
    if y is not None:
        for c in np.unique(y[y >= 0]):
            m = np.flatnonzero(y == c)
            if len(m) >= min_class:
                zc[m] = robust_z(_scores(Z[m], method, seed))
    return np.fmax(zg, zc), zg, zc


__all__ = ["METHODS", "outlier_scores", "reduce_embeddings"]
