"""Pre-processing and augmentation.

Pre-processing is a ``Preprocess`` config (plain data, stored as JSON in the bundle) that builds a
chain of small callables on PIL images: resize (squash / pad / centre-crop), grayscale, denoise
(Gaussian, median, Wiener) and histogram equalisation (global or CLAHE). The same chain feeds
classical feature extractors and deep models, so a bundle reproduces its input pipeline exactly.

Augmentation lives in ``transforms.augment``: every preset once, as a callable on uint8 batch tensors
seeded by an explicit ``torch.Generator``. It imports torch only when called, which keeps torch out of
the classical path and its worker processes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from ..errors import ConfigError
from .augment import AUGMENT_PRESETS, RandomCorruption

RESIZE_MODES = ("squash", "pad", "crop")
DENOISE = ("none", "gaussian", "median", "wiener")
EQUALIZE = ("none", "hist", "clahe")
_INTERP = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def _size_hw(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class Resize:
    """Resize to ``size`` (int or (h, w)) by squashing, padding (letterbox) or centre-cropping."""

    def __init__(self, size, mode: str = "squash", interpolation: str = "bilinear", fill=(0, 0, 0)):
        self.size, self.mode, self.interpolation, self.fill = _size_hw(size), mode, interpolation, tuple(fill)

    def __call__(self, img: Image.Image) -> Image.Image:
        h, w = self.size
        if img.size == (w, h):
            return img
        method = _INTERP[self.interpolation]
        if self.mode == "crop":
            return ImageOps.fit(img, (w, h), method=method)
        if self.mode == "pad":
            return ImageOps.pad(img, (w, h), method=method, color=self.fill)
        return img.resize((w, h), method)


class Grayscale:
    """Luminance only, kept as three identical channels so later steps see RGB."""

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.convert("L").convert("RGB")


class Denoise:
    """Gaussian blur, 3x3 median, or adaptive Wiener filtering (scipy.signal.wiener per channel)."""

    def __init__(self, kind: str = "gaussian", strength: float = 1.0):
        self.kind, self.strength = kind, strength

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.kind == "gaussian":
            return img.filter(ImageFilter.GaussianBlur(radius=self.strength))
        if self.kind == "median":
            return img.filter(ImageFilter.MedianFilter(size=max(3, int(2 * round(self.strength) + 1))))
        if self.kind == "wiener":
            from scipy.signal import wiener

            arr = np.asarray(img, dtype=np.float64)
            k = max(3, int(2 * round(self.strength) + 1))
            out = np.stack([wiener(arr[..., c], (k, k)) for c in range(arr.shape[2])], axis=-1)
            out = np.nan_to_num(out, nan=0.0)
            return Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
        return img


class Equalize:
    """Global histogram equalisation (Pillow) or CLAHE on the L channel of Lab (OpenCV)."""

    def __init__(self, kind: str = "hist"):
        self.kind = kind

    def __call__(self, img: Image.Image) -> Image.Image:
        if self.kind == "hist":
            return ImageOps.equalize(img)
        if self.kind == "clahe":
            import cv2

            lab = cv2.cvtColor(np.asarray(img), cv2.COLOR_RGB2LAB)
            clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
            lab[..., 0] = clahe.apply(lab[..., 0])
            return Image.fromarray(cv2.cvtColor(lab, cv2.COLOR_LAB2RGB))
        return img


@dataclass
class Preprocess:
    """The pre-processing config. Plain data: ``to_dict()`` goes into ``model.json``.

    ``size=None`` keeps the decoded size. ``mean``/``std`` are used only when converting to
    normalised tensors (deep models).
    """

    size: int | tuple[int, int] | None = None
    resize: str = "squash"
    interpolation: str = "bilinear"
    grayscale: bool = False
    denoise: str = "none"
    denoise_strength: float = 1.0
    equalize: str = "none"
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise ConfigError(f"--resize {self.resize!r}: choose one of {', '.join(RESIZE_MODES)}")
        if self.denoise not in DENOISE:
            raise ConfigError(f"--denoise {self.denoise!r}: choose one of {', '.join(DENOISE)}")
        if self.equalize not in EQUALIZE:
            raise ConfigError(f"--equalize {self.equalize!r}: choose one of {', '.join(EQUALIZE)}")
        if self.interpolation not in _INTERP:
            raise ConfigError(f"interpolation {self.interpolation!r}: choose one of {', '.join(_INTERP)}")
        if isinstance(self.size, list):
            self.size = tuple(self.size)

    # -- serialisation
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("size", "mean", "std"):
            if isinstance(d[k], tuple):
                d[k] = list(d[k])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Preprocess:
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown pre-processing keys {sorted(unknown)}; known: {sorted(known)}")
        for k in ("mean", "std"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    # -- building
    def steps(self) -> list:
        """The callables, in order: denoise → equalise → grayscale → resize."""
        out: list = []
        if self.denoise != "none":
            out.append(Denoise(self.denoise, self.denoise_strength))
        if self.equalize != "none":
            out.append(Equalize(self.equalize))
        if self.grayscale:
            out.append(Grayscale())
        if self.size is not None:
            out.append(Resize(self.size, self.resize, self.interpolation))
        return out

    def __call__(self, img: Image.Image) -> Image.Image:
        for step in self.steps():
            img = step(img)
        return img

    def to_array(self, img: Image.Image) -> np.ndarray:
        """Apply the chain and return an ``HxWx3`` uint8 array."""
        return np.asarray(self(img))


__all__ = ["AUGMENT_PRESETS", "Denoise", "Equalize", "Grayscale", "Preprocess", "RandomCorruption", "Resize"]
