"""Clustering images: features → (L2 + PCA/UMAP) → a scikit-learn clustering algorithm.

``cluster`` extracts features with the library's extractors (classical features, or frozen deep
embeddings cached on disk), L2-normalises each row, reduces the dimension (PCA by default; UMAP when
``umap-learn`` is installed) and runs one of scikit-learn's algorithms:

* ``kmeans``, ``minibatch-kmeans``, ``gmm``, ``agglomerative`` (Ward), ``birch``, ``spectral``
  (k-nearest-neighbour graph) need a number of clusters ``k``: an integer, ``"auto"`` (the ``k`` in
  ``k_range`` with the best silhouette, or the lowest BIC for ``gmm``), or ``None`` (the number of
  classes when the data is labelled, else ``"auto"``);
* ``dbscan``, ``hdbscan`` and ``meanshift`` find the number of clusters themselves; images they
  leave out are noise (cluster ``-1``).

When the data has one label per image, the result carries ACC (clusters matched one-to-one to classes
with the Hungarian algorithm), NMI and ARI. ``ClusterResult.write`` writes ``clusters.csv``,
``cluster.json``, a thumbnail montage per cluster, a 2-D map of the embedding and (with ``k="auto"``)
the curve that chose ``k``. ``ClusterResult.name`` turns the clusters into a classifier from a few
labelled examples: a normal ``FeaturePipeline`` bundle (``imgclass predict`` loads it).

Why L2 then PCA by default: both deep embeddings and histogram-like features (HOG, colour) compare
by direction more than by length, and k-means in 50 PCA dimensions is fast and denoised. Measured
(``bench/cluster.py``): k-means on HOG of the digits reaches ARI 0.73 this way (scikit-learn's
example on raw scaled pixels: 0.47); on CIFAR-10 (2,000 validation images) k-means on lite0
embeddings reaches ACC 0.48 / NMI 0.38 (raw pixels: 0.22 / 0.09). Whitening, other PCA sizes,
ImageNet class probabilities, smaller input sizes and the other algorithms all stayed within
0.40-0.50 ACC there: these ImageNet features separate CIFAR classes linearly (logistic regression:
0.81) but not by distance (10-nearest-neighbour label purity 0.54).

The best measured option there is a Gaussian mixture with one shared full covariance in 20 PCA
dimensions (``algo="gmm", dims=20, params={"covariance_type": "tied"}``, i.e. ``imgclass cluster DATA
--algo gmm --dims 20 --param covariance_type=tied``): ACC 0.508 / NMI 0.424 on average over 5 seeds
(defaults: 0.470 / 0.372); it is a clustering form of linear discriminant analysis, which matches
features that separate classes along shared directions rather than in round balls. Measured and not
kept (CIFAR-10 val, lite0): self-labelling refinement (k-means, then the most central members of each
cluster train a logistic regression that reassigns every image, repeated; with or without equal
quotas per cluster) stays at 0.47 or, without quotas, collapses to 0.29-0.43, because with 2,000
images in 1,280 dimensions almost any partition is linearly separable, so k-means' partition is
already a fixed point; SCAN's neighbour-consistency head (Van Gansbeke et al., ECCV 2020) on 10/20/50
nearest neighbours: 0.44-0.53 (the neighbours are right only half of the time); centring + PCA
whitening: 0.48 on average; signed square-root features: 0.44-0.50. Supervised logistic regression
with 3-fold cross-validation on these 2,000 embeddings reaches only 0.70-0.71 (PCA 20/50), so ACC 0.70
without labels would need better features, not a better clustering step. Adapting lite0 to the images
first, without labels (``imgclass pretrain TRAIN --method simclr --backbone lite0@imagenet --unfreeze 2``,
30 epochs on the 10,000 train images, then ``--features RUN``), raises k-means to ACC 0.59 / NMI 0.48 and
the tied GMM to 0.56 / 0.51 (``bench/cluster.py --adapt 30``).

>>> from imgclass.learning.cluster import cluster                            # doctest: +SKIP
>>> res = cluster("photos/", features="lite0", algo="kmeans", k="auto", out="runs/clusters")  # doctest: +SKIP
>>> res.k, res.metrics.get("nmi"), res.labels_[:5]                           # doctest: +SKIP
>>> model = res.name("few_labels.csv"); model.save("runs/clusters/model")    # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write_bytes, atomic_write_json, atomic_write_text, figure_png, progress_bar
from ..data import ImageDataset, from_paths, load_dataset
from ..data.decode import DEFAULT_MAX_PIXELS, ImageSource, load_image
from ..errors import ConfigError, DataError, ImageLoadError

#: algorithm -> one-line description (``imgclass cluster --help`` lists these names)
ALGORITHMS: dict[str, str] = {
    "kmeans": "k-means (k-means++, 10 initialisations)",
    "minibatch-kmeans": "mini-batch k-means: large datasets",
    "gmm": "Gaussian mixture (diagonal covariances); k=auto minimises BIC",
    "dbscan": "density-based; eps from the knee of the k-distance curve; finds k itself, leaves noise",
    "hdbscan": "hierarchical DBSCAN; finds k itself, leaves noise",
    "agglomerative": "agglomerative clustering, Ward linkage",
    "birch": "BIRCH (threshold from nearest-neighbour distances), then agglomerative on its sub-clusters",
    "meanshift": "mean shift (bandwidth estimated from the data); finds k itself",
    "spectral": "spectral clustering on a 10-nearest-neighbour graph",
}
#: algorithm -> the scikit-learn class behind it (``--param`` passes keyword arguments to it)
SKLEARN_CLASS = {"kmeans": "KMeans", "minibatch-kmeans": "MiniBatchKMeans", "gmm": "GaussianMixture",
                 "dbscan": "DBSCAN", "hdbscan": "HDBSCAN", "agglomerative": "AgglomerativeClustering",
                 "birch": "Birch", "meanshift": "MeanShift", "spectral": "SpectralClustering"}
#: algorithms that choose the number of clusters themselves
SELF_K = ("dbscan", "hdbscan", "meanshift")
REDUCTIONS = ("none", "pca", "umap")
NOISE = -1


# --------------------------------------------------------------------------- metrics
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


# --------------------------------------------------------------------------- algorithms
def _knee(values: np.ndarray) -> float:
    """The knee of an increasing curve: the point farthest below the chord from its first to its last
    value (the classical way to read DBSCAN's eps off the sorted k-distance plot)."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    if len(v) < 3 or v[-1] <= v[0]:
        return float(v[-1]) if len(v) else 1.0
    x = np.linspace(0.0, 1.0, len(v))
    y = (v - v[0]) / (v[-1] - v[0])
    return float(v[int(np.argmax(x - y))])


def _kth_neighbour_distance(Z: np.ndarray, k: int) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    k = max(1, min(k, len(Z) - 1))
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(Z).kneighbors(Z)
    return dist[:, k]


def make_algorithm(algo: str, k: int | None, Z: np.ndarray, seed: int = 0, params: dict[str, Any] | None = None):
    """An unfitted scikit-learn clusterer for ``algo`` with imgclass's data-adapted defaults (the
    ``params`` override them; they are passed to the scikit-learn class as keyword arguments)."""
    from sklearn import cluster as skc

    p = dict(params or {})
    n = len(Z)
    if algo == "kmeans":
        return skc.KMeans(**{"n_clusters": k, "n_init": 10, "random_state": seed, **p})
    if algo == "minibatch-kmeans":
        return skc.MiniBatchKMeans(**{"n_clusters": k, "n_init": 10, "batch_size": 1024, "random_state": seed, **p})
    if algo == "gmm":
        from sklearn.mixture import GaussianMixture

        # diagonal covariances: full ones need d*(d+1)/2 parameters per cluster, too many in 50 dims
        return GaussianMixture(**{"n_components": k, "covariance_type": "diag", "n_init": 3, "random_state": seed, **p})
    if algo == "agglomerative":
        return skc.AgglomerativeClustering(**{"n_clusters": k, **p})
    if algo == "spectral":
        return skc.SpectralClustering(**{"n_clusters": k, "affinity": "nearest_neighbors",
                                         "n_neighbors": max(2, min(10, n - 1)), "assign_labels": "cluster_qr",
                                         "random_state": seed, **p})
    if algo == "birch":
        if "threshold" not in p:  # sub-clusters about as wide as typical neighbour gaps, whatever the scale
            p["threshold"] = max(float(np.median(_kth_neighbour_distance(Z, 1))), 1e-6)
        return skc.Birch(**{"n_clusters": k, **p})
    if algo == "dbscan":
        min_samples = int(p.pop("min_samples", 5))
        if "eps" not in p:
            p["eps"] = max(_knee(_kth_neighbour_distance(Z, min_samples)), 1e-6)
        return skc.DBSCAN(**{"min_samples": min_samples, **p})
    if algo == "hdbscan":
        return skc.HDBSCAN(**{"min_cluster_size": 5, "copy": True, **p})
    if algo == "meanshift":
        if "bandwidth" not in p:
            q = float(p.pop("quantile", 0.3))
            bw = skc.estimate_bandwidth(Z, quantile=q, n_samples=min(n, 1000), random_state=seed)
            p["bandwidth"] = bw if bw > 0 else None
        return skc.MeanShift(**p)
    raise ConfigError(f"--algo {algo}: unknown algorithm; choose from {', '.join(ALGORITHMS)}")


def _fit_labels(algo: str, k: int | None, Z: np.ndarray, seed: int, params: dict[str, Any] | None):
    """(labels, fitted estimator) with scikit-learn's warnings about convergence and graphs silenced."""
    from threadpoolctl import threadpool_limits

    # below ~1,000 images one thread is faster: starting OpenMP/BLAS threads for each tiny distance
    # computation (mean shift makes hundreds) costs more than the work, badly so on a busy machine
    limits = threadpool_limits(1) if len(Z) < 1000 else contextlib.nullcontext()
    try:
        with warnings.catch_warnings(), limits:
            warnings.simplefilter("ignore")
            est = make_algorithm(algo, k, Z, seed, params)
            labels = est.fit_predict(Z) if hasattr(est, "fit_predict") else est.fit(Z).predict(Z)
    except (TypeError, ValueError) as exc:
        if params:
            given = " ".join(f"--param {k}={v}" for k, v in params.items())
            raise ConfigError(f"{given}: not accepted by {algo} ({exc}); see scikit-learn's documentation of "
                              f"{SKLEARN_CLASS[algo]}") from None
        raise
    return np.asarray(labels, dtype=np.int64), est


def cluster_features(F: np.ndarray, k: int, algo: str = "kmeans", dims: int | None = 50, seed: int = 0) -> np.ndarray:
    """Cluster ids of feature rows ``F`` as ``cluster`` computes them with its defaults (L2, PCA to
    ``dims``, ``algo`` into ``k``), for callers that already hold the features (self-labelling's start)."""
    Z = np.asarray(F, dtype=np.float64)
    for _, step in _reduce_steps(Z, "pca", dims, False, True, seed, []):
        Z = step.transform(Z)
    return _fit_labels(algo, k, np.ascontiguousarray(Z), seed, None)[0]


def _silhouette(Z: np.ndarray, labels: np.ndarray, seed: int) -> float | None:
    from sklearn.metrics import silhouette_score

    keep = labels != NOISE
    n_lab = len(np.unique(labels[keep]))
    if n_lab < 2 or n_lab > keep.sum() - 1:
        return None
    return float(silhouette_score(Z[keep], labels[keep], sample_size=min(int(keep.sum()), 3000), random_state=seed))


# --------------------------------------------------------------------------- result
@dataclass
class ClusterResult:
    """The outcome of ``cluster``: one cluster id per readable image, plus what is needed to explain,
    write and reuse it.

    Attributes (scikit-learn style, learned state ends in ``_``):
        labels_: ``(n,)`` cluster id per image in ``sources`` (0 = the largest cluster; ``-1`` = noise).
        cluster_centers_: ``(k, d)`` mean of each cluster in the reduced space ``embedding_``.
        embedding_: ``(n, d)`` the features the algorithm saw (L2-normalised, reduced).
        k: number of clusters (noise excluded).
        metrics: ``n``, ``k``, ``noise``, ``silhouette`` and, with one label per image, ``acc``,
            ``nmi``, ``ari`` (and ``n_labelled``).
        k_curve: with ``k="auto"``: ``{"criterion": "silhouette"|"bic", "k": [...], "score": [...]}``.
        sources / truth: the clustered images and their labels (``None`` when unknown).
        skipped: ``(source, reason)`` of the images that could not be read.
        names_: after ``name``: cluster id -> class name; ``name_how_`` says "vote" or "nearest".
        notes: decisions the function took for you (k from the classes, dims capped, ...).
    """

    labels_: np.ndarray
    cluster_centers_: np.ndarray
    embedding_: np.ndarray
    k: int
    algo: str
    features: str
    reduce: str
    dims: int | None
    seed: int
    sources: list
    truth: list | None
    classes: list[str]
    metrics: dict[str, Any]
    k_curve: dict[str, Any] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data_name: str = "data"
    names_: dict[int, str] | None = None
    name_how_: dict[int, str] | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    _pipeline: Any = field(default=None, repr=False)  # FeaturePipeline holding extractor + preprocessing
    _steps: list = field(default_factory=list, repr=False)  # fitted (name, transformer): raw features -> embedding_

    # ------------------------------------------------------------------ basics
    @property
    def sizes(self) -> dict[int, int]:
        """Images per cluster (noise under ``-1`` when present)."""
        ids, counts = np.unique(self.labels_, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts)}

    def members(self, c: int) -> np.ndarray:
        """Indices of cluster ``c``'s images, the most typical (closest to the cluster mean) first."""
        idx = np.flatnonzero(self.labels_ == c)
        if c == NOISE or len(idx) == 0:
            return idx
        d = np.linalg.norm(self.embedding_[idx] - self.cluster_centers_[c], axis=1)
        return idx[np.argsort(d, kind="stable")]

    def top_labels(self, c: int, n: int = 3) -> list[tuple[str, float]]:
        """The most common known labels in cluster ``c`` with their share of its labelled images."""
        if self.truth is None:
            return []
        labs = [self.truth[i] for i in np.flatnonzero(self.labels_ == c) if self.truth[i] is not None]
        if not labs:
            return []
        return [(lab, cnt / len(labs)) for lab, cnt in Counter(labs).most_common(n)]

    def transform(self, F: np.ndarray) -> np.ndarray:
        """Map raw feature rows into the clustering space (the fitted L2 / PCA / UMAP steps)."""
        Z = np.asarray(F, dtype=np.float64)
        for _, step in self._steps:
            Z = step.transform(Z)
        return Z

    def _embed(self, sources: Sequence[ImageSource], description: str = "features") -> tuple[np.ndarray, np.ndarray, list]:
        """(rows in the clustering space, ok mask, errors) for new images."""
        feats = self._pipeline.features(list(sources), description)
        Z = self.transform(feats.X) if len(feats.X) else np.zeros((0, self.embedding_.shape[1]))
        return Z, feats.ok, feats.errors

    def _nearest(self, Z: np.ndarray) -> np.ndarray:
        from sklearn.metrics import pairwise_distances_argmin

        if not len(Z):
            return np.zeros(0, np.int64)
        return np.asarray(pairwise_distances_argmin(Z, self.cluster_centers_), dtype=np.int64)

    def predict(self, images: Sequence[ImageSource] | ImageDataset) -> np.ndarray:
        """Nearest cluster (by its mean in the reduced space) for new images; ``-1`` for unreadable ones."""
        sources = list(images.sources) if isinstance(images, ImageDataset) else list(images)
        Z, ok, _ = self._embed(sources, "features (predict)")
        out = np.full(len(sources), NOISE, dtype=np.int64)
        out[ok] = self._nearest(Z)
        return out

    # ------------------------------------------------------------------ naming -> classifier
    def name(self, labelled: ImageDataset | str | os.PathLike | dict[str, str]):
        """Name every cluster from a few labelled examples and return the classifier this makes.

        ``labelled`` is a dataset, a CSV/JSONL/folder path (``path,label``), or ``{path: label}``.
        Examples that are among the clustered images vote with their cluster; others are assigned to
        the nearest cluster first. A cluster is named by the majority of its labelled members (ties:
        the label closest to the cluster mean wins, then alphabetical order); a cluster with no labelled
        member takes the name of the nearest named cluster. Sets ``names_`` / ``name_how_``.

        Returns a fitted ``FeaturePipeline``: the same feature extractor and pre-processing, then a
        scikit-learn ``Pipeline`` (the fitted L2 → PCA steps, then a multinomial
        ``LogisticRegression``) trained on every clustered image labelled with its cluster's name, so
        its decisions follow the clusters (``model.meta_["clustering"]["agreement"]`` is the share of
        clustered images it gives their cluster's name). ``model.save(dir)`` writes a normal bundle
        (skops, no pickle) that ``imgclass predict`` uses.

        Why logistic regression and not ``NearestCentroid``: measured on CIFAR-10 lite0 embeddings (k-means
        with k = 10 / 20 / 40 on one half, clusters named by majority, scored on the other half),
        ``NearestCentroid`` is 2-3 points more accurate (0.48 / 0.55 / 0.56 against 0.46 / 0.52 / 0.54)
        but its probabilities say 0.92-0.95 on average where it is right half of the time; the logistic
        regression's mean top probability (0.54 / 0.50 / 0.46) matches its accuracy. A 1-nearest-
        centroid rule gives 0/1 probabilities. Sensible probabilities matter more here (thresholds,
        active learning, "unsure" flags), so the logistic regression is the classifier.
        """
        if self.reduce == "umap":
            raise ConfigError("--name-clusters needs --reduce pca or none: a UMAP reduction cannot be saved in a "
                              "model bundle without pickle")
        items = self._labelled_items(labelled)
        pos = {_key(s): i for i, s in enumerate(self.sources)}
        cluster_of: list[int] = []
        labels: list[str] = []
        rows: list[np.ndarray] = []
        outside = [(s, lab) for s, lab in items if _key(s) not in pos or self.labels_[pos[_key(s)]] == NOISE]
        for s, lab in items:
            i = pos.get(_key(s))
            if i is not None and self.labels_[i] != NOISE:
                cluster_of.append(int(self.labels_[i]))
                labels.append(lab)
                rows.append(self.embedding_[i])
        if outside:  # labelled examples that were not clustered (or are noise): nearest cluster mean
            Z, ok, _ = self._embed([src for src, _ in outside], "features (labelled)")
            kept = [lab for (_, lab), good in zip(outside, ok) if good]
            for c, lab, z in zip(self._nearest(Z), kept, Z):
                cluster_of.append(int(c))
                labels.append(lab)
                rows.append(z)
        if not labels:
            raise DataError("--name-clusters: none of the labelled images could be read; check the paths in the file")
        names, how = {}, {}
        for c in range(self.k):
            votes = [(lab, r) for cc, lab, r in zip(cluster_of, labels, rows) if cc == c]
            if not votes:
                continue
            counts = Counter(lab for lab, _ in votes)
            best = max(counts.values())
            tied = sorted(lab for lab, n in counts.items() if n == best)
            if len(tied) > 1:
                dist = {lab: min(np.linalg.norm(r - self.cluster_centers_[c]) for l2, r in votes if l2 == lab)
                        for lab in tied}
                tied = sorted(tied, key=lambda lab: (dist[lab], lab))
            names[c], how[c] = tied[0], "vote"
        if not names:
            raise DataError("--name-clusters: no labelled example fell into a cluster")
        named = sorted(names)
        for c in range(self.k):
            if c not in names:
                d = np.linalg.norm(self.cluster_centers_[named] - self.cluster_centers_[c], axis=1)
                names[c], how[c] = names[named[int(np.argmin(d))]], "nearest"
        self.names_, self.name_how_ = names, how
        classes = sorted(set(names.values()))
        if len(classes) < 2:
            raise DataError(f"--name-clusters: the labelled examples name only one class ({classes[0]!r}); a "
                            "classifier needs examples of at least two classes")
        return self._named_model(classes)

    def _labelled_items(self, labelled) -> list[tuple[ImageSource, str]]:
        if isinstance(labelled, dict):
            return [(str(p), str(lab)) for p, lab in labelled.items()]
        try:
            ds = labelled if isinstance(labelled, ImageDataset) else load_dataset(labelled)
        except DataError as exc:
            raise DataError(f"--name-clusters {labelled}: {exc}") from None
        if not ds.is_labelled or ds.targets.ndim != 1:
            raise DataError(f"--name-clusters {ds.name}: needs one label per image (a path,label CSV, a JSONL "
                            "or a folder per class)")
        return [(s, lab) for s, lab in zip(ds.sources, ds.labels()) if lab is not None]

    def _named_model(self, classes: list[str]):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline

        keep = self.labels_ != NOISE
        y = np.asarray([classes.index(self.names_[int(c)]) for c in self.labels_[keep]], dtype=np.int64)
        # no per-dimension scaling: it would blow up near-zero-variance trailing PCA components. C=1 on
        # these ~unit-norm rows (CIFAR-10 lite0, k=10, held-out half): accuracy 0.46, mean top
        # probability 0.54; C=10: 0.46 but 0.78 (overconfident); C=0.1 gives 88% of the images their
        # cluster's name (C=1: 97%) with top probabilities of 0.28 (underconfident)
        head = [("names", LogisticRegression(C=1.0, max_iter=2000))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on perfectly separated toy data
            named = Pipeline(head).fit(self.embedding_[keep], y)
        agreement = float((named.predict(self.embedding_[keep]) == y).mean())
        clf = Pipeline(list(self._steps) + head)  # raw features -> L2 -> PCA -> names
        base = self._pipeline
        from ..models import FeaturePipeline

        model = FeaturePipeline(base.extractor, clf, preprocess=base.preprocess, seed=self.seed, n_jobs=base.n_jobs,
                                max_pixels=base.max_pixels, method=f"{self.features}+{self.algo}-clusters")
        model.classifier_ = clf
        model.classes_ = list(classes)
        model.task_ = "binary" if len(classes) == 2 else "multiclass"
        model.meta_["clustering"] = {"algo": self.algo, "k": self.k, "reduce": self.reduce, "dims": self.dims,
                                     "agreement": agreement,
                                     "names": {str(c): n for c, n in sorted(self.names_.items())},
                                     "named_by": {str(c): h for c, h in sorted(self.name_how_.items())}}
        return model

    # ------------------------------------------------------------------ reporting
    def cluster_rows(self) -> list[dict[str, Any]]:
        """One row per cluster (noise last): id, size, name, top known labels."""
        rows = []
        ids = sorted(self.sizes, key=lambda c: (c == NOISE, c))
        for c in ids:
            r: dict[str, Any] = {"cluster": c, "size": self.sizes[c]}
            if self.names_ is not None and c != NOISE:
                r["name"], r["named_by"] = self.names_[c], self.name_how_[c]
            if self.truth is not None:
                r["top_labels"] = [[lab, round(share, 4)] for lab, share in self.top_labels(c)]
            rows.append(r)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data_name, "n": len(self.labels_), "features": self.features, "algo": self.algo,
                "reduce": self.reduce, "dims": self.dims, "seed": self.seed, "k": self.k, "metrics": self.metrics,
                "k_curve": self.k_curve, "clusters": self.cluster_rows(), "notes": self.notes,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped], "outputs": self.outputs}

    def write(self, out: str | os.PathLike, montage_size: int = 25, thumb: int = 64) -> dict[str, str]:
        """Write ``clusters.csv`` (path, cluster, label/name when known), ``cluster.json``,
        ``montages/cluster_NN.png`` (the ``montage_size`` most typical members of each cluster),
        ``map.png`` (2-D map coloured by cluster) and, with ``k="auto"``, ``k_curve.png``. Every file is
        written atomically. Returns (and stores in ``outputs``) the paths."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        outputs = {"csv": str(out / "clusters.csv"), "json": str(out / "cluster.json"),
                   "montages": str(out / "montages"), "map": str(out / "map.png")}
        atomic_write_text(out / "clusters.csv", self._csv())
        for c in self.sizes:
            fname = "noise.png" if c == NOISE else f"cluster_{c:02d}.png"
            atomic_write_bytes(out / "montages" / fname, self._montage(c, montage_size, thumb))
        atomic_write_bytes(out / "map.png", self._map_png())
        if self.k_curve:
            atomic_write_bytes(out / "k_curve.png", self._curve_png())
            outputs["k_curve"] = str(out / "k_curve.png")
        self.outputs = outputs
        atomic_write_json(out / "cluster.json", self.to_dict())
        return outputs

    def _csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        header = ["path", "cluster"] + (["label"] if self.truth is not None else []) + (
            ["name"] if self.names_ is not None else [])
        w.writerow(header)
        for i, (src, c) in enumerate(zip(self.sources, self.labels_)):
            row = [src if isinstance(src, str) else f"<bytes #{i}>", int(c)]
            if self.truth is not None:
                row.append("" if self.truth[i] is None else self.truth[i])
            if self.names_ is not None:
                row.append(self.names_.get(int(c), ""))
            w.writerow(row)
        return buf.getvalue()

    def _montage(self, c: int, n: int, thumb: int) -> bytes:
        from PIL import Image, ImageDraw, ImageOps

        idx = self.members(c)[:n]
        cols = max(1, min(5, len(idx)))
        rows = max(1, -(-len(idx) // cols))
        head = 18
        sheet = Image.new("RGB", (cols * (thumb + 2) + 2, rows * (thumb + 2) + 2 + head), (255, 255, 255))
        for j, i in enumerate(idx):
            try:
                img = load_image(self.sources[i], draft_size=thumb)
            except ImageLoadError:
                continue
            img = ImageOps.pad(img, (thumb, thumb), color=(255, 255, 255))
            sheet.paste(img, (2 + (j % cols) * (thumb + 2), head + 2 + (j // cols) * (thumb + 2)))
        title = "noise" if c == NOISE else f"cluster {c}"
        title += f" - {self.sizes.get(c, 0)} images"
        if self.names_ is not None and c in self.names_:
            title += f" - {self.names_[c]}"
        elif self.truth is not None and self.top_labels(c, 1):
            lab, share = self.top_labels(c, 1)[0]
            title += f" - {lab} {share:.0%}"
        ImageDraw.Draw(sheet).text((3, 3), title, fill=(0, 0, 0))
        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        return buf.getvalue()

    def _map_2d(self) -> tuple[np.ndarray, str]:
        Z = self.embedding_
        if Z.shape[1] <= 2:
            return np.pad(Z, ((0, 0), (0, 2 - Z.shape[1]))), "embedding"
        if self.reduce == "umap":
            import umap

            return umap.UMAP(n_components=2, random_state=self.seed).fit_transform(Z), "UMAP"
        from sklearn.decomposition import PCA

        return PCA(2, random_state=self.seed).fit_transform(Z), "PCA"

    def _map_png(self) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        XY, how = self._map_2d()
        panels = [("cluster", self.labels_)]
        if self.truth is not None:
            lab = np.asarray([self.classes.index(t) if t is not None else NOISE for t in self.truth])
            panels.append(("label", lab))
        fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.4), squeeze=False)
        for ax, (what, ids) in zip(axes[0], panels):
            uniq = [u for u in np.unique(ids) if u != NOISE]
            cmap = plt.get_cmap("tab10" if len(uniq) <= 10 else "tab20" if len(uniq) <= 20 else "hsv",
                                max(len(uniq), 1))
            noise = ids == NOISE
            if noise.any():
                ax.scatter(XY[noise, 0], XY[noise, 1], s=5, c="#bbbbbb", label="noise" if what == "cluster" else "unlabelled")
            for j, u in enumerate(uniq):
                m = ids == u
                name = self.classes[u] if what == "label" else (
                    f"{u}: {self.names_[u]}" if self.names_ is not None else str(u))
                ax.scatter(XY[m, 0], XY[m, 1], s=7, color=cmap(j), label=name)
            if len(uniq) <= 20:
                ax.legend(fontsize=7, markerscale=2, loc="best", title=what)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"coloured by {what}")
        m = self.metrics
        score = "  ".join(f"{key.upper()} {m[key]:.3f}" for key in ("acc", "nmi", "ari") if m.get(key) is not None)
        fig.suptitle(f"{self.features} → {self.reduce} → {self.algo}: k = {self.k}   {score}   ({how} to 2-D)",
                     fontsize=10)
        fig.tight_layout()
        return figure_png(fig, dpi=100)

    def _curve_png(self) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cur = self.k_curve
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ks = [k for k, s in zip(cur["k"], cur["score"]) if s is not None]
        ss = [s for s in cur["score"] if s is not None]
        ax.plot(ks, ss, marker="o")
        ax.axvline(cur["chosen"], color="tab:red", ls="--", label=f"chosen k = {cur['chosen']}")
        ax.set_xlabel("k")
        ax.set_ylabel("BIC (lower is better)" if cur["criterion"] == "bic" else "silhouette (higher is better)")
        ax.set_xticks(ks)
        ax.legend()
        ax.set_title(f"choosing k for {self.algo} on {self.features}")
        fig.tight_layout()
        return figure_png(fig, dpi=100)


def _key(src: ImageSource) -> str:
    return os.path.realpath(src) if isinstance(src, (str, os.PathLike)) else f"bytes:{id(src)}"


# --------------------------------------------------------------------------- the function
def _scan_clusters(features: str) -> int | None:
    """The number of clusters a ``pretrain --method scan`` or ``selflabel`` run in ``features`` was trained
    for, else None."""
    from ..features.backbones import pretrained_dir, read_pretrained_dir
    from .pretrain import CLUSTER_METHODS

    folder = pretrained_dir(features)
    if folder is None:
        return None
    info = read_pretrained_dir(folder)
    return int(info["config"]["clusters"]) if info.get("method") in CLUSTER_METHODS else None


def _as_dataset(data) -> ImageDataset:
    if isinstance(data, ImageDataset):
        return data
    if isinstance(data, (list, tuple)):
        return from_paths(data)
    return load_dataset(data)


def _reduce_steps(F: np.ndarray, reduce: str, dims: int | None, whiten: bool, normalize: bool, seed: int,
                  notes: list[str]) -> list:
    """The fitted (name, transformer) chain L2 → PCA/UMAP (→ L2 after whitening)."""
    from sklearn.preprocessing import Normalizer

    steps: list = []
    Z = F
    if normalize:
        steps.append(("l2", Normalizer()))
        Z = steps[-1][1].fit_transform(Z)
    if reduce == "none":
        return steps
    n, d = Z.shape
    target = int(dims or 50)
    if reduce == "pca":
        from sklearn.decomposition import PCA

        cap = max(1, min(n - 1, d))  # centred data has rank n - 1 at most
        if target > cap:
            notes.append(f"dims {target} is more than the data has ({n} images x {d} features): PCA keeps "
                         f"{cap} components")
            target = cap
        pca = PCA(n_components=target, whiten=whiten, random_state=seed)
        Z = pca.fit_transform(Z)
        steps.append(("pca", pca))
        if whiten and normalize:
            steps.append(("l2_after_whitening", Normalizer().fit(Z)))
    else:  # umap
        try:
            import umap
        except ImportError:
            raise ConfigError("--reduce umap: UMAP is not installed; pip install umap-learn, or use --reduce pca") from None
        target = min(target, max(2, n - 2))
        red = umap.UMAP(n_components=target, random_state=seed, n_neighbors=min(15, n - 1))
        red.fit(Z)
        steps.append(("umap", red))
    return steps


def cluster(data: ImageDataset | str | os.PathLike | Sequence[str], features: str = "lite0", algo: str = "kmeans",
            k: int | str | None = None, *, reduce: str = "pca", dims: int | None = 50, whiten: bool = False,
            normalize: bool = True, seed: int = 0, out: str | os.PathLike | None = None,
            k_range: tuple[int, int] = (2, 20), params: dict[str, Any] | None = None,
            preprocess: Any = None, n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            log: Callable[[str], Any] = lambda m: None) -> ClusterResult:
    """Cluster the images of ``data`` (a folder — labelled by sub-folders or flat and unlabelled —, a
    CSV/JSONL file, an ``ImageDataset`` or a list of image paths).

    Args:
        features: feature spec as in method specs: ``lite0`` (frozen EfficientNet-Lite0 embeddings,
            cached on disk), ``hog``, ``color_hist``, ``pixels``, ``hog,color_hist``, ...
        algo: one of ``ALGORITHMS``.
        k: number of clusters; ``"auto"`` picks the ``k`` in ``k_range`` with the best silhouette
            (lowest BIC for ``gmm``); ``None`` means the number of classes for labelled data, else
            ``"auto"``. Must stay ``None``/``"auto"`` for ``dbscan``, ``hdbscan`` and ``meanshift``.
        reduce, dims, whiten: ``pca`` (default) to ``dims`` components, ``umap`` (needs umap-learn) or
            ``none``; ``whiten`` scales the PCA components to unit variance (then re-normalises rows).
        normalize: L2-normalise each feature row first (cosine geometry).
        params: extra keyword arguments for the scikit-learn algorithm (e.g. ``{"eps": 0.3}``).
        preprocess: a ``Preprocess`` or its dict (default: the features' own pre-processing).
        out: when given, ``ClusterResult.write(out)`` is called.

    Unreadable images are skipped and listed in ``result.skipped``. User errors raise ``ConfigError``
    or ``DataError`` naming the option and what to do.
    """
    from ..features import extractor_names, make_extractor
    from ..models import FeaturePipeline
    from ..transforms import Preprocess

    algo = (algo or "").strip().lower()
    if algo not in ALGORITHMS:
        raise ConfigError(f"--algo {algo or '(empty)'}: unknown algorithm; choose from {', '.join(ALGORITHMS)}")
    if reduce not in REDUCTIONS:
        raise ConfigError(f"--reduce {reduce}: choose none, pca or umap")
    if dims is not None and int(dims) < 1:
        raise ConfigError(f"--dims {dims}: give a positive number of dimensions (e.g. 50)")
    if isinstance(k, str) and k != "auto":
        try:
            k = int(k)
        except ValueError:
            raise ConfigError(f"--k {k}: give a number of clusters (e.g. 10) or 'auto'") from None
    if algo in SELF_K and isinstance(k, int):
        raise ConfigError(f"--k {k}: {algo} finds the number of clusters itself; drop --k (tune it with "
                          f"{'--param eps=...' if algo == 'dbscan' else '--param min_cluster_size=...' if algo == 'hdbscan' else '--param bandwidth=...'})")
    if isinstance(k, int) and k < 2:
        raise ConfigError(f"--k {k}: give at least 2 clusters")
    lo, hi = (int(v) for v in k_range)
    if lo < 2 or hi < lo:
        raise ConfigError(f"k range {lo}..{hi}: needs 2 <= k-min <= k-max")

    ds = _as_dataset(data)
    if isinstance(k, int) and k > len(ds):
        raise ConfigError(f"--k {k}: {ds.name} has only {len(ds)} images; choose at most {len(ds)}")
    try:
        extractor = make_extractor(features)
    except ConfigError as exc:
        raise ConfigError(f"--features {features}: {exc}") from None
    if preprocess is not None and not isinstance(preprocess, Preprocess):
        preprocess = Preprocess.from_dict(preprocess)
    pipe = FeaturePipeline(extractor, "logreg", preprocess=preprocess, seed=seed, n_jobs=n_jobs,
                           max_pixels=max_pixels)
    pipe.fit_extractor(ds.sources)
    feats = pipe.features(ds.sources, f"features ({features})")
    skipped = list(ds.skipped) + list(feats.errors)
    n = len(feats.X)
    if n < 2:
        raise DataError(f"{ds.name}: {n} readable image{'s' if n != 1 else ''} of {len(ds)}; clustering needs at "
                        "least 2 (see the skipped files)" + (f", e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""))
    if isinstance(k, int) and k > n:
        raise ConfigError(f"--k {k}: only {n} of the {len(ds)} images are readable; choose at most {n}")
    sources = [s for s, good in zip(ds.sources, feats.ok) if good]
    truth, classes, y = None, list(ds.classes), None
    notes: list[str] = []
    if ds.is_labelled and ds.targets.ndim == 1:
        t = ds.targets[feats.ok]
        truth = [classes[int(v)] if v >= 0 else None for v in t]
        y = t
    elif ds.is_labelled:
        notes.append("labels are multi-label: ACC/NMI/ARI need one label per image and are not computed")

    if k is None and algo not in SELF_K:
        n_cls = len(np.unique(y[y >= 0])) if y is not None else 0
        if 2 <= n_cls < n:
            k = n_cls
            notes.append(f"k = {k}: the number of classes in {ds.name} (use --k auto to choose it by "
                         f"{'BIC' if algo == 'gmm' else 'silhouette'})")
        elif scan_k := _scan_clusters(features):
            k = scan_k
            notes.append(f"k = {k}: the --clusters of the pretrain run {features} (use --k auto to choose it by "
                         f"{'BIC' if algo == 'gmm' else 'silhouette'})")
        else:
            k = "auto"
    if algo in SELF_K and k == "auto":
        notes.append(f"{algo} finds the number of clusters itself; k=auto is not needed")
        k = None

    steps = _reduce_steps(feats.X.astype(np.float64), reduce, dims, whiten, normalize, seed, notes)
    Z = feats.X.astype(np.float64)
    for _, s in steps:
        Z = s.transform(Z)
    Z = np.ascontiguousarray(Z, dtype=np.float64)
    used_dims = Z.shape[1]

    k_curve = None
    if k == "auto":
        ks = list(range(lo, min(hi, n - 1) + 1))
        if not ks:
            raise ConfigError(f"--k auto: {n} images are too few to compare k = {lo}..{hi}; give --k")
        crit = "bic" if algo == "gmm" else "silhouette"
        scores, fits = [], {}
        with progress_bar(len(ks), f"choosing k ({crit})", unit="k") as bar:
            for kk in ks:
                labels, est = _fit_labels(algo, kk, Z, seed, params)
                fits[kk] = labels
                scores.append(float(est.bic(Z)) if crit == "bic" else _silhouette(Z, labels, seed))
                bar.advance(1)
        valid = [(s, kk) for s, kk in zip(scores, ks) if s is not None]
        if not valid:
            raise DataError(f"--k auto: no k in {lo}..{hi} gave a usable {crit} on {ds.name}; give --k")
        best_k = (min(valid) if crit == "bic" else max(valid, key=lambda t: (t[0], -t[1])))[1]
        k_curve = {"criterion": crit, "k": ks, "score": scores, "chosen": best_k}
        labels = fits[best_k]
        log(f"k = {best_k} by {crit}")
    else:
        labels, _ = _fit_labels(algo, k, Z, seed, params)

    # relabel: 0 = the largest cluster, then by size; noise stays -1
    ids, counts = np.unique(labels[labels != NOISE], return_counts=True)
    order = ids[np.lexsort((ids, -counts))]
    remap = {int(old): new for new, old in enumerate(order)}
    labels = np.asarray([remap.get(int(v), NOISE) for v in labels], dtype=np.int64)
    n_clusters = len(order)
    centers = (np.stack([Z[labels == c].mean(axis=0) for c in range(n_clusters)]) if n_clusters
               else np.zeros((0, used_dims)))
    if n_clusters == 0:
        notes.append(f"{algo} put every image in noise; loosen it with --param (e.g. a larger eps)")

    metrics: dict[str, Any] = {"n": n, "k": n_clusters, "noise": int((labels == NOISE).sum()),
                               "silhouette": _silhouette(Z, labels, seed)}
    if y is not None and (y >= 0).any():
        lab = y >= 0
        metrics.update(clustering_metrics(y[lab], labels[lab]))
        metrics["n_labelled"] = int(lab.sum())
        metrics["classes"] = len(np.unique(y[lab]))

    res = ClusterResult(labels_=labels, cluster_centers_=centers, embedding_=Z, k=n_clusters, algo=algo,
                        features=",".join(extractor_names(extractor)),
                        reduce=reduce, dims=used_dims if reduce != "none" else None, seed=seed, sources=sources,
                        truth=truth, classes=classes, metrics=metrics, k_curve=k_curve, skipped=skipped,
                        notes=notes, data_name=ds.name, _pipeline=pipe, _steps=steps)
    if out is not None:
        res.write(out)
    return res


__all__ = ["ALGORITHMS", "REDUCTIONS", "SELF_K", "ClusterResult", "cluster", "cluster_accuracy", "clustering_metrics",
           "make_algorithm"]
