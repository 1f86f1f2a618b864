"""Query strategies: how useful labelling each pool image would be, and the ``k`` most useful ones.

Every score is "higher = more useful"; see ``STRATEGIES`` for the list and ``select`` for what each needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...errors import ConfigError

#: strategy name -> one-line description
STRATEGIES: dict[str, str] = {
    "entropy": "entropy of the predicted probabilities (most uncertain first)",
    "margin": "smallest gap between the two most probable classes first",
    "least-confidence": "lowest top probability first",
    "coreset": "greedy k-center on the features: farthest from everything labelled first",
    "margin-kmeans": "margin with a diversity filter: the most uncertain image of each k-means cluster of the "
                     "10 x budget smallest-margin candidates",
    "random": "seeded random order (the baseline)",
}
UNCERTAINTY = ("entropy", "margin", "least-confidence")
NEEDS_PROBA = (*UNCERTAINTY, "margin-kmeans")
GEOMETRIC = ("coreset", "margin-kmeans")  # strategies that measure distances between features


def check_strategy(name: str, option: str = "--strategy") -> str:
    """Return the canonical strategy name or raise ``ConfigError`` naming ``option``."""
    key = (name or "").strip().lower().replace("_", "-")
    if key == "least-confident":
        key = "least-confidence"
    if key not in STRATEGIES:
        raise ConfigError(f"{option} {name!r}: unknown strategy; choose from {', '.join(STRATEGIES)}")
    return key


def uncertainty(proba: np.ndarray, strategy: str = "entropy") -> np.ndarray:
    """Uncertainty score per row of ``proba`` (``(n, n_classes)``), higher = less certain.

    >>> uncertainty(np.array([[0.5, 0.5], [0.9, 0.1]]), "margin").round(2)
    array([1. , 0.2])
    """
    P = np.clip(np.asarray(proba, dtype=np.float64), 0.0, 1.0)
    if strategy == "entropy":
        return -(P * np.log(np.where(P > 0, P, 1.0))).sum(axis=1)
    if strategy == "least-confidence":
        return 1.0 - P.max(axis=1)
    if strategy == "margin":
        if P.shape[1] < 2:
            return np.zeros(len(P))
        top2 = np.partition(P, -2, axis=1)[:, -2:]
        return 1.0 - (top2[:, 1] - top2[:, 0])
    raise ConfigError(f"strategy {strategy!r} is not an uncertainty strategy; choose from {', '.join(UNCERTAINTY)}")


def kcenter_greedy(pool: np.ndarray, labelled: np.ndarray | None, k: int,
                   chunk_bytes: int = 64 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Greedy k-center: ``k`` rows of ``pool``, each the farthest (Euclidean) from ``labelled`` and from
    the rows picked before it. Returns ``(indices, distance at the time of picking)``.

    Written by hand because no maintained library offers k-center greedy over an existing labelled set:
    scikit-learn has pairwise distances but not the selection, and the active-learning packages that do
    (modAL, ALiPy, baal) are unmaintained or tied to their own training loops. Distances to the labelled
    set are computed in chunks of about ``chunk_bytes`` so memory stays bounded; each pick then costs one
    matrix-vector product (``|a-b|^2 = |a|^2 - 2ab + |b|^2`` with cached norms, in float32, where scikit-learn's
    ``euclidean_distances`` upcasts chunk by chunk).
    """
    X = np.ascontiguousarray(pool, dtype=np.float32)
    n = len(X)
    k = min(int(k), n)
    sq = np.einsum("ij,ij->i", X, X)
    # with nothing labelled, the mean stands in for the labelled set: the first pick is the most extreme row
    L = np.ascontiguousarray(labelled if labelled is not None and len(labelled) else X.mean(axis=0, keepdims=True),
                             dtype=np.float32)
    sq_l = np.einsum("ij,ij->i", L, L)
    step = max(1, int(chunk_bytes) // (4 * len(L)))
    min_d2 = np.empty(n, dtype=np.float64)
    for s in range(0, n, step):
        d2 = sq[s:s + step, None] - 2.0 * (X[s:s + step] @ L.T) + sq_l[None, :]
        min_d2[s:s + step] = d2.min(axis=1)
    min_d2 = np.maximum(min_d2, 0.0)
    picked, dist = [], []
    for _ in range(k):
        j = int(np.argmax(min_d2))
        picked.append(j)
        dist.append(float(np.sqrt(min_d2[j])))
        d2 = np.maximum(sq - 2.0 * (X @ X[j]) + sq[j], 0.0)
        np.minimum(min_d2, d2, out=min_d2)
        min_d2[j] = -1.0  # never picked again
    return np.asarray(picked, dtype=np.int64), np.asarray(dist)


def diverse_margin(proba: np.ndarray, features: np.ndarray, k: int, beta: int = 10,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``margin-kmeans``: the ``beta * k`` smallest-margin rows, clustered into ``k`` groups by k-means
    (scikit-learn) weighted by their margin uncertainty; the most uncertain row of each group, most
    uncertain first. Returns ``(indices, margin uncertainty)``."""
    from sklearn.cluster import KMeans

    u = uncertainty(proba, "margin")
    k = min(int(k), len(u))
    cand = np.argsort(-u, kind="stable")[:min(len(u), beta * k)]
    if len(cand) <= k:
        return cand.astype(np.int64), u[cand]
    w = u[cand] / u[cand].max() if u[cand].max() > 0 else None
    X = np.asarray(features, dtype=np.float64)[cand]
    labels = KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(X, sample_weight=w)
    picks = [cand[labels == c][np.argmax(u[cand[labels == c]])] for c in range(k) if np.any(labels == c)]
    if len(picks) < k:  # k-means left a cluster empty (duplicates): top up with the next most uncertain
        taken = set(picks)
        picks += [j for j in cand if j not in taken][:k - len(picks)]
    idx = np.asarray(picks, dtype=np.int64)
    idx = idx[np.argsort(-u[idx], kind="stable")]
    return idx, u[idx]


def select(strategy: str, k: int, *, proba: np.ndarray | None = None, features: np.ndarray | None = None,
           labelled_features: np.ndarray | None = None, n: int | None = None,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Rank the pool and return ``(indices of the k most useful rows, most useful first; their scores)``.

    Uncertainty strategies need ``proba`` (the model's probabilities on the pool); ``coreset`` needs the
    pool's ``features`` and the ``labelled_features``; ``margin-kmeans`` needs ``proba`` and ``features``;
    ``random`` needs only the pool size ``n`` (or either array) and its scores are NaN.
    """
    strategy = check_strategy(strategy)
    if n is None:
        n = len(proba) if proba is not None else (len(features) if features is not None else None)
    if n is None:
        raise ConfigError(f"strategy {strategy}: give the pool's probabilities or features")
    k = min(int(k), n)
    if strategy == "random":
        idx = np.random.default_rng(seed).permutation(n)[:k]
        return idx.astype(np.int64), np.full(k, np.nan)
    if strategy == "coreset":
        if features is None:
            raise ConfigError("strategy coreset: needs the pool's features")
        return kcenter_greedy(features, labelled_features, k)
    if strategy == "margin-kmeans":
        if proba is None or features is None:
            raise ConfigError("strategy margin-kmeans: needs the model's probabilities and the pool's features")
        return diverse_margin(proba, features, k, seed=seed)
    if proba is None:
        raise ConfigError(f"strategy {strategy}: needs the model's probabilities on the pool")
    scores = uncertainty(proba, strategy)
    idx = np.argsort(-scores, kind="stable")[:k]
    return idx.astype(np.int64), scores[idx]


def _standardise(X: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per column (constant columns left at zero): the space coreset measures in,
    the same one the standardised linear classifiers see."""
    mu = X.mean(axis=0)
    sd = X.std(axis=0)
    sd[sd == 0] = 1.0
    return ((X - mu) / sd).astype(np.float32)


def geometry(F: np.ndarray, strategies: Sequence[str]) -> dict[str, np.ndarray]:
    """The feature space each geometric strategy measures distances in, computed once for all rows:
    standardised features for ``coreset``; their first 64 principal components for ``margin-kmeans``
    (in the full space, k-means distances are dominated by many low-variance dimensions)."""
    out: dict[str, np.ndarray] = {}
    if not any(s in GEOMETRIC for s in strategies):
        return out
    Z = _standardise(F)
    if "coreset" in strategies:
        out["coreset"] = Z
    if "margin-kmeans" in strategies:
        from sklearn.decomposition import PCA

        n = min(64, Z.shape[0], Z.shape[1])
        out["margin-kmeans"] = PCA(n_components=n, random_state=0).fit_transform(Z).astype(np.float32)
    return out

