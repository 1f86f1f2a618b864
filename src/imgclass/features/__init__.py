"""Feature extraction: classical extractors, their combination, and parallel extraction from files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._util import progress_bar
from ..data.decode import DEFAULT_MAX_PIXELS, ImageSource, load_image, source_bytes, source_name
from ..errors import ConfigError, ImageLoadError
from ..transforms import Preprocess
from .classical import EXTRACTORS, FeatureExtractor


class Concat(FeatureExtractor):
    """Several extractors side by side (``hog,color_hist``): their rows are concatenated."""

    name = "concat"

    def __init__(self, parts: Sequence[FeatureExtractor]):
        self.parts = list(parts)
        self._params = {}
        self.size = max(p.size for p in self.parts)

    @property
    def needs_fit(self) -> bool:  # type: ignore[override]
        return any(p.needs_fit for p in self.parts)

    @property
    def is_fitted(self) -> bool:
        return all(p.is_fitted for p in self.parts)

    def fit(self, images):
        for p in self.parts:
            if p.needs_fit:
                p.fit(images)
        return self

    def transform(self, images):
        return np.hstack([p.transform(images) for p in self.parts]).astype(np.float32)

    def prepare(self):
        for p in self.parts:
            p.prepare()

    @property
    def classifier_defaults(self):  # type: ignore[override]
        deep = [p for p in self.parts if getattr(p, "cacheable", False)]
        return deep[0].classifier_defaults if len(deep) == len(self.parts) else {}

    def preprocess_defaults(self):
        deep = [p for p in self.parts if getattr(p, "cacheable", False)]
        return deep[0].preprocess_defaults() if deep else {"size": self.size}

    def get_state(self):
        return {f"{i}.{k}": v for i, p in enumerate(self.parts) for k, v in p.get_state().items()}

    def set_state(self, state):
        for i, p in enumerate(self.parts):
            p.set_state({k.split(".", 1)[1]: v for k, v in state.items() if k.split(".", 1)[0] == str(i)})

    def __repr__(self):
        return " + ".join(repr(p) for p in self.parts)


def make_extractor(names: str | Sequence[str], params: dict[str, dict[str, Any]] | None = None) -> FeatureExtractor:
    """Build an extractor from names (``"hog,color_hist"``) and optional per-name parameters."""
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    params = params or {}
    parts = []
    for n in names:
        try:
            if n in EXTRACTORS:
                parts.append(EXTRACTORS[n](**params.get(n, {})))
                continue
            from .deep import DeepEmbedding, is_backbone_name

            if not is_backbone_name(n):
                raise ConfigError(f"unknown features {n!r}; choose from {', '.join(EXTRACTORS)}, lite0/lite1/lite2 "
                                  "or a timm backbone name (see 'imgclass methods')")
            kw = dict(params.get(n, {}))
            kw.setdefault("backbone", n)
            parts.append(DeepEmbedding(**kw))
        except TypeError as exc:
            raise ConfigError(f"features {n}: bad parameters {params.get(n)} ({exc})") from None
    if not parts:
        raise ConfigError("no feature extractor named; use e.g. 'hog' or 'hog,color_hist'")
    return parts[0] if len(parts) == 1 else Concat(parts)


def extractor_names(ex: FeatureExtractor) -> list[str]:
    return [p.name for p in ex.parts] if isinstance(ex, Concat) else [ex.name]


def extractor_params(ex: FeatureExtractor) -> dict[str, dict[str, Any]]:
    parts = ex.parts if isinstance(ex, Concat) else [ex]
    return {p.name: p.get_params() for p in parts}


@dataclass
class Features:
    """The result of extracting features from a list of sources.

    ``X`` holds one row per *readable* image; ``ok`` marks which input positions those are;
    ``errors`` lists ``(source, reason)`` for the skipped ones.
    """

    X: np.ndarray
    ok: np.ndarray
    errors: list[tuple[str, str]] = field(default_factory=list)


def load_arrays(sources: Sequence[ImageSource], preprocess: Preprocess, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """Decode and pre-process; returns (arrays, ok mask, errors) without raising on bad files."""
    arrays, ok, errors = [], np.zeros(len(sources), dtype=bool), []
    draft = None
    if isinstance(preprocess.size, int):
        draft = preprocess.size
    elif preprocess.size is not None:
        draft = max(preprocess.size)
    for i, src in enumerate(sources):
        try:
            img = load_image(src, max_pixels=max_pixels, draft_size=draft)
            arrays.append(preprocess.to_array(img))
            ok[i] = True
        except ImageLoadError as exc:
            errors.append((exc.path, exc.reason))
    return arrays, ok, errors


def _content_key(src: ImageSource) -> str | None:
    import hashlib

    if isinstance(src, (bytes, bytearray)):
        return hashlib.sha1(src).hexdigest()
    try:
        return hashlib.sha1(source_bytes(src)).hexdigest()  # a file or a tar-shard member
    except (OSError, TypeError):
        return None


def _chunk_worker(extractor: FeatureExtractor, preprocess: Preprocess, sources: Sequence[ImageSource],
                  max_pixels: int | None, namespace: str | None = None):
    """Decode, pre-process and describe one chunk. With a cache ``namespace``, rows already in the
    embedding cache are read instead of computed, and the new rows are returned for storing."""
    try:  # one thread per worker: the workers are the parallelism
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover - cv2 always present, but never fail a worker on it
        pass
    if namespace is None:
        arrays, ok, errors = load_arrays(sources, preprocess, max_pixels)
        X = extractor.transform(arrays) if arrays else None
        return len(sources), (X, ok, errors, [])
    from .deep import EmbeddingCache

    cache = EmbeddingCache(namespace)
    keys = [_content_key(s) for s in sources]
    hits = cache.get_many([k for k in keys if k])
    todo = [i for i, k in enumerate(keys) if k not in hits]
    arrays, ok_todo, errors = load_arrays([sources[i] for i in todo], preprocess, max_pixels)
    computed = extractor.transform(arrays) if arrays else None
    rows: dict[int, np.ndarray] = {}
    new = []
    for j, i in enumerate(np.asarray(todo)[ok_todo] if todo else []):
        rows[int(i)] = computed[j]
        if keys[i]:
            new.append((keys[i], computed[j]))
    for i, k in enumerate(keys):
        if k in hits:
            rows[i] = hits[k]
    ok = np.zeros(len(sources), dtype=bool)
    ok[list(rows)] = True
    X = np.stack([rows[i] for i in sorted(rows)]) if rows else None
    return len(sources), (X, ok, errors, new)


def default_jobs() -> int:
    return int(os.environ.get("IMGCLASS_JOBS", "0")) or (os.cpu_count() or 1)


def extract_features(extractor: FeatureExtractor, sources: Sequence[ImageSource], preprocess: Preprocess,
                     n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                     description: str = "features") -> Features:
    """Decode, pre-process and extract features for every source, on all cores, with a progress bar.

    Small inputs (< 64 images) run in this process: starting worker processes would cost more.
    """
    n = len(sources)
    n_jobs = n_jobs or default_jobs()
    extractor.prepare()
    namespace = None
    if getattr(extractor, "cacheable", False) and getattr(extractor, "cache", False):
        namespace = extractor.namespace(preprocess.to_dict())
    results = []
    with progress_bar(n, description) as bar:
        if n_jobs == 1 or n < 64:
            step = 32
            for s in range(0, n, step):
                k, res = _chunk_worker(extractor, preprocess, sources[s:s + step], max_pixels, namespace)
                results.append(res)
                bar.advance(k)
        else:
            from joblib import Parallel, delayed

            chunk = int(min(256, max(16, n // (n_jobs * 8))))
            chunks = [sources[s:s + chunk] for s in range(0, n, chunk)]
            par = Parallel(n_jobs=n_jobs, return_as="generator", batch_size=1)
            for k, res in par(delayed(_chunk_worker)(extractor, preprocess, c, max_pixels, namespace) for c in chunks):
                results.append(res)
                bar.advance(k)
    if namespace is not None:
        from .deep import EmbeddingCache

        EmbeddingCache(namespace).put_many([e for r in results for e in r[3]])
    blocks = [r[0] for r in results if r[0] is not None]
    ok = np.concatenate([r[1] for r in results]) if results else np.zeros(0, bool)
    errors = [e for r in results for e in r[2]]
    X = np.vstack(blocks).astype(np.float32) if blocks else np.zeros((0, 0), np.float32)
    return Features(X=X, ok=ok, errors=errors)


def sample_arrays(sources: Sequence[ImageSource], preprocess: Preprocess, n: int, seed: int = 0,
                  max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[np.ndarray]:
    """Decode a seeded random sample of at most ``n`` images (for fitting codebooks)."""
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(sources), min(n, len(sources)), replace=False))
    arrays, _, _ = load_arrays([sources[i] for i in idx], preprocess, max_pixels)
    return arrays


#: Above this many bytes of decoded images, ``decode_to_tensor`` refuses; deep training then streams
#: its training images instead (``training.streaming``).
MAX_IN_MEMORY_BYTES = 8 * 1024**3


class RawPixels(FeatureExtractor):
    """The pre-processed pixels themselves, flattened (used to decode datasets into memory)."""

    name = "raw"

    def __init__(self):
        self._params = {}

    def transform(self, images):
        return np.stack(images).reshape(len(images), -1).astype(np.uint8)


def decode_to_array(sources: Sequence[ImageSource], preprocess: Preprocess, n_jobs: int | None = None,
                    max_pixels: int | None = DEFAULT_MAX_PIXELS, description: str = "decode",
                    layout: str = "NCHW"):
    """Decode + pre-process every image once, in parallel, into one uint8 numpy array, ``(n_ok, 3, H, W)``
    (``layout="NHWC"``: ``(n_ok, H, W, 3)``). Returns ``(array, ok mask, errors)``; unreadable images are
    skipped and listed."""
    if preprocess.size is None:
        raise ConfigError("decoding into a tensor needs a fixed pre-processing size (--img-size)")
    h, w = (preprocess.size, preprocess.size) if isinstance(preprocess.size, int) else preprocess.size
    n_bytes = len(sources) * h * w * 3
    if n_bytes > MAX_IN_MEMORY_BYTES:
        raise ConfigError(f"{len(sources)} images at {h}x{w} need {n_bytes / 1e9:.1f} GB in memory; use a "
                          "smaller --img-size, or a smaller validation part (--val-split): training images stream, "
                          "validation images are held in memory")
    feats = extract_features(RawPixels(), sources, preprocess, n_jobs=n_jobs, max_pixels=max_pixels,
                             description=description)
    arr = feats.X.astype(np.uint8).reshape(-1, h, w, 3) if len(feats.X) else np.zeros((0, h, w, 3), np.uint8)
    if layout == "NCHW":
        arr = np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    return arr, feats.ok, feats.errors


def decode_to_tensor(sources: Sequence[ImageSource], preprocess: Preprocess, n_jobs: int | None = None,
                     max_pixels: int | None = DEFAULT_MAX_PIXELS, description: str = "decode"):
    """``decode_to_array`` as a ``(n_ok, 3, H, W)`` uint8 torch tensor."""
    import torch

    arr, ok, errors = decode_to_array(sources, preprocess, n_jobs, max_pixels, description)
    return torch.from_numpy(arr), ok, errors


__all__ = ["EXTRACTORS", "MAX_IN_MEMORY_BYTES", "Concat", "RawPixels", "decode_to_array", "decode_to_tensor", "FeatureExtractor", "Features", "extract_features", "extractor_names",
           "extractor_params", "load_arrays", "make_extractor", "sample_arrays", "source_name"]
