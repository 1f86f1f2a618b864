"""ImageNet-C-style corruptions (Hendrycks & Dietterich 2019) at 5 severities, with numpy, OpenCV,
scikit-image and Pillow only: nothing to download.

The severity constants follow the ImageNet-C reference code (for 224 px images); blur radii and
noise grain scale with the image side so small images are not wiped out. ``fog`` there needs a
plasma fractal; ``haze`` here is the same idea (a smooth random veil blended towards white), written
with a Gaussian-filtered noise field because no library ships a fractal fog.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)


def _f(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32) / 255.0


def _u8(x: np.ndarray) -> np.ndarray:
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def gaussian_noise(img, s, rng):
    c = (0.08, 0.12, 0.18, 0.26, 0.38)[s - 1]
    x = _f(img)
    return _u8(x + rng.normal(0, c, x.shape))


def shot_noise(img, s, rng):
    c = (60, 25, 12, 5, 3)[s - 1]
    return _u8(rng.poisson(_f(img) * c) / c)


def _scale(img) -> float:
    return max(min(img.shape[:2]) / 224.0, 0.15)


def defocus_blur(img, s, rng):
    import cv2

    # a disk with an anti-aliased rim (weight = covered fraction of each cell), so that the blur keeps
    # growing with the severity even when the radius is below a pixel (small images such as CIFAR)
    radius = (3, 4, 6, 8, 10)[s - 1] * _scale(img)
    r = int(np.ceil(radius + 1.0))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    k = np.clip(radius + 1.0 - np.hypot(xx, yy), 0.0, 1.0).astype(np.float32)
    k[r, r] = 1.0
    return _u8(cv2.filter2D(_f(img), -1, k / k.sum(), borderType=cv2.BORDER_REFLECT))


def motion_blur(img, s, rng):
    import cv2

    # a line of fractional length (end cells weighted by the covered fraction), rotated: monotonic in
    # the severity at any image size
    length = max(1.5, (10, 15, 20, 25, 30)[s - 1] * _scale(img))
    half = int(np.ceil(length / 2))
    size = 2 * half + 1
    d = np.abs(np.arange(size) - half)
    k = np.zeros((size, size), np.float32)
    k[half, :] = np.clip(length / 2 + 0.5 - d, 0.0, 1.0)
    angle = float(rng.uniform(-45, 45))
    rot = cv2.getRotationMatrix2D((half, half), angle, 1.0)
    k = cv2.warpAffine(k, rot, (size, size))
    return _u8(cv2.filter2D(_f(img), -1, k / max(k.sum(), 1e-6), borderType=cv2.BORDER_REFLECT))


def jpeg(img, s, rng):
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=(25, 18, 15, 10, 7)[s - 1])
    return np.asarray(Image.open(buf).convert("RGB"))


def pixelate(img, s, rng):
    from PIL import Image

    c = (0.6, 0.5, 0.4, 0.3, 0.25)[s - 1]
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.NEAREST))


def brightness(img, s, rng):
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(img)
    hsv[..., 2] = np.clip(hsv[..., 2] + (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1], 0, 1)
    return _u8(hsv2rgb(hsv))


def contrast(img, s, rng):
    c = (0.4, 0.3, 0.2, 0.1, 0.05)[s - 1]
    x = _f(img)
    m = x.mean(axis=(0, 1), keepdims=True)
    return _u8((x - m) * c + m)


def haze(img, s, rng):
    import cv2

    strength = (0.25, 0.35, 0.45, 0.55, 0.65)[s - 1]
    h, w = img.shape[:2]
    field = rng.random((h, w)).astype(np.float32)
    field = cv2.GaussianBlur(field, (0, 0), max(h, w) / 8)
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    veil = strength * (0.6 + 0.4 * field)[..., None]
    return _u8(_f(img) * (1 - veil) + veil)


#: name -> function(uint8 HxWx3 image, severity 1..5, numpy Generator) -> uint8 image
CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "defocus_blur": defocus_blur,
    "motion_blur": motion_blur, "jpeg": jpeg, "pixelate": pixelate, "brightness": brightness,
    "contrast": contrast, "haze": haze,
}


def corrupt(img: np.ndarray, name: str, severity: int, seed: int = 0) -> np.ndarray:
    """``img`` (uint8 RGB) with corruption ``name`` at ``severity`` (1-5), reproducibly for ``seed``."""
    from ..errors import ConfigError

    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise ConfigError(f"severity {severity}: use 1 to 5")
    return CORRUPTIONS[name](np.ascontiguousarray(img[..., :3]), severity, np.random.default_rng(seed))
