"""Likely label errors by confident learning (Northcutt, Jiang & Chuang, JAIR 2021) on out-of-fold
predicted probabilities.

Written here rather than taken from cleanlab, which is AGPL-3.0 licensed (imgclass is not); the
method is short. For every class ``j`` the threshold ``t_j`` is the mean predicted probability of
``j`` over the images labelled ``j`` (the model's self-confidence on that class). An image's
*confident label* is its most probable class among those whose probability reaches their threshold.
The confident joint counts (given label, confident label) pairs; ``prune_by_noise_rate`` then flags,
for each off-diagonal cell ``(i, j)`` with ``n`` images, the ``n`` images labelled ``i`` with the
largest margin ``p_j - p_i``. Suspects (flagged, or not predicted as their given label) are ranked by
self-confidence (the probability of their given label), lowest first; the suggested label is the most
probable other class. Only flagged images are excluded by ``export_clean``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class LabelIssues:
    rows: np.ndarray  # suspects: rows whose given label is not the most probable, or flagged; most suspicious first
    self_confidence: np.ndarray  # p(given label) of those rows
    suggested: np.ndarray  # suggested class index per suspect
    suggested_probability: np.ndarray
    flagged: np.ndarray  # bool per suspect: confident learning flags it (these are the ones excluded)
    thresholds: np.ndarray  # per-class t_j
    confident_joint: np.ndarray  # (C, C) counts, rows = given label, cols = confident label
    ranking: np.ndarray  # every scored row, most suspicious first (flagged or not)


def confident_learning(P: np.ndarray, y: np.ndarray) -> LabelIssues:
    """Find likely label errors from out-of-fold probabilities ``P`` (n, C) and given labels ``y`` (n,)
    (rows with a NaN probability or ``y < 0`` are ignored)."""
    P = np.asarray(P, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    n, C = P.shape
    valid = (y >= 0) & ~np.isnan(P).any(axis=1)
    idx = np.flatnonzero(valid)
    Pv, yv = P[idx], y[idx]
    thr = np.array([Pv[yv == j, j].mean() if np.any(yv == j) else 1.0 for j in range(C)])
    above = Pv >= thr[None, :] - 1e-12
    masked = np.where(above, Pv, -np.inf)
    confident = np.where(above.any(axis=1), masked.argmax(axis=1), -1)
    cj = np.zeros((C, C), np.int64)
    np.add.at(cj, (yv[confident >= 0], confident[confident >= 0]), 1)
    flagged = np.zeros(len(idx), bool)
    for i in range(C):
        for j in range(C):
            if i == j or cj[i, j] == 0:
                continue
            rows = np.flatnonzero(yv == i)
            margin = Pv[rows, j] - Pv[rows, i]
            take = rows[np.argsort(-margin, kind="stable")[:cj[i, j]]]
            flagged[take[Pv[take, j] > Pv[take, i]]] = True  # only where the other class is more probable
    sc = Pv[np.arange(len(idx)), yv]
    other = Pv.copy()
    other[np.arange(len(idx)), yv] = -np.inf
    sug = other.argmax(axis=1)
    order = np.argsort(sc, kind="stable")
    suspect = flagged | (Pv.argmax(axis=1) != yv)
    f = order[suspect[order]]
    return LabelIssues(rows=idx[f], self_confidence=sc[f], suggested=sug[f], suggested_probability=Pv[f, sug[f]],
                       flagged=flagged[f], thresholds=thr, confident_joint=cj, ranking=idx[order])


def neighbour_vote(E: np.ndarray, y: np.ndarray, n_classes: int, k: int = 20) -> np.ndarray:
    """``(n, C)`` class distribution among each row's ``k`` nearest neighbours by cosine similarity
    (FAISS; the row itself left out; weights = similarity cubed). Rows with ``y < 0`` do not vote."""
    import faiss

    X = np.ascontiguousarray(E, dtype=np.float32)
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    voters = np.flatnonzero(y >= 0)
    k = int(min(k, len(voters) - 1))
    out = np.zeros((len(X), n_classes))
    if k < 1:
        return out
    index = faiss.IndexFlatIP(X.shape[1]) if len(voters) < 5000 else faiss.IndexHNSWFlat(X.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    index.add(X[voters])
    D, nb = index.search(X, k + 1)
    self_hit = voters[np.clip(nb, 0, None)] == np.arange(len(X))[:, None]
    w = np.where((nb >= 0) & ~self_hit, np.maximum(D, 0) ** 3, 0.0)
    labels = y[voters[np.clip(nb, 0, None)]]
    for c in range(n_classes):
        out[:, c] = ((labels == c) * w).sum(axis=1)
    return out / np.maximum(out.sum(axis=1, keepdims=True), 1e-12)


def out_of_fold_probabilities(F: np.ndarray, y: np.ndarray, make_classifier, folds: int = 5, seed: int = 0,
                              n_jobs: int | None = None) -> np.ndarray:
    """Stratified k-fold out-of-fold ``predict_proba`` of ``make_classifier()`` on features ``F``
    (scikit-learn's ``cross_val_predict``); classes with fewer images than folds get fewer folds."""
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    counts = np.bincount(y)
    k = int(max(2, min(folds, counts[counts > 0].min())))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    P = cross_val_predict(make_classifier(), F, y, cv=cv, method="predict_proba", n_jobs=n_jobs)
    full = np.zeros((len(y), int(y.max()) + 1))
    full[:, np.unique(y)] = P
    return full


__all__ = ["LabelIssues", "confident_learning", "neighbour_vote", "out_of_fold_probabilities"]
