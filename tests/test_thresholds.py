"""Threshold tuning and binary curves: targets are met on the data, optima are optimal, degenerate data is safe."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score, roc_auc_score

from imgclass.errors import ConfigError
from imgclass.tasks.thresholds import (
    binary_curves,
    parse_objective,
    tune_binary_threshold,
    tune_multilabel_thresholds,
)


def noisy_binary(n: int = 400, seed: int = 0, pos_rate: float = 0.3):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < pos_rate).astype(int)
    score = 1 / (1 + np.exp(-(rng.normal(0, 1.2, n) + 1.5 * (2 * y - 1))))
    return y, score


def at(y, score, t):
    """(precision, recall, F1) of ``score >= t`` via sklearn."""
    pred = score >= t
    return (precision_score(y, pred, zero_division=0), recall_score(y, pred, zero_division=0),
            f1_score(y, pred, zero_division=0))


def sweep(y, score):
    """(precision, recall, F1) arrays over every distinct score as threshold, by brute-force counting."""
    t = np.unique(score)
    pred = score[None, :] >= t[:, None]
    tp = (pred & (y == 1)[None, :]).sum(1)
    precision, recall = tp / pred.sum(1), tp / (y == 1).sum()
    f1 = np.where(tp > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0.0)
    return precision, recall, f1


@pytest.mark.parametrize("spec,expected", [
    ("f1", ("f1", None)), ("youden", ("youden", None)), (" F1 ", ("f1", None)),
    ("precision=0.95", ("precision", 0.95)), ("recall=0.9", ("recall", 0.9)), ("precision=1", ("precision", 1.0)),
])
def test_parse_objective_valid(spec, expected):
    assert parse_objective(spec) == expected


@pytest.mark.parametrize("spec", ["xyz", "f2", "precision", "precision=", "precision=0", "recall=1.5",
                                  "recall=-0.1", "precision=abc", "recall=nan", "accuracy=0.9", ""])
def test_parse_objective_rejects(spec):
    with pytest.raises(ConfigError, match="--threshold-for .*use f1, youden, precision=P or recall=R"):
        parse_objective(spec)


def test_bad_objective_raises_config_error_from_tune():
    y, s = noisy_binary()
    with pytest.raises(ConfigError):
        tune_binary_threshold(y, s, "precision=2")


@pytest.mark.parametrize("objective", ["f1", "youden", "precision=0.8", "precision=0.95", "recall=0.9", "recall=0.5"])
def test_reported_metrics_are_reproduced_by_score_ge_threshold(objective):
    y, s = noisy_binary()
    r = tune_binary_threshold(y, s, objective)
    assert r["threshold"] in set(s.tolist())  # an actual score value
    p, rec, f = at(y, s, r["threshold"])
    assert (r["precision"], r["recall"], r["f1"], r["tpr"]) == pytest.approx((p, rec, f, rec), abs=1e-12)
    neg = y == 0
    assert r["fpr"] == pytest.approx(np.mean(s[neg] >= r["threshold"]), abs=1e-12)
    assert r["objective"] == objective and r["reached"] is True and "note" not in r


@pytest.mark.parametrize("target", [0.7, 0.8, 0.9, 0.95])
def test_precision_target_reached_with_maximal_recall(target):
    y, s = noisy_binary(seed=1)
    r = tune_binary_threshold(y, s, f"precision={target}")
    assert r["reached"] is True
    assert precision_score(y, s >= r["threshold"]) >= target
    # brute force: no threshold that reaches the target has a higher recall
    precision, recall, _ = sweep(y, s)
    best = recall[precision >= target].max()
    assert r["recall"] == pytest.approx(best)


def test_precision_target_unreachable_falls_back_to_most_precise():
    y = np.array([0, 1, 1, 0, 1, 0, 0])
    s = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.3, 0.1])  # the top score is a negative: precision < 1 everywhere
    r = tune_binary_threshold(y, s, "precision=1")
    assert r["reached"] is False
    best_precision = sweep(y, s)[0].max()
    assert r["precision"] == pytest.approx(best_precision) == pytest.approx(2 / 3)
    assert r["threshold"] == 0.8


def test_recall_target_is_the_highest_threshold_reaching_it():
    y, s = noisy_binary(seed=2)
    for target in (0.5, 0.8, 0.9, 1.0):
        r = tune_binary_threshold(y, s, f"recall={target}")
        assert recall_score(y, s >= r["threshold"]) >= target
        higher = np.unique(s[s > r["threshold"]])
        if len(higher):
            assert recall_score(y, s >= higher.min()) < target


def test_f1_is_maximal_over_all_thresholds():
    y, s = noisy_binary(seed=3)
    r = tune_binary_threshold(y, s, "f1")
    assert r["f1"] == pytest.approx(sweep(y, s)[2].max())


def test_youden_and_f1_differ_on_imbalanced_example():
    # 10 positives (5 at 0.9, 5 at 0.5), 102 negatives (12 at 0.6, 90 at 0.1)
    y = np.array([1] * 10 + [0] * 102)
    s = np.array([0.9] * 5 + [0.5] * 5 + [0.6] * 12 + [0.1] * 90)
    f1 = tune_binary_threshold(y, s, "f1")
    yj = tune_binary_threshold(y, s, "youden")
    assert f1["threshold"] == 0.9 and (f1["precision"], f1["recall"], f1["fpr"]) == (1.0, 0.5, 0.0)
    assert yj["threshold"] == 0.5 and yj["tpr"] == 1.0 and yj["fpr"] == pytest.approx(12 / 102)
    assert yj["tpr"] - yj["fpr"] > f1["tpr"] - f1["fpr"] and f1["f1"] > yj["f1"]


@pytest.mark.parametrize("y,s,word", [
    (np.zeros(5, int), np.linspace(0, 1, 5), "no positives"),
    (np.ones(5, int), np.linspace(0, 1, 5), "no negatives"),
    (np.zeros(0, int), np.zeros(0), "no labelled"),
    (np.array([1, 0, -1]), np.array([0.9, np.nan, 0.2]), "no negatives"),  # unlabelled and NaN rows are dropped
])
@pytest.mark.parametrize("objective", ["f1", "youden", "precision=0.9", "recall=0.9"])
def test_degenerate_inputs_never_raise(y, s, word, objective):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = tune_binary_threshold(y, s, objective)
    assert r["threshold"] == 0.5 and r["reached"] is False and word in r["note"]
    json.dumps(r)


def skewed_multilabel(n: int = 300, seed: int = 0):
    """Label 0: rare, scores low but separable; label 1: common, scores high; label 2: balanced, calibrated."""
    rng = np.random.default_rng(seed)
    Y = np.zeros((n, 3), dtype=np.uint8)
    Y[:, 0] = rng.random(n) < 0.05
    Y[:, 1] = rng.random(n) < 0.8
    Y[:, 2] = rng.random(n) < 0.5
    P = np.empty((n, 3))
    P[:, 0] = np.where(Y[:, 0], rng.uniform(0.2, 0.4, n), rng.uniform(0.0, 0.25, n))
    P[:, 1] = np.where(Y[:, 1], rng.uniform(0.55, 1.0, n), rng.uniform(0.5, 0.7, n))
    P[:, 2] = np.where(Y[:, 2], rng.uniform(0.3, 1.0, n), rng.uniform(0.0, 0.7, n))
    return Y, P


def test_multilabel_thresholds_beat_half_on_macro_f1():
    Y, P = skewed_multilabel()
    t = tune_multilabel_thresholds(Y, P)
    assert t.shape == (3,)
    tuned = f1_score(Y, P >= t[None, :], average="macro", zero_division=0)
    fixed = f1_score(Y, P >= 0.5, average="macro", zero_division=0)
    assert tuned > fixed + 0.2
    assert 0.2 <= t[0] <= 0.4  # the rare label's threshold moved far below 0.5
    for j in range(3):  # each threshold is F1-optimal for its label
        best = sweep(Y[:, j], P[:, j])[2].max()
        assert f1_score(Y[:, j], P[:, j] >= t[j]) == pytest.approx(best)


def test_multilabel_degenerate_columns_keep_default():
    Y, P = skewed_multilabel()
    Y[:, 0] = 0
    Y[:, 1] = 1
    t = tune_multilabel_thresholds(Y, P, default=0.42)
    assert t[0] == 0.42 and t[1] == 0.42 and t[2] != 0.42


def test_binary_curves_match_sklearn_and_fit_in_json():
    y, s = noisy_binary(n=5000, seed=4)
    c = binary_curves(y, s)
    assert c["roc_auc"] == pytest.approx(roc_auc_score(y, s))
    assert 0 < c["average_precision"] <= 1
    for xs in (c["roc"]["fpr"], c["roc"]["tpr"], c["pr"]["precision"], c["pr"]["recall"]):
        assert 2 <= len(xs) <= 200 and all(isinstance(v, float) for v in xs)
    assert len(c["roc"]["fpr"]) == len(c["roc"]["tpr"]) and len(c["pr"]["precision"]) == len(c["pr"]["recall"])
    assert (c["roc"]["fpr"][0], c["roc"]["tpr"][0]) == (0.0, 0.0)
    assert (c["roc"]["fpr"][-1], c["roc"]["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(c["roc"]["fpr"]) >= 0)
    assert json.loads(json.dumps(c))["roc_auc"] == c["roc_auc"]


def test_binary_curves_single_class_gives_nan_not_error():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        c = binary_curves(np.ones(10, int), np.linspace(0, 1, 10))
    assert math.isnan(c["roc_auc"]) and math.isnan(c["average_precision"])
    assert c["roc"]["fpr"] == [] and c["pr"]["precision"] == []
