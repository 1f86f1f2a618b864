"""Clustering scores against known labels: accuracy under the best cluster-to-class matching, NMI and ARI."""

from __future__ import annotations

import numpy as np

#: the cluster id of images an algorithm leaves out (DBSCAN, HDBSCAN)
NOISE = -1


def cluster_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Clustering accuracy: the share of images whose cluster is matched to their class, with clusters
    and classes paired one-to-one to maximise it (Hungarian algorithm). Noise (``-1``) and clusters
    left without a class count as errors."""
    from scipy.optimize import linear_sum_assignment

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        return float("nan")
    classes, t = np.unique(y_true, return_inverse=True)
    clusters = np.unique(y_pred[y_pred != NOISE])
    if len(clusters) == 0:
        return 0.0
    C = np.zeros((len(clusters), len(classes)), dtype=np.int64)
    pos = {c: i for i, c in enumerate(clusters)}
    for p, ti in zip(y_pred, t):
        if p != NOISE:
            C[pos[p], ti] += 1
    rows, cols = linear_sum_assignment(-C)
    return float(C[rows, cols].sum() / len(y_true))


def clustering_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """ACC (Hungarian matching), NMI and ARI of cluster ids against class ids (noise is its own group
    for NMI/ARI and an error for ACC)."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"acc": cluster_accuracy(y_true, y_pred), "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
            "ari": float(adjusted_rand_score(y_true, y_pred))}
