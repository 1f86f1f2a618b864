"""Outliers: images that belong to none of the classes (out-of-distribution photos, junk, screenshots).

Two rankings:

* ``lof`` / ``iforest``: scikit-learn's LocalOutlierFactor or IsolationForest on the pooled embeddings,
  over the whole set and within each class; an image's score is the larger of its two robust z-scores.
* ``layers`` (the default, ``auto``, when the features are an EfficientNet-Lite backbone): the
  five detectors of ``layer_outlier_scores``, then ``refine_outlier_scores`` (``curate`` does both, and
  leaves images it reports as blurry out of the ranking). It finds far more out-of-distribution photos
  than ``lof`` on the pooled embedding (docs/benchmarks.md, data curation), at the cost of one more
  backbone pass without flip averaging (cached on disk like the embeddings), and has no per-class part.

kNN label disagreement, PCA reconstruction error, further layout statistics and LOF on colour, HOG or
LBP features add nothing beyond the five detectors, so none is used.
"""
from __future__ import annotations

import numpy as np

from ..features.deep import LAYER_CHANNELS
from .quality import robust_z

#: ``auto`` = ``layers`` when the features are an EfficientNet-Lite backbone, else ``lof``
METHODS = ("auto", "layers", "lof", "iforest")
#: the score above which ``curate`` reports an image as an outlier, per method: ``lof``/``iforest``
#: scores are robust z-scores; ``layers`` combines rank-based normal scores (see ``refine_outlier_scores``)
DEFAULT_Z = {"layers": 3.25, "lof": 4.0, "iforest": 4.0}


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


# ----------------------------------------------------------------------------- multi-layer statistics
def layer_statistics(sources, extractor, preprocess, n_jobs: int | None = None, max_pixels=None) -> tuple[np.ndarray, np.ndarray]:
    """``(X, ok)``: ``features.deep.LayerStatistics`` of every source with ``extractor``'s backbone
    (a ``DeepEmbedding``) and pre-processing; cached on disk like the embeddings."""
    from ..features import extract_features
    from ..features.deep import LayerStatistics

    ext = LayerStatistics(extractor.backbone, extractor.pretrained, extractor.size, tta=False,
                          batch_size=extractor.batch_size, cache=extractor.cache)
    f = extract_features(ext, list(sources), preprocess, n_jobs=n_jobs, max_pixels=max_pixels,
                         description="outlier features (layers)")
    return f.X, f.ok


def _normal_scores(s: np.ndarray) -> np.ndarray:
    """Rank-based normal scores: the standard-normal quantile of each value's rank (ties broken by
    position: deterministic). Puts detectors of any scale on one scale."""
    from scipy.stats import norm

    r = np.empty(len(s))
    r[np.argsort(s, kind="stable")] = np.arange(len(s))
    return norm.ppf((r + 0.5) / max(1, len(s)))


