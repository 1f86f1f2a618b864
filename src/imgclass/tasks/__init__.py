"""Per task type: the decision rule and the metrics.

Binary and multiclass decide by argmax (the binary-threshold issue adds tuned thresholds);
multilabel by per-class thresholds (0.5 unless tuned); hierarchical (flat strategy) by the arg-max
leaf. Metrics come from scikit-learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def decide(task: str, P: np.ndarray, thresholds: Sequence[float] | None = None) -> np.ndarray:
    """Turn probabilities into predictions: class indices, or a 0/1 matrix for multilabel."""
    if task == "multilabel":
        t = np.asarray(thresholds if thresholds is not None else [0.5] * P.shape[1])
        return (P >= t[None, :]).astype(np.uint8)
    return P.argmax(axis=1)


def single_label_metrics(y: np.ndarray, P: np.ndarray, classes: Sequence[str],
                         top_k: Sequence[int] = (3, 5)) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro/weighted P/R/F1, top-k, log loss, per-class table, confusion."""
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        confusion_matrix,
        log_loss,
        precision_recall_fscore_support,
        top_k_accuracy_score,
    )

    n_classes = len(classes)
    labels = np.arange(n_classes)
    pred = P.argmax(axis=1)
    out: dict[str, Any] = {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(y) else float("nan"),
    }
    for avg in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(y, pred, labels=labels, average=avg, zero_division=0)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = float(p), float(r), float(f)
    for k in top_k:
        if k < n_classes:
            out[f"top{k}_accuracy"] = float(top_k_accuracy_score(y, P, k=k, labels=labels))
    Pc = np.clip(P, 1e-15, 1.0)
    out["log_loss"] = float(log_loss(y, Pc / Pc.sum(axis=1, keepdims=True), labels=labels))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    out["per_class"] = [
        {"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(classes)
    ]
    out["confusion"] = confusion_matrix(y, pred, labels=labels).tolist()
    return out


def multilabel_metrics(Y: np.ndarray, P: np.ndarray, classes: Sequence[str],
                       thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """Micro/macro/samples F1, mAP, Hamming loss, subset accuracy and a per-label table."""
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        hamming_loss,
        precision_recall_fscore_support,
    )

    pred = decide("multilabel", P, thresholds)
    out: dict[str, Any] = {"n": int(len(Y)), "subset_accuracy": float(accuracy_score(Y, pred)),
                           "hamming_loss": float(hamming_loss(Y, pred))}
    for avg in ("micro", "macro", "samples"):
        out[f"{avg}_f1"] = float(f1_score(Y, pred, average=avg, zero_division=0))
    has_pos = Y.sum(axis=0) > 0
    out["mAP"] = float(average_precision_score(Y[:, has_pos], P[:, has_pos], average="macro")) if has_pos.any() else float("nan")
    p, r, f, s = precision_recall_fscore_support(Y, pred, zero_division=0)
    out["per_class"] = [
        {"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, c in enumerate(classes)
    ]
    return out


def metrics(task: str, targets: np.ndarray, P: np.ndarray, classes: Sequence[str],
            thresholds: Sequence[float] | None = None) -> dict[str, Any]:
    """All metrics for ``task``. Rows with NaN probabilities (unreadable images) must be removed first."""
    if task == "multilabel":
        return multilabel_metrics(targets, P, classes, thresholds)
    lab = targets >= 0
    return single_label_metrics(targets[lab], P[lab], classes)


HEADLINE = {"multilabel": ("micro_f1", "macro_f1", "mAP", "subset_accuracy"),
            "default": ("accuracy", "balanced_accuracy", "macro_f1", "top3_accuracy")}


def headline(task: str, m: dict[str, Any]) -> dict[str, float]:
    """The few scalar metrics worth printing on one line."""
    keys = HEADLINE.get(task, HEADLINE["default"])
    return {k: m[k] for k in keys if k in m}
