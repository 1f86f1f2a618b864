"""The clustering step: L2 → PCA/UMAP reduction, then a scikit-learn algorithm with data-adapted defaults."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import numpy as np

from ...errors import ConfigError
from .metrics import NOISE

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
