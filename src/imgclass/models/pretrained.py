"""``imagenet:lite0``: an ImageNet-1k classifier ready to predict, with no training."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from ..data.decode import DEFAULT_MAX_PIXELS, ImageSource
from ..errors import ConfigError
from ..features import extract_features
from ..features.backbones import imagenet_classes
from ..features.deep import DeepEmbedding
from ..transforms import Preprocess
from .base import ImageClassifier, sources_of, with_gaps

PREFIX = "imagenet:"


class ImageNetClassifier(ImageClassifier):
    """A pretrained backbone's own 1,000-class ImageNet head (``imagenet:lite0``, ``imagenet:resnet18``).

    It is trained already: ``fit`` leaves it as it is, and it is named (``imagenet:NAME``), not saved.
    """

    kind = "imagenet"

    def __init__(self, backbone: str = "lite0", n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.backbone, self.n_jobs, self.max_pixels = backbone, n_jobs, max_pixels
        self.extractor = DeepEmbedding(backbone, pretrained="imagenet", output="probabilities", cache=False)
        self.preprocess = Preprocess.from_dict(self.extractor.preprocess_defaults())
        self.method = f"{PREFIX}{backbone}"
        self.seed = 0
        self._init_state()
        self.classes_ = imagenet_classes()

    @classmethod
    def from_name(cls, name: str) -> ImageNetClassifier:
        backbone = name[len(PREFIX):].strip()
        if not backbone:
            raise ConfigError(f"{name}: name a backbone, e.g. imagenet:lite0")
        return cls(backbone)

    def fit(self, data=None, val=None, unlabeled=None, **kw) -> ImageNetClassifier:
        """Nothing to learn: the ImageNet head is used as it is."""
        return self

    def predict_proba(self, X: Sequence[ImageSource]) -> np.ndarray:
        sources = sources_of(X)
        feats = extract_features(self.extractor, sources, self.preprocess, n_jobs=self.n_jobs,
                                 max_pixels=self.max_pixels, description="predict")
        self.errors_ = feats.errors
        return with_gaps(len(sources), feats.ok, feats.X, len(self.classes_))

    def save(self, path: str | os.PathLike, **meta):
        raise ConfigError(f"{self.method} is a packaged model: load it by name (load_model({self.method!r})) "
                          "instead of saving it")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ImageNetClassifier:
        """``imagenet:NAME``."""
        if not str(path).startswith(PREFIX):
            raise ConfigError(f"{path}: an ImageNet classifier is named imagenet:NAME, e.g. imagenet:lite0")
        return cls.from_name(str(path))

    def __repr__(self) -> str:
        return f"ImageNetClassifier({self.method!r})"
