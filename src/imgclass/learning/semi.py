"""Semi-supervised training: learn from a few labelled images plus many unlabelled ones.

- Classical pipelines (``FEATURES+CLASSIFIER``): the features of every image are extracted once,
  then scikit-learn does the semi-supervised part:
  - ``self-training``: ``SelfTrainingClassifier`` around the pipeline's own classifier; each round
    adds the unlabelled images it predicts with probability ≥ ``threshold``;
  - ``label-spreading``: ``LabelSpreading`` on a k-nearest-neighbour graph of the (L2-normalised)
    features; images whose spread label distribution reaches ``threshold`` become pseudo-labels,
    and the pipeline's classifier is trained on labels plus pseudo-labels.
  - ``balanced-self-training``: class-balanced curriculum pseudo-labelling (``balanced_self_training``):
    each round every class takes the same number of its most probable unlabelled images, the share
    grows round by round up to ``threshold`` (here a share of the pool, default 0.6), and the
    classifier is retrained from scratch on labels plus the current pseudo-labels; balancing keeps
    one easy class from taking over the pseudo-labels.
- Deep models: ``fixmatch``, in the training engine (``TrainConfig.unlabeled_*``): pseudo-labels
  from weakly augmented unlabelled images above a confidence threshold train the predictions on
  strongly augmented versions of the same images (Sohn et al., 2020): RandAugment + Cutout
  (``training.engine.StrongView``), with the weak-view predictions distribution-aligned to the
  labelled class frequencies (``TrainConfig.distribution_alignment``).

When the unlabelled images carry labels (e.g. class folders), those labels are used only to score
the pseudo-labels (``report["rounds"][i]["accuracy"]``); they never reach the classifier.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from ..data import ImageDataset
from ..errors import ConfigError, DataError

CLASSICAL = ("self-training", "label-spreading", "balanced-self-training")
DEEP = ("fixmatch",)
SEMI_METHODS = CLASSICAL + DEEP
#: for ``balanced-self-training`` the "threshold" is the share of the unlabelled pool pseudo-labelled in
#: the last round: up to 0.6 more pseudo-labels help, beyond it they get too often wrong to add anything
DEFAULT_THRESHOLD = {"self-training": 0.75, "label-spreading": 0.75, "balanced-self-training": 0.6, "fixmatch": 0.95}
#: rounds of ``balanced-self-training`` (the share grows linearly to the final one)
BALANCED_ROUNDS = 3


def default_semi(kind: str) -> str:
    return "fixmatch" if kind == "deep" else "self-training"


def check_semi(kind: str, semi: str, task: str) -> None:
    """Refuse a semi-supervised method that does not fit the model kind or task, before any work."""
    if semi not in SEMI_METHODS:
        raise ConfigError(f"--semi {semi!r}: choose one of {', '.join(SEMI_METHODS)}")
    if kind == "deep" and semi not in DEEP:
        raise ConfigError(f"--semi {semi}: deep methods learn from unlabelled images with fixmatch")
    if kind != "deep" and semi not in CLASSICAL:
        raise ConfigError(f"--semi {semi}: classical pipelines use self-training, label-spreading or "
                          "balanced-self-training")
    if task not in ("binary", "multiclass"):
        raise ConfigError(f"--unlabeled: semi-supervised training supports single-label tasks; this one is {task}")


def truth_for(train: ImageDataset, unlabeled: ImageDataset) -> np.ndarray:
    """Indices into ``train.classes`` of the unlabelled images' own labels (-1 when absent), for scoring."""
    if not unlabeled.is_labelled or unlabeled.targets is None or unlabeled.targets.ndim != 1:
        return np.full(len(unlabeled), -1, dtype=np.int64)
    index = {c: i for i, c in enumerate(train.classes)}
    names = [unlabeled.classes[t] if t >= 0 else None for t in unlabeled.targets]
    return np.array([index.get(n, -1) if n is not None else -1 for n in names], dtype=np.int64)