def layer_outlier_scores(L: np.ndarray, channels: tuple[int, ...], seed: int = 0,
                         n_neighbors: int = 20) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``(score, parts)``: the ``layers`` outlier ranking from ``layer_statistics`` rows ``L``.

    Why: an out-of-distribution photo (a landscape among objects) often shares its *semantics* with
    some class -- sea next to ships, sky next to aeroplanes -- so in the pooled last-layer embedding it
    sits inside a dense region and LOF misses it. What gives it away is (1) its mid-level texture and part statistics, which the
    classes do not share, and (2) its layout: class photos are object-centred, a scene looks the same
    in the middle as at the edges. Five complementary detectors, each turned into rank-based normal
    scores and combined (ranks need no calibration between detectors of different scales):

    * LOF (``n_neighbors``, on L2-normalised, PCA-64 vectors, as ``lof``) on the per-channel spatial
      standard deviation of the first used stage (texture contrast) and on the spatial means of the
      next three stages (mid-level parts);
    * the cosine similarity of the final feature map's centre (3 x 3 of 7 x 7) to its border ring:
      high when the image has no central subject.

    ``score`` combines the detectors' rank-based normal scores with Stouffer's method (sum / sqrt(5)):
    a standard-normal z-score if the detectors were independent; they are positively correlated, so
    the tail is heavier than a normal one: read it as a ranking scale (``DEFAULT_Z`` is set on it), not a p-value.
    ``parts`` holds each detector's raw score (higher = more unusual).
    """
    L = np.asarray(L, dtype=np.float64)
    parts: dict[str, np.ndarray] = {}
    off = 0
    for k, c in enumerate(channels):
        mean, std = L[:, off:off + c], L[:, off + c:off + 2 * c]
        off += 2 * c
        if k == 0:
            parts[f"lof_std_{c}"] = _lof(std, n_neighbors, seed)
        else:
            parts[f"lof_mean_{c}"] = _lof(mean, n_neighbors, seed)
    spatial = L[:, off:]  # (centre-border cosine, uniformity) per used stage, then for the final map
    parts["centre_border_similarity"] = spatial[:, -2]
    return np.sum([_normal_scores(v) for v in parts.values()], axis=0) / np.sqrt(len(parts)), parts


def refine_outlier_scores(score: np.ndarray, X: np.ndarray, rounds: int = 3, top: int = 30, C: float = 0.03,
                          eligible: np.ndarray | None = None, folds: int = 5, seed: int = 0) -> np.ndarray:
    """Self-trained refinement of an outlier ranking: the ``top`` highest-ranked ``eligible`` rows are taken
    as examples of what is out of place here, a regularised logistic regression (scikit-learn) learns to
    tell them from the rest on the standardised ``X``, and its cross-fitted decision value (``folds``
    folds: no row is scored by a model that saw it) is combined with ``score`` by rank-based normal scores
    (Stouffer, as ``layer_outlier_scores``). Repeated ``rounds`` times, each round taking its positives from
    the previous round's ranking. Returns the refined score (higher = more outlying).

    Why: the detectors of ``layer_outlier_scores`` rank each out-of-distribution photo by how unusual it
    is on its own; the photos that come first share a direction in the feature space (their texture and
    part statistics) that no single detector weighs, and a linear model trained on them finds the ones
    ranked lower. ``eligible`` keeps images reported for a quality problem (blur, exposure, ...) out of
    the positives, so the model learns unusual content rather than unusual quality. The ranking changes
    little with the number of positives (``top``) or ``rounds`` (docs/benchmarks.md has the gain)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    score = np.asarray(score, dtype=np.float64)
    n = len(score)
    eligible = np.ones(n, bool) if eligible is None else np.asarray(eligible, bool)
    top = int(min(top, eligible.sum(), n // 10))
    if rounds <= 0 or top < folds:
        return score
    Z = StandardScaler().fit_transform(np.asarray(X, dtype=np.float64))
    base = _normal_scores(score)
    s = score
    for _ in range(rounds):
        pos = np.zeros(n, bool)
        pos[np.argsort(-np.where(eligible, s, -np.inf), kind="stable")[:top]] = True
        learned = np.zeros(n)
        for tr, te in StratifiedKFold(folds, shuffle=True, random_state=seed).split(Z, pos):
            clf = LogisticRegression(C=C, class_weight="balanced", max_iter=3000).fit(Z[tr], pos[tr])
            learned[te] = clf.decision_function(Z[te])
        s = (base + _normal_scores(learned)) / np.sqrt(2)
    return s


def _lof(F: np.ndarray, n_neighbors: int, seed: int) -> np.ndarray:
    from sklearn.neighbors import LocalOutlierFactor

    n = len(F)
    if n < 5:
        return np.zeros(n)
    Z = reduce_embeddings(F, seed=seed)
    return -LocalOutlierFactor(n_neighbors=int(min(n_neighbors, n - 1))).fit(Z).negative_outlier_factor_


__all__ = ["DEFAULT_Z", "LAYER_CHANNELS", "METHODS", "layer_outlier_scores", "layer_statistics", "outlier_scores",
           "reduce_embeddings", "refine_outlier_scores"]
