"""Offline sample datasets written as image folders (for the demo, benchmarks and docs).

``python -m imgclass.data.samples digits DEST`` writes scikit-learn's bundled 8x8 digits as
``DEST/<digit>/<index>.png`` (1,797 grayscale PNGs); ``photos DEST`` writes scikit-image's sample
photos.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np


def write_digits(dest: str | os.PathLike) -> Path:
    """Write ``sklearn.datasets.load_digits`` as a folder per class of 8x8 PNGs; skip if present."""
    from PIL import Image
    from sklearn.datasets import load_digits

    dest = Path(dest)
    marker = dest / ".complete"
    if marker.exists():
        return dest
    digits = load_digits()
    for i, (img, label) in enumerate(zip(digits.images, digits.target)):
        d = dest / str(label)
        d.mkdir(parents=True, exist_ok=True)
        arr = np.clip(np.rint(img * 255.0 / 16.0), 0, 255).astype(np.uint8)
        Image.fromarray(arr, mode="L").save(d / f"{i:04d}.png")
    marker.write_text("ok\n")
    return dest


def write_photos(dest: str | os.PathLike) -> Path:
    """Write a few of scikit-image's bundled sample photos (cat, coffee, astronaut, rocket) as PNGs."""
    import skimage.data
    from PIL import Image

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("chelsea", "coffee", "astronaut", "rocket"):
        path = dest / f"{name}.png"
        if not path.exists():
            Image.fromarray(getattr(skimage.data, name)()).save(path)
    return dest


SAMPLES = {"digits": write_digits, "photos": write_photos}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in SAMPLES:
        print(f"usage: python -m imgclass.data.samples {{{'|'.join(SAMPLES)}}} DEST", file=sys.stderr)
        return 2
    print(SAMPLES[args[0]](args[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