def _round(k: int, rows: np.ndarray, pseudo: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    known = truth[rows] >= 0
    acc = float((pseudo[known] == truth[rows][known]).mean()) if known.any() else None
    return {"round": k, "added": int(len(rows)), "accuracy": acc, "scored": int(known.sum())}


def balanced_self_training(new_classifier: Callable[[], Any], F_l: np.ndarray, y_l: np.ndarray, F_u: np.ndarray,
                           share: float = 0.6, rounds: int = BALANCED_ROUNDS, truth: np.ndarray | None = None,
                           ) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Class-balanced curriculum pseudo-labelling; returns (pseudo-labelled rows of ``F_u``, their labels,
    one report per round). The caller trains the final classifier on ``F_l`` plus those rows.

    Round ``r`` (1..``rounds``) scores the unlabelled rows with the classifier of the previous round
    (round 1: the labelled images alone), then every class ``c`` takes its ``share * r / rounds *
    len(F_u) / n_classes`` rows with the highest probability of ``c`` (a row picked by two classes
    stays with its most probable one), and a fresh ``new_classifier()`` is trained on the labelled
    rows plus these pseudo-labels. Pseudo-labels are chosen again from scratch each round, so an early
    mistake can be undone, and equal quotas per class stop the frequent or easy classes from taking
    over, the usual failure of confidence-threshold self-training (a fixed threshold admits few
    images of the hard classes).

    The schedule follows curriculum labelling (Cascante-Bonilla et al., "Curriculum Labeling:
    Revisiting Pseudo-Labeling for Semi-Supervised Learning", AAAI 2021: percentile of the scores
    growing each round, model re-initialised every round) with the per-class quotas of class-balanced
    self-training (Zou et al., "Unsupervised Domain Adaptation for Semantic Segmentation via
    Class-Balanced Self-Training", ECCV 2018).

    ``truth`` (indices, -1 unknown) only scores the pseudo-labels in the round reports: ``added`` is
    how many more images hold a pseudo-label than in the round before (so the sum is the final
    count), ``accuracy`` is over all of that round's pseudo-labels.
    """
    if not 0 < share <= 1:
        raise ConfigError(f"--pseudo-threshold {share}: for balanced-self-training give the share of the "
                          "unlabelled images to pseudo-label, in (0, 1] (e.g. 0.6)")
    truth = np.full(len(F_u), -1, dtype=np.int64) if truth is None else np.asarray(truth)
    clf = new_classifier().fit(F_l, y_l)
    classes = np.asarray(clf.classes_)
    rows, pseudo = np.zeros(0, np.int64), np.zeros(0, y_l.dtype)
    reports: list[dict[str, Any]] = []
    before = 0
    for r in range(1, max(1, int(rounds)) + 1):
        if r > 1:  # a fresh classifier on the labels plus the previous round's pseudo-labels
            clf = new_classifier().fit(np.concatenate([F_l, F_u[rows]]), np.concatenate([y_l, pseudo]))
        P = clf.predict_proba(F_u)
        n = max(1, int(round(share * r / rounds * len(F_u) / len(classes))))
        picks = np.concatenate([np.argsort(-P[:, j], kind="stable")[:n] for j in range(len(classes))])
        cols = np.repeat(np.arange(len(classes)), min(n, len(F_u)))
        rows, first = np.unique(picks, return_index=True)
        keep = cols[first] == P[rows].argmax(axis=1)  # picked by two classes: its most probable one
        rows = rows[keep]
        pseudo = classes[cols[first][keep]]
        rep = _round(r, rows, pseudo, truth)
        rep["added"], rep["pseudo_labels"] = int(len(rows) - before), int(len(rows))
        before = len(rows)
        reports.append(rep)
    return rows, pseudo, reports


def fit_semi_classical(model, train: ImageDataset, unlabeled: ImageDataset, semi: str = "self-training",
                       threshold: float | None = None, log: Callable[[str], Any] = print) -> dict[str, Any]:
    """Fit a ``FeaturePipeline`` on ``train`` plus ``unlabeled``; returns the pseudo-label report
    (also stored in ``model.meta_["semi"]``)."""
    threshold = DEFAULT_THRESHOLD[semi] if threshold is None else float(threshold)
    if not 0 < threshold <= 1:
        raise ConfigError(f"--pseudo-threshold {threshold}: give a probability in (0, 1]")
    model.set_labels(train)
    model.fit_extractor(train)
    fl = model.features(train, "features (labelled)")
    fu = model.features(unlabeled, "features (unlabelled)")
    model.errors_ = fl.errors + fu.errors
    y = train.targets[fl.ok]
    keep = y >= 0
    F_l, y_l = fl.X[keep], y[keep]
    F_u = fu.X
    truth = truth_for(train, unlabeled)[fu.ok]
    if len(F_u) == 0:
        raise DataError(f"{unlabeled.name}: no readable unlabelled images; give a folder of images with --unlabeled")
    if len(np.unique(y_l)) < 2:
        raise DataError("semi-supervised training needs labelled images of at least two classes")
    log(f"{semi}: {len(F_l)} labelled + {len(F_u)} unlabelled images, " +
        (f"pseudo-labels for up to {threshold:.0%} of them, class-balanced" if semi == "balanced-self-training"
         else f"pseudo-label threshold {threshold}"))
    rounds: list[dict[str, Any]] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter from the inner classifier, every round
        if semi == "self-training":
            from sklearn.semi_supervised import SelfTrainingClassifier

            stc = SelfTrainingClassifier(model.new_classifier(y_l), threshold=threshold, max_iter=10)
            stc.fit(np.concatenate([F_l, F_u]), np.concatenate([y_l, np.full(len(F_u), -1)]))
            it = stc.labeled_iter_[len(F_l):]
            pseudo = stc.transduction_[len(F_l):]
            for k in range(1, int(stc.n_iter_) + 1):
                rows = np.flatnonzero(it == k)
                if len(rows):
                    rounds.append(_round(k, rows, pseudo[rows], truth))
            model.classifier_ = stc.estimator_  # the classifier of the last round: a plain sklearn model
            used = np.flatnonzero(it > 0)
        elif semi == "label-spreading":
            from sklearn.preprocessing import normalize
            from sklearn.semi_supervised import LabelSpreading

            Z = normalize(np.concatenate([F_l, F_u]).astype(np.float64))
            ls = LabelSpreading(kernel="knn", n_neighbors=10, alpha=0.2, max_iter=100)
            ls.fit(Z, np.concatenate([y_l, np.full(len(F_u), -1)]))
            dist = ls.label_distributions_[len(F_l):]
            pseudo = ls.classes_[dist.argmax(axis=1)]
            used = np.flatnonzero(dist.max(axis=1) >= threshold)
            rounds.append(_round(1, used, pseudo[used], truth))
            model.fit_features(np.concatenate([F_l, F_u[used]]), np.concatenate([y_l, pseudo[used]]))
        elif semi == "balanced-self-training":
            used, chosen, rounds = balanced_self_training(lambda: model.new_classifier(y_l), F_l, y_l, F_u,
                                                          share=threshold, truth=truth)
            pseudo = np.full(len(F_u), -1, dtype=y_l.dtype)
            pseudo[used] = chosen
            model.fit_features(np.concatenate([F_l, F_u[used]]), np.concatenate([y_l, chosen]))
    report = {"method": semi, "threshold": threshold, "labelled": int(len(F_l)), "unlabeled": int(len(F_u)),
              "pseudo_labels": int(len(used)), "rounds": rounds}
    known = truth[used] >= 0
    report["pseudo_accuracy"] = (float((pseudo[used][known] == truth[used][known]).mean()) if known.any() else None)
    for r in rounds:
        log(f"round {r['round']}: {r['added']} pseudo-labels" +
            (f", {r['accuracy']:.1%} correct" if r["accuracy"] is not None else ""))
    model.meta_["semi"] = report
    return report
