"""Outliers on embeddings: scikit-learn's LocalOutlierFactor or IsolationForest, over the whole set and
within each class; an image's score is the larger of its two robust z-scores."""

from __future__ import annotations

import os

import numpy as np

from .quality import robust_z

METHODS = ("lof", "iforest")


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


__all__ = ["METHODS", "outlier_scores", "reduce_embeddings"]


# ----------------------------------------------------------------------------- multi-layer statistics
#: stages of an EfficientNet-Lite whose pooled activations the ``layers`` detector uses (timm ``blocks``
#: index: 2 = 40 channels at 1/8 resolution, 3 = 80 at 1/16, 4 = 112 at 1/16, 5 = 192 at 1/32)
LAYER_BLOCKS = (2, 3, 4, 5)


def _layer_module(backbone: str, pretrained):
    """A torch module: image -> [mean and std over positions of each ``LAYER_BLOCKS`` stage] + for each
    of those stages and the final 1280-channel map, two spatial statistics on the map pooled to 7 x 7:
    cosine(centre 3 x 3 mean, border ring mean) and the mean cosine of every position to the map's mean."""
    import torch
    import torch.nn.functional as F

    from ..features.backbones import create_backbone

    class LayerStats(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = create_backbone(backbone, pretrained=pretrained, num_classes=0).eval()

        @staticmethod
        def _spatial(x):
            k = int(x.shape[-1]) // 7  # the ONNX graph has a fixed input size: a constant kernel
            x = F.avg_pool2d(x, k) if k > 1 else x
            centre = x[:, :, 2:5, 2:5].mean((2, 3))
            border = (x.sum((2, 3)) - x[:, :, 1:6, 1:6].sum((2, 3))) / 24
            cb = F.cosine_similarity(centre, border, dim=1, eps=1e-6)
            mean = x.mean((2, 3), keepdim=True)
            uni = F.cosine_similarity(x, mean.expand_as(x), dim=1, eps=1e-6).mean((1, 2))
            return [cb[:, None], uni[:, None]]

        def forward(self, x):
            m = self.m
            x = m.bn1(m.conv_stem(x))
            pooled, spatial = [], []
            for i, b in enumerate(m.blocks):
                x = b(x)
                if i in LAYER_BLOCKS:
                    pooled += [x.mean((2, 3)), x.std((2, 3))]
                    spatial += self._spatial(x)
            spatial += self._spatial(m.bn2(m.conv_head(x)))
            return torch.cat(pooled + spatial, 1)

    return LayerStats()


def layer_statistics(sources, extractor, preprocess, n_jobs: int | None = None, max_pixels=None) -> tuple[np.ndarray, np.ndarray]:
    """``(X, ok)``: the multi-layer statistics of ``_layer_module`` for every source, with ``extractor``'s
    backbone (a ``DeepEmbedding``) and pre-processing; cached on disk like the embeddings."""
    from ..features import extract_features
    from ..features.deep import DeepEmbedding, cache_dir, export_onnx

    class LayerStatistics(DeepEmbedding):
        def _model_key(self) -> str:
            return super()._model_key() + "-layerstats-v1"

        def prepare(self) -> str:
            if self._onnx_path and os.path.exists(self._onnx_path):
                return self._onnx_path
            path = cache_dir() / "onnx" / f"{self._model_key()}-{self.size}.onnx"
            if not path.exists():
                export_onnx(_layer_module(self.backbone, self.pretrained), self.size, path)
            self._onnx_path = str(path)
            return self._onnx_path

    ext = LayerStatistics(extractor.backbone, extractor.pretrained, extractor.size, tta=False,
                          batch_size=extractor.batch_size, cache=extractor.cache)
    f = extract_features(ext, list(sources), preprocess, n_jobs=n_jobs, max_pixels=max_pixels,
                         description="outlier features (layers)")
    return f.X, f.ok
