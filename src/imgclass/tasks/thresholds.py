"""Decision thresholds: tune a binary threshold for an objective, per-label multilabel thresholds, and the
ROC / precision-recall curves stored in evaluation reports.

Every tuned threshold is an actual score value, so ``score >= threshold`` reproduces the reported
precision and recall exactly on the tuning data.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import ConfigError

OBJECTIVES = ("f1", "youden", "precision", "recall")
MAX_CURVE_POINTS = 200


def parse_objective(spec: str) -> tuple[str, float | None]:
    """``"f1"`` / ``"youden"`` → ``(name, None)``; ``"precision=P"`` / ``"recall=R"`` → ``(name, value)``."""
    text = str(spec).strip().lower()
    if text in ("f1", "youden"):
        return text, None
    name, sep, value = text.partition("=")
    name = name.strip()
    if sep and name in ("precision", "recall"):
        try:
            v = float(value)
        except ValueError:
            v = float("nan")
        if math.isfinite(v) and 0.0 < v <= 1.0:
            return name, v
    raise ConfigError(f"--threshold-for {spec!r}: use f1, youden, precision=P or recall=R with 0 < P, R <= 1")


def _clean_binary(y, score) -> tuple[np.ndarray, np.ndarray]:
    """Drop unlabelled rows (``y < 0``) and non-finite scores; return ``(bool y, float score)``."""
    y = np.asarray(y).ravel()
    score = np.asarray(score, dtype=np.float64).ravel()
    if y.shape != score.shape:
        raise ValueError(f"y has {y.size} values but score has {score.size}")
    keep = (y >= 0) & np.isfinite(score)
    y, score = y[keep], score[keep]
    if y.size and not np.isin(y, (0, 1)).all():
        raise ValueError("binary targets must be 0/1 (1 = positive, -1 = unlabelled)")
    return y == 1, score


def _measure(y: np.ndarray, score: np.ndarray, t: float) -> dict[str, float]:
    """Precision, recall, F1, TPR, FPR of ``score >= t`` (0 when undefined)."""
    pred = score >= t
    tp = int(np.sum(pred & y))
    fp = int(np.sum(pred & ~y))
    pos, neg = int(y.sum()), int((~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / pos if pos else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tpr": recall, "fpr": fp / neg if neg else 0.0}


def _f1(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    den = precision + recall
    return np.divide(2 * precision * recall, den, out=np.zeros_like(den, dtype=np.float64), where=den > 0)


def _last_argmax(values: np.ndarray) -> int:
    """Index of the last maximum (with ascending thresholds: the highest threshold among ties)."""
    return int(len(values) - 1 - np.argmax(values[::-1]))


def tune_binary_threshold(y: np.ndarray, score: np.ndarray, objective: str = "f1") -> dict[str, Any]:
    """Pick the threshold on ``score`` (positive-class probability) that best meets ``objective``.

    ``f1``: maximal F1. ``youden``: maximal TPR - FPR. ``precision=P``: the highest recall among thresholds with
    precision >= P (ties → higher precision); if none reaches P, the most precise threshold and
    ``reached=False``. ``recall=R``: the highest threshold with recall >= R. Ties otherwise go to the higher
    threshold. Rows with ``y < 0`` or non-finite scores are ignored. With only one class (or no rows) the
    result is threshold 0.5 with ``reached=False`` and a ``note``; it never raises for such data.
    """
    from sklearn.metrics import precision_recall_curve, roc_curve

    name, target = parse_objective(objective)
    y, score = _clean_binary(y, score)
    n_pos = int(y.sum())
    out: dict[str, Any] = {"objective": objective, "n": int(y.size), "n_positive": n_pos}
    if y.size == 0 or n_pos in (0, y.size):
        what = "no labelled samples" if y.size == 0 else ("no positives" if n_pos == 0 else "no negatives")
        return {"threshold": 0.5, **out, **_measure(y, score, 0.5), "reached": False,
                "note": f"{what}: threshold not tuned, kept 0.5"}

    reached = True
    if name == "youden":
        fpr, tpr, thr = roc_curve(y, score, drop_intermediate=False)
        finite = np.isfinite(thr)  # the first threshold is +inf (nothing predicted positive)
        fpr, tpr, thr = fpr[finite], tpr[finite], thr[finite]
        t = float(thr[int(np.argmax(tpr - fpr))])  # thresholds descend: argmax = highest among ties
    else:
        precision, recall, thr = precision_recall_curve(y, score)
        precision, recall = precision[:-1], recall[:-1]  # the last point (recall 0) has no threshold
        if name == "f1":
            t = float(thr[_last_argmax(_f1(precision, recall))])
        elif name == "recall":
            ok = np.flatnonzero(recall >= target - 1e-12)  # recall falls as the threshold rises
            t = float(thr[ok[-1]])
        else:  # precision
            ok = precision >= target - 1e-12
            if ok.any():
                cand = np.flatnonzero(ok)
                best = cand[np.lexsort((precision[cand], recall[cand]))[-1]]
            else:
                reached = False
                best = np.lexsort((recall, precision))[-1]
            t = float(thr[best])
    return {"threshold": t, **out, **_measure(y, score, t), "reached": reached}


def tune_multilabel_thresholds(Y: np.ndarray, P: np.ndarray, default: float = 0.5) -> np.ndarray:
    """Per label, the threshold (a score value; ``P >= t``) maximising that label's F1.

    A label without positives or without negatives keeps ``default``. Non-finite scores are ignored.
    """
    from sklearn.metrics import precision_recall_curve

    Y, P = np.asarray(Y), np.asarray(P, dtype=np.float64)
    if Y.ndim != 2 or Y.shape != P.shape:
        raise ValueError(f"Y {Y.shape} and P {P.shape} must be matrices of the same shape")
    out = np.full(Y.shape[1], float(default), dtype=np.float64)
    for j in range(Y.shape[1]):
        keep = np.isfinite(P[:, j])
        y, s = Y[keep, j] == 1, P[keep, j]
        if not y.any() or y.all():
            continue
        precision, recall, thr = precision_recall_curve(y, s)
        out[j] = thr[_last_argmax(_f1(precision[:-1], recall[:-1]))]
    return out


def _downsample(*arrays: np.ndarray, max_points: int = MAX_CURVE_POINTS) -> list[list[float]]:
    """Keep at most ``max_points`` evenly spaced points (always the first and the last)."""
    n = len(arrays[0])
    idx = np.unique(np.round(np.linspace(0, n - 1, max_points)).astype(int)) if n > max_points else np.arange(n)
    return [np.asarray(a, dtype=np.float64)[idx].tolist() for a in arrays]


def binary_curves(y: np.ndarray, score: np.ndarray) -> dict[str, Any]:
    """ROC and precision-recall curves (≤ 200 points each, JSON-ready) with ROC AUC and average precision.

    With only one class present the curves are empty and AUC / AP are NaN.
    """
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    y, score = _clean_binary(y, score)
    n_pos = int(y.sum())
    out: dict[str, Any] = {"n": int(y.size), "n_positive": n_pos}
    if y.size == 0 or n_pos in (0, y.size):
        return {"roc": {"fpr": [], "tpr": []}, "roc_auc": float("nan"),
                "pr": {"precision": [], "recall": []}, "average_precision": float("nan"), **out}
    fpr, tpr, _ = roc_curve(y, score)
    precision, recall, _ = precision_recall_curve(y, score)
    fpr_l, tpr_l = _downsample(fpr, tpr)
    prec_l, rec_l = _downsample(precision, recall)
    return {"roc": {"fpr": fpr_l, "tpr": tpr_l}, "roc_auc": float(roc_auc_score(y, score)),
            "pr": {"precision": prec_l, "recall": rec_l},
            "average_precision": float(average_precision_score(y, score)), **out}
