"""Test-time augmentation for any model: average the probabilities over views of each image.

``flip``: the image and its mirror. ``flip+crops``: the centre and four corner crops of 87.5% of the
side (each resized back by the model's own pre-processing) and their mirrors, 10 views. ``crops``:
the whole image and those five crops, no mirrors (6 views), for models trained with ``--no-hflip``
(handwriting, text, road signs), where a mirrored image is another class.
Works for every model kind because views are handed to ``predict_proba`` as PIL images.
(Deep models trained with ``tta`` already average the mirror inside ``predict_proba``.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data.decode import DEFAULT_MAX_PIXELS, ImageSource, load_image
from ..errors import ConfigError, ImageLoadError

TTA_MODES = ("none", "flip", "crops", "flip+crops")
CROP = 0.875
CHUNK = 256


def _views(im, mode: str) -> list:
    from PIL import ImageOps

    if mode == "flip":
        return [im, ImageOps.mirror(im)]
    w, h = im.size
    cw, ch = max(1, int(round(w * CROP))), max(1, int(round(h * CROP)))
    boxes = [((w - cw) // 2, (h - ch) // 2), (0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)]
    crops = [im.crop((x, y, x + cw, y + ch)) for x, y in boxes]
    if mode == "crops":
        return [im, *crops]
    return [v for c in crops for v in (c, ImageOps.mirror(c))]  # flip+crops: 5 crops x 2 = 10 views


def predict_proba_tta(model, sources: Sequence[ImageSource], mode: str | None) -> np.ndarray:
    """``model.predict_proba`` averaged over the ``mode`` views of each image (NaN rows, and
    ``model.errors_`` entries, for images that cannot be read)."""
    if mode in (None, "none"):
        return model.predict_proba(list(sources))
    if mode not in TTA_MODES:
        raise ConfigError(f"--tta {mode!r}: choose one of {', '.join(TTA_MODES)}")
    if "flip" in mode and not getattr(model, "hflip", True):
        raise ConfigError(f"--tta {mode}: this model was trained with --no-hflip (a mirrored image is another "
                          "class); use --tta crops or none")
    max_pixels = getattr(model, "max_pixels", DEFAULT_MAX_PIXELS)
    out = np.full((len(sources), len(model.classes_)), np.nan)
    errors: list[tuple[str, str]] = []
    for s in range(0, len(sources), CHUNK):
        batch, rows = [], []
        for i, src in enumerate(sources[s:s + CHUNK], s):
            try:
                im = load_image(src, max_pixels=max_pixels)
            except ImageLoadError as exc:
                errors.append((exc.path, exc.reason))
                continue
            v = _views(im, mode)
            batch += v
            rows.append((i, len(v)))
        if not batch:
            continue
        P = model.predict_proba(batch)
        k = 0
        for i, n in rows:
            out[i] = np.nanmean(P[k:k + n], axis=0)
            k += n
    model.errors_ = errors
    return out
