"""Per task kind: the decision rule (``decision.Decision``) and the metrics.

Binary decides with a threshold on the positive class tuned on validation, multiclass by argmax,
multilabel by per-class thresholds, hierarchical by a consistent top-down path (``hierarchy``).
Metrics come from scikit-learn, plus hierarchical ones from ``hierarchy``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def decide(task: str, P: np.ndarray, thresholds: Sequence[float] | None = None) -> np.ndarray:
    """Turn probabilities into predictions with default rules: class indices, or a 0/1 matrix for
    multilabel (``Decision.predicted_indices`` applies a model's tuned rule)."""
    from .decision import Decision

    return Decision(task=task, classes=[str(i) for i in range(P.shape[1])],
                    thresholds=list(thresholds) if thresholds is not None else None).predicted_indices(P)


def single_label_metrics(y: np.ndarray, P: np.ndarray, classes: Sequence[str],
                         top_k: Sequence[int] = (3, 5), pred: np.ndarray | None = None) -> dict[str, Any]:
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
    pred = P.argmax(axis=1) if pred is None else pred
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
            thresholds: Sequence[float] | None = None, decision=None) -> dict[str, Any]:
    """All metrics for ``task`` under ``decision`` (a ``Decision``; default rules when ``None``).
    Rows with NaN probabilities (unreadable images) must be removed first."""
    from .decision import Decision

    if decision is None:
        decision = Decision(task=task, classes=list(classes),
                            thresholds=list(thresholds) if thresholds is not None else None)
    if task == "multilabel":
        out = multilabel_metrics(targets, P, classes, decision.thresholds)
        if decision.thresholds is not None and any(t != 0.5 for t in decision.thresholds):
            at_half = multilabel_metrics(targets, P, classes, None)
            out["at_0.5"] = {k: at_half[k] for k in ("micro_f1", "macro_f1", "samples_f1", "subset_accuracy")}
        out["thresholds"] = list(decision.thresholds) if decision.thresholds is not None else [0.5] * len(classes)
        if len(targets):  # per-label ROC and precision-recall curves, AUC and AP
            from .thresholds import binary_curves

            curves = {}
            for j, (c, row) in enumerate(zip(classes, out["per_class"])):
                cj = binary_curves(targets[:, j].astype(int), P[:, j])
                row.update({"roc_auc": cj["roc_auc"], "average_precision": cj["average_precision"],
                            "threshold": out["thresholds"][j]})
                curves[c] = {"roc": cj["roc"], "pr": cj["pr"]}
            out["label_curves"] = curves
            aucs = [r["roc_auc"] for r in out["per_class"] if not np.isnan(r["roc_auc"])]
            out["macro_roc_auc"] = float(np.mean(aucs)) if aucs else float("nan")
            from .calibration import calibration_bins

            out["ece"] = calibration_bins(task, targets, P)["ece"]
        return out
    lab = targets >= 0
    y, P = targets[lab], P[lab]
    out = single_label_metrics(y, P, classes, pred=decision.predicted_indices(P) if len(P) else None)
    if len(y):
        from .calibration import calibration_bins

        out["ece"] = calibration_bins(task, y, P)["ece"]
    if task == "binary" and len(classes) == 2:
        from .thresholds import binary_curves

        pos = decision.positive_index
        curves = binary_curves((y == pos).astype(int), P[:, pos])
        pc = out["per_class"][pos]
        out.update({"positive": classes[pos], "threshold": decision.threshold if decision.threshold is not None else 0.5,
                    "roc_auc": curves["roc_auc"], "average_precision": curves["average_precision"],
                    "precision": pc["precision"], "recall": pc["recall"], "f1": pc["f1"],
                    "curves": {"roc": curves["roc"], "pr": curves["pr"]}})
    if task == "hierarchical":
        from .hierarchy import hierarchical_metrics, node_probabilities

        tree = decision.tree()
        h = hierarchical_metrics(tree, y, node_probabilities(tree, P), decision.min_confidence)
        out["hierarchy"] = h
        for d, acc in enumerate(h["level_accuracy"], 1):
            out[f"level{d}_accuracy"] = acc
        out["hierarchical_f1"] = h["hierarchical_f1"]
        out["mistake_severity"] = h["mistake_severity"]
    return out


HEADLINE = {"multilabel": ("micro_f1", "macro_f1", "mAP", "subset_accuracy"),
            "binary": ("accuracy", "balanced_accuracy", "f1", "roc_auc", "average_precision"),
            "hierarchical": ("accuracy", "level1_accuracy", "level2_accuracy", "hierarchical_f1", "mistake_severity"),
            "default": ("accuracy", "balanced_accuracy", "macro_f1", "top3_accuracy")}


def headline(task: str, m: dict[str, Any]) -> dict[str, float]:
    """The few scalar metrics worth printing on one line."""
    keys = HEADLINE.get(task, HEADLINE["default"])
    return {k: m[k] for k in keys if k in m}
