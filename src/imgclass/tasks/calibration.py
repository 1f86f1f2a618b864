"""Probability calibration: temperature scaling (Guo et al. 2017) and the expected calibration error.

Temperature scaling divides the logits by one scalar ``T`` fitted on validation data to minimise the
negative log-likelihood; it never changes the arg-max, only how confident the probabilities are.
It is applied here to probabilities, which works for every model kind: ``softmax(log P / T)`` equals
``softmax(logits / T)`` for a softmax model, and ``sigmoid(logit(p) / T)`` per label for multi-label
models. scikit-learn's ``CalibratedClassifierCV`` refits the classifier and has no temperature
option, hence these few lines.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_EPS = 1e-7


def apply_temperature(task: str, P: np.ndarray, temperature: float | None) -> np.ndarray:
    """``P`` rescaled by ``temperature`` (rows of NaN stay NaN; ``None`` or 1 returns ``P``)."""
    if temperature is None or temperature == 1.0 or not len(P):
        return P
    Q = np.clip(np.asarray(P, dtype=np.float64), _EPS, 1 - _EPS if task == "multilabel" else 1.0)
    if task == "multilabel":
        z = np.log(Q) - np.log1p(-Q)
        return 1.0 / (1.0 + np.exp(-z / temperature))
    z = np.log(Q) / temperature
    z -= np.nanmax(z, axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _nll(task: str, y: np.ndarray, P: np.ndarray) -> float:
    if task == "multilabel":
        Q = np.clip(P, _EPS, 1 - _EPS)
        return float(-(y * np.log(Q) + (1 - y) * np.log1p(-Q)).mean())
    return float(-np.log(np.clip(P[np.arange(len(y)), y], _EPS, 1.0)).mean())


def fit_temperature(task: str, y: np.ndarray, P: np.ndarray) -> float:
    """The temperature minimising the validation negative log-likelihood (searched on log T in
    [-3, 3] with scipy's bounded Brent method); 1.0 when there is nothing to fit."""
    from scipy.optimize import minimize_scalar

    ok = ~np.isnan(P).any(axis=1)
    if task != "multilabel":
        ok &= y >= 0
    y, P = y[ok], P[ok]
    if len(y) < 2:
        return 1.0
    res = minimize_scalar(lambda lt: _nll(task, y, apply_temperature(task, P, float(np.exp(lt)))),
                          bounds=(-3.0, 3.0), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x)) if res.success else 1.0


def calibration_bins(task: str, y: np.ndarray, P: np.ndarray, n_bins: int = 15) -> dict[str, Any]:
    """Reliability-diagram data and the expected calibration error (equal-width confidence bins).

    Single-label: the confidence is the top probability and a hit is a correct arg-max. Multi-label:
    every (image, label) probability against whether the label is present.
    """
    if task == "multilabel":
        conf, hit = P.ravel(), y.ravel().astype(float)
    else:
        conf, hit = P.max(axis=1), (P.argmax(axis=1) == y).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    sum_conf = np.bincount(which, weights=conf, minlength=n_bins)
    sum_hit = np.bincount(which, weights=hit, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = sum_conf / count
        accuracy = sum_hit / count
    n = max(int(count.sum()), 1)
    ece = float(np.nansum(count / n * np.abs(accuracy - mean_conf)))
    return {"ece": ece, "edges": edges.tolist(), "count": count.tolist(),
            "confidence": [None if np.isnan(v) else float(v) for v in mean_conf],
            "accuracy": [None if np.isnan(v) else float(v) for v in accuracy]}


def calibrate(task: str, y: np.ndarray, P: np.ndarray) -> dict[str, Any]:
    """Fit a temperature on ``(y, P)``; returns ``{"temperature", "ece_before", "ece_after", "n"}``."""
    ok = ~np.isnan(P).any(axis=1)
    if task != "multilabel":
        ok &= y >= 0
    T = fit_temperature(task, y[ok], P[ok])
    before = calibration_bins(task, y[ok], P[ok])["ece"] if ok.any() else float("nan")
    after = calibration_bins(task, y[ok], apply_temperature(task, P[ok], T))["ece"] if ok.any() else float("nan")
    return {"method": "temperature", "temperature": T, "ece_before": before, "ece_after": after, "n": int(ok.sum())}
