"""Classical feature extractors built on scikit-image and OpenCV.

Each extractor takes ``HxWx3`` uint8 arrays and returns one float32 row per image. Histogram
features are L1-normalised and square-rooted (the Hellinger map) so that linear models and RBF
kernels compare them sensibly.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    if img.shape[0] == size and img.shape[1] == size:
        return img
    import cv2

    interp = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interp)


def _gray(img: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _hellinger(h: np.ndarray) -> np.ndarray:
    h = np.asarray(h, dtype=np.float64)
    s = h.sum()
    return np.sqrt(h / s) if s > 0 else h


def _grid(img: np.ndarray, n: int):
    h, w = img.shape[:2]
    for i in range(n):
        for j in range(n):
            yield img[i * h // n:(i + 1) * h // n, j * w // n:(j + 1) * w // n]


class FeatureExtractor:
    """Base class: ``fit(images)`` (optional) then ``transform(images) -> (n, d) float32``.

    Hyper-parameters are constructor arguments (``get_params`` returns them as JSON); learned state
    lives in attributes ending in ``_`` and is exported by ``get_state`` / ``set_state`` as numpy
    arrays so bundles never need pickle.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    needs_fit: ClassVar[bool] = False
    #: per-classifier hyper-parameters that suit this extractor's features (overrides the defaults)
    classifier_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    size: int = 64

    def get_params(self) -> dict[str, Any]:
        return dict(self._params)

    def fit(self, images: list[np.ndarray]) -> FeatureExtractor:
        return self

    def transform_one(self, img: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def transform(self, images: list[np.ndarray]) -> np.ndarray:
        return np.stack([np.asarray(self.transform_one(im), dtype=np.float32).ravel() for im in images])

    def get_state(self) -> dict[str, np.ndarray]:
        return {}

    def prepare(self) -> None:
        """One-time set-up in the main process before workers start (e.g. exporting a model)."""

    def preprocess_defaults(self) -> dict[str, Any]:
        """The pre-processing this extractor expects when the user gives none."""
        return {"size": self.size}

    def set_state(self, state: dict[str, np.ndarray]) -> None:
        pass

    @property
    def is_fitted(self) -> bool:
        return True

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({args})"


class Pixels(FeatureExtractor):
    name = "pixels"
    description = "raw pixels, downsized (default 16x16, colour), scaled to [0, 1]"

    def __init__(self, size: int = 16, gray: bool = False):
        self.size, self.gray = size, gray
        self._params = {"size": size, "gray": gray}

    def transform_one(self, img):
        im = _resize(img, self.size)
        if self.gray:
            im = _gray(im)
        return im.astype(np.float32) / 255.0


class ColorHist(FeatureExtractor):
    name = "color_hist"
    description = "joint HSV colour histogram (8x4x4 bins), Hellinger-normalised"

    def __init__(self, bins: tuple[int, int, int] = (8, 4, 4), size: int = 64):
        self.bins, self.size = tuple(bins), size
        self._params = {"bins": list(bins), "size": size}

    def transform_one(self, img):
        import cv2

        hsv = cv2.cvtColor(_resize(img, self.size), cv2.COLOR_RGB2HSV)
        h = cv2.calcHist([hsv], [0, 1, 2], None, list(self.bins), [0, 180, 0, 256, 0, 256])
        return _hellinger(h.ravel())


class HOG(FeatureExtractor):
    name = "hog"
    description = "histogram of oriented gradients (scikit-image; 64x64 image, 9 orientations, 4x4 cells, 2x2 blocks)"

    # A coarse 4x4 cell grid (16 px cells of a 64 px image): finer cells mostly describe noise at
    # thumbnail scale.
    def __init__(self, size: int = 64, orientations: int = 9, pixels_per_cell: int = 16,
                 cells_per_block: int = 2, color: bool = True):
        self.size, self.orientations, self.ppc, self.cpb, self.color = size, orientations, pixels_per_cell, cells_per_block, color
        self._params = {"size": size, "orientations": orientations, "pixels_per_cell": pixels_per_cell,
                        "cells_per_block": cells_per_block, "color": color}

    def transform_one(self, img):
        from skimage.feature import hog

        im = _resize(img, self.size)
        kw = {"channel_axis": -1} if self.color else {}
        if not self.color:
            im = _gray(im)
        return hog(im, orientations=self.orientations, pixels_per_cell=(self.ppc, self.ppc),
                   cells_per_block=(self.cpb, self.cpb), block_norm="L2-Hys", feature_vector=True, **kw)


class LBP(FeatureExtractor):
    name = "lbp"
    description = "uniform local binary patterns at two radii, histograms over a 2x2 grid"

    def __init__(self, size: int = 64, radii: tuple[int, ...] = (1, 2), grid: int = 2):
        self.size, self.radii, self.grid = size, tuple(radii), grid
        self._params = {"size": size, "radii": list(radii), "grid": grid}

    def transform_one(self, img):
        from skimage.feature import local_binary_pattern

        g = _gray(_resize(img, self.size))
        feats = []
        for r in self.radii:
            p = 8 * r
            codes = local_binary_pattern(g, p, r, method="uniform")
            for cell in _grid(codes, self.grid):
                feats.append(_hellinger(np.bincount(cell.astype(np.int64).ravel(), minlength=p + 2)))
        return np.concatenate(feats)


class Edges(FeatureExtractor):
    name = "edges"
    description = "Sobel edge-orientation histograms on a 4x4 grid plus Canny edge density"

    def __init__(self, size: int = 64, bins: int = 8, grid: int = 4):
        self.size, self.bins, self.grid = size, bins, grid
        self._params = {"size": size, "bins": bins, "grid": grid}

    def transform_one(self, img):
        from skimage.feature import canny
        from skimage.filters import sobel_h, sobel_v

        g = _gray(_resize(img, self.size)).astype(np.float64) / 255.0
        gx, gy = sobel_v(g), sobel_h(g)
        mag = np.hypot(gx, gy)
        ang = np.mod(np.arctan2(gy, gx), np.pi)  # unsigned orientation
        b = np.minimum((ang / np.pi * self.bins).astype(np.int64), self.bins - 1)
        edges = canny(g, sigma=1.0)
        feats = []
        for cb, cm, ce in zip(_grid(b, self.grid), _grid(mag, self.grid), _grid(edges, self.grid)):
            feats.append(_hellinger(np.bincount(cb.ravel(), weights=cm.ravel(), minlength=self.bins)))
            feats.append([ce.mean()])
        return np.concatenate(feats)


class Gabor(FeatureExtractor):
    name = "gabor"
    description = "Gabor filter bank (4 orientations x 3 wavelengths, OpenCV): mean/std energy on a 2x2 grid"

    def __init__(self, size: int = 64, orientations: int = 4, wavelengths: tuple[float, ...] = (4.0, 8.0, 16.0),
                 grid: int = 2):
        self.size, self.orientations, self.wavelengths, self.grid = size, orientations, tuple(wavelengths), grid
        self._params = {"size": size, "orientations": orientations, "wavelengths": list(wavelengths), "grid": grid}
        self._kernels = None

    def _bank(self):
        import cv2

        if self._kernels is None:
            self._kernels = [
                cv2.getGaborKernel((21, 21), sigma=0.56 * lam, theta=np.pi * k / self.orientations,
                                   lambd=lam, gamma=0.5, psi=0).astype(np.float32)
                for lam in self.wavelengths for k in range(self.orientations)
            ]
        return self._kernels

    def transform_one(self, img):
        import cv2

        g = _gray(_resize(img, self.size)).astype(np.float32) / 255.0
        feats = []
        for k in self._bank():
            resp = np.abs(cv2.filter2D(g, cv2.CV_32F, k))
            for cell in _grid(resp, self.grid):
                feats += [cell.mean(), cell.std()]
        return np.asarray(feats)


class GLCM(FeatureExtractor):
    name = "glcm"
    description = "grey-level co-occurrence texture statistics (scikit-image; 2 distances x 4 angles)"

    PROPS = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")

    def __init__(self, size: int = 64, levels: int = 32, distances: tuple[int, ...] = (1, 3)):
        self.size, self.levels, self.distances = size, levels, tuple(distances)
        self._params = {"size": size, "levels": levels, "distances": list(distances)}

    def transform_one(self, img):
        from skimage.feature import graycomatrix, graycoprops

        g = (_gray(_resize(img, self.size)).astype(np.int64) * self.levels // 256).astype(np.uint8)
        m = graycomatrix(g, self.distances, [0, np.pi / 4, np.pi / 2, 3 * np.pi / 4], levels=self.levels,
                         symmetric=True, normed=True)
        return np.concatenate([np.nan_to_num(graycoprops(m, p).ravel()) for p in self.PROPS])


class _BagOfWords(FeatureExtractor):
    """Dense local descriptors quantised against a k-means codebook (MiniBatchKMeans).

    Learned state: ``codebook_`` (k x d). Histograms over the codebook plus a 2x2 spatial pyramid
    level are Hellinger-normalised.
    """

    needs_fit = True

    def __init__(self, size: int = 96, step: int = 8, patch: int = 16, k: int = 256, max_descriptors: int = 100_000,
                 seed: int = 0):
        self.size, self.step, self.patch, self.k, self.max_descriptors, self.seed = size, step, patch, k, max_descriptors, seed
        self._params = {"size": size, "step": step, "patch": patch, "k": k, "max_descriptors": max_descriptors,
                        "seed": seed}
        self.codebook_: np.ndarray | None = None

    def _keypoints(self, n: int):
        import cv2

        half = self.patch // 2 + 1
        return [cv2.KeyPoint(float(x), float(y), float(self.patch))
                for y in range(half, n - half + 1, self.step) for x in range(half, n - half + 1, self.step)]

    def _descriptors(self, img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        g = _gray(_resize(img, self.size))
        kps = self._keypoints(self.size)
        kps, desc = self._compute(g, kps)
        if desc is None or len(kps) == 0:
            return np.zeros((0, self.dim), np.float32), np.zeros((0, 2), np.float32)
        xy = np.array([kp.pt for kp in kps], dtype=np.float32)
        return self._as_float(desc), xy

    def _as_float(self, desc: np.ndarray) -> np.ndarray:
        return desc.astype(np.float32)

    def fit(self, images):
        from sklearn.cluster import MiniBatchKMeans

        rng = np.random.default_rng(self.seed)
        descs = [self._descriptors(im)[0] for im in images]
        all_desc = np.concatenate([d for d in descs if len(d)] or [np.zeros((0, self.dim), np.float32)])
        if len(all_desc) < self.k:
            from ..errors import DataError

            raise DataError(f"{self.name}: only {len(all_desc)} descriptors for a {self.k}-word codebook; "
                            "use more or larger training images")
        if len(all_desc) > self.max_descriptors:
            all_desc = all_desc[rng.choice(len(all_desc), self.max_descriptors, replace=False)]
        km = MiniBatchKMeans(n_clusters=self.k, random_state=self.seed, n_init=3, batch_size=4096)
        km.fit(all_desc)
        self.codebook_ = km.cluster_centers_.astype(np.float32)
        return self

    def transform_one(self, img):
        from sklearn.metrics import pairwise_distances_argmin

        if self.codebook_ is None:
            raise RuntimeError(f"{self.name} extractor used before fit")
        desc, xy = self._descriptors(img)
        feats = []
        words = pairwise_distances_argmin(desc, self.codebook_) if len(desc) else np.zeros(0, np.int64)
        feats.append(_hellinger(np.bincount(words, minlength=self.k)))
        half = self.size / 2
        for qy in (0, 1):
            for qx in (0, 1):
                m = ((xy[:, 0] >= half) == bool(qx)) & ((xy[:, 1] >= half) == bool(qy)) if len(xy) else np.zeros(0, bool)
                feats.append(0.5 * _hellinger(np.bincount(words[m], minlength=self.k)))
        return np.concatenate(feats)

    @property
    def is_fitted(self) -> bool:
        return self.codebook_ is not None

    def get_state(self):
        return {} if self.codebook_ is None else {"codebook": self.codebook_}

    def set_state(self, state):
        if "codebook" in state:
            self.codebook_ = np.asarray(state["codebook"], dtype=np.float32)


class SIFTBoW(_BagOfWords):
    name = "sift"
    description = "dense SIFT descriptors (OpenCV), bag of visual words with a k-means codebook (k=256)"
    dim = 128

    def _compute(self, g, kps):
        import cv2

        return cv2.SIFT_create().compute(g, kps)


class ORBBoW(_BagOfWords):
    name = "orb"
    description = "dense ORB binary descriptors (OpenCV), bag of visual words with a k-means codebook"
    dim = 256

    def __init__(self, size: int = 128, step: int = 8, patch: int = 31, k: int = 256, max_descriptors: int = 100_000,
                 seed: int = 0):
        super().__init__(size=size, step=step, patch=patch, k=k, max_descriptors=max_descriptors, seed=seed)

    def _compute(self, g, kps):
        import cv2

        return cv2.ORB_create(edgeThreshold=self.patch, patchSize=self.patch).compute(g, kps)

    def _as_float(self, desc):
        return np.unpackbits(desc, axis=1).astype(np.float32)


EXTRACTORS: dict[str, type[FeatureExtractor]] = {
    cls.name: cls for cls in (Pixels, ColorHist, HOG, LBP, Edges, Gabor, GLCM, SIFTBoW, ORBBoW)
}
