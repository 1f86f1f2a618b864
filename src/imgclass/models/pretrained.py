"""``imagenet:lite0``: an ImageNet-1k classifier ready to predict, with no training."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.decode import DEFAULT_MAX_PIXELS, ImageSource
from ..errors import ConfigError
from ..features import extract_features
from ..features.backbones import imagenet_classes
from ..features.deep import DeepEmbedding
from ..transforms import Preprocess
from .classical import _sources_of, predictions, with_gaps

PREFIX = "imagenet:"


class ImageNetClassifier:
    """A pretrained backbone's own 1,000-class ImageNet head (``imagenet:lite0``, ``imagenet:resnet18``)."""

    kind = "imagenet"

    def __init__(self, backbone: str = "lite0", n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.extractor = DeepEmbedding(backbone, pretrained="imagenet", output="probabilities", cache=False)
        self.preprocess = Preprocess.from_dict(self.extractor.preprocess_defaults())
        self.method = f"{PREFIX}{backbone}"
        self.classes_ = imagenet_classes()
        self.task_ = "multiclass"
        self.taxonomy_ = None
        self.decision_ = None
        self.n_jobs, self.max_pixels = n_jobs, max_pixels
        self.errors_: list[tuple[str, str]] = []
        self.meta_: dict = {}

    @classmethod
    def from_name(cls, name: str) -> ImageNetClassifier:
        backbone = name[len(PREFIX):].strip()
        if not backbone:
            raise ConfigError(f"{name}: name a backbone, e.g. imagenet:lite0")
        return cls(backbone)

    def predict_proba(self, X: Sequence[ImageSource]) -> np.ndarray:
        sources = _sources_of(X)
        feats = extract_features(self.extractor, sources, self.preprocess, n_jobs=self.n_jobs,
                                 max_pixels=self.max_pixels, description="predict")
        self.errors_ = feats.errors
        return with_gaps(len(sources), feats.ok, feats.X, len(self.classes_))

    def predict(self, X: Sequence[ImageSource], top_k: int = 1):
        return predictions(self, self.predict_proba(X), top_k)

    def __repr__(self) -> str:
        return f"ImageNetClassifier({self.method!r})"
