"""One pass over the images: per-image quality statistics, content hashes and the small thumbnails the
near-duplicate check compares.

Thresholds adapt to the dataset: a statistic is flagged when its robust z-score (distance from the
median in units of the scaled median absolute deviation) passes a limit, so a set of soft 32-pixel
photos and a set of sharp 12-megapixel photos each get their own notion of "blurry". Brightness and
contrast also have absolute floors/ceilings (a set that is all dark is still dark).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._util import progress_bar
from ..data.decode import DEFAULT_MAX_PIXELS, ImageSource, load_image, source_bytes, source_name
from ..errors import ImageLoadError

#: side of the thumbnails kept for near-duplicate verification (RGB, uint8)
THUMB = 32
#: longest side the blur and exposure statistics are measured at (bigger images are reduced first,
#: which keeps the pass fast and the blur score comparable across image sizes above this)
STATS_SIDE = 512

STAT_COLUMNS = ("width", "height", "aspect", "brightness", "contrast", "dark_fraction", "bright_fraction",
                "colourfulness", "laplacian_var", "gradient_energy", "blur_score")


@dataclass
class ImageStats:
    """Statistics for every input position; rows of unreadable images are NaN and ``ok`` is False."""

    values: np.ndarray  # (n, len(STAT_COLUMNS)) float64
    ok: np.ndarray  # (n,) bool
    sha256: list[str | None]
    thumbs: np.ndarray  # (n, THUMB, THUMB, 3) uint8, zeros for unreadable images
    errors: list[tuple[str, str]]

    def column(self, name: str) -> np.ndarray:
        return self.values[:, STAT_COLUMNS.index(name)]


def _file_bytes(src: ImageSource) -> bytes | None:
    try:
        return source_bytes(src)  # a file, bytes or a tar-shard member
    except (OSError, TypeError):
        return None


def image_stats_one(src: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS):
    """``(stats row, sha256, thumbnail)`` for one image; raises ``ImageLoadError`` for a bad file."""
    import cv2
    from PIL import Image

    raw = _file_bytes(src)
    digest = hashlib.sha256(raw).hexdigest() if raw is not None else None
    try:  # decode the bytes already read (one read per file), but name the file in errors
        img = load_image(raw if raw is not None else src, max_pixels=max_pixels, draft_size=STATS_SIDE)
    except ImageLoadError as exc:
        raise ImageLoadError(source_name(src), exc.reason) from None
    w0, h0 = img.size
    if raw is not None:  # the JPEG draft may have shrunk the decoded image: the true size is in the header
        try:
            with Image.open(io.BytesIO(raw)) as head:  # reads the header only
                w0, h0 = head.size
        except Exception:  # noqa: BLE001 - decoded above, so the header is readable; keep the decoded size
            pass
    if max(img.size) > STATS_SIDE:
        img = img.copy()
        img.thumbnail((STATS_SIDE, STATS_SIDE), Image.BILINEAR)
    rgb = np.asarray(img, dtype=np.float32)
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    inner = (slice(1, -1), slice(1, -1)) if min(gray.shape) > 4 else (slice(None), slice(None))
    lap = cv2.Laplacian(gray, cv2.CV_32F, ksize=1)[inner]
    gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)[inner]
    gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)[inner]
    lap_var = float(lap.var())
    grad = float((gx * gx + gy * gy).mean())
    # Blur score: the variance of the Laplacian divided by the gradient energy. The plain Laplacian
    # variance also falls with contrast (a sharp but hazy photo looks "blurry"); the ratio of second- to
    # first-derivative energy depends on how sharp the edges are, not on how strong.
    blur = float(np.log((lap_var + 1e-3) / (grad + 1e-3)))
    rg, yb = rgb[..., 0] - rgb[..., 1], 0.5 * (rgb[..., 0] + rgb[..., 1]) - rgb[..., 2]
    colourful = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))  # Hasler & Süsstrunk
    row = (w0, h0, w0 / max(h0, 1), float(gray.mean() / 255), float(gray.std() / 255),
           float((gray < 25).mean()), float((gray > 230).mean()), colourful, lap_var, grad, blur)
    thumb = np.asarray(img.resize((THUMB, THUMB), Image.BOX), dtype=np.uint8)
    return row, digest, thumb


def _chunk(sources: Sequence[ImageSource], max_pixels: int | None):
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # pragma: no cover
        pass
    out = []
    for src in sources:
        try:
            out.append(image_stats_one(src, max_pixels))
        except ImageLoadError as exc:
            out.append((exc.path, exc.reason))
    return out


def image_stats(sources: Sequence[ImageSource], n_jobs: int | None = None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageStats:
    """Decode every image once (on all cores, with a progress bar) and measure it."""
    from ..features import default_jobs

    n = len(sources)
    n_jobs = n_jobs or default_jobs()
    values = np.full((n, len(STAT_COLUMNS)), np.nan)
    ok = np.zeros(n, bool)
    sha: list[str | None] = [None] * n
    thumbs = np.zeros((n, THUMB, THUMB, 3), np.uint8)
    errors: list[tuple[str, str]] = []
    chunk = int(min(256, max(16, n // (max(n_jobs, 1) * 8) or 16)))
    starts = list(range(0, n, chunk))

    def take(start: int, results) -> None:
        for j, r in enumerate(results):
            i = start + j
            if len(r) == 2:
                errors.append(r)
                continue
            values[i], sha[i], thumbs[i] = r[0], r[1], r[2]
            ok[i] = True

    with progress_bar(n, "image statistics") as bar:
        if n_jobs == 1 or n < 128:
            for s in starts:
                take(s, _chunk(sources[s:s + chunk], max_pixels))
                bar.advance(min(chunk, n - s))
        else:
            from joblib import Parallel, delayed

            par = Parallel(n_jobs=n_jobs, return_as="generator", batch_size=1)
            for s, res in zip(starts, par(delayed(_chunk)(sources[s:s + chunk], max_pixels) for s in starts)):
                take(s, res)
                bar.advance(len(res))
    return ImageStats(values=values, ok=ok, sha256=sha, thumbs=thumbs, errors=errors)


def robust_z(x: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``(x - median) / (1.4826 * MAD)`` with the median and MAD taken over ``mask`` (default: finite
    values). A zero MAD falls back to the mean absolute deviation, then to 1."""
    x = np.asarray(x, dtype=np.float64)
    m = np.isfinite(x) if mask is None else (mask & np.isfinite(x))
    if not m.any():
        return np.zeros_like(x)
    med = np.median(x[m])
    mad = 1.4826 * np.median(np.abs(x[m] - med))
    if mad <= 1e-12:
        mad = float(np.mean(np.abs(x[m] - med))) or 1.0
    return (x - med) / mad


@dataclass
class QualityLimits:
    """Where the quality checks draw the line (robust z-scores are relative to this dataset)."""

    blur_z: float = 3.0  # blur score this many scaled MADs below the median
    dark: float = 0.12  # mean brightness (0-1) below this ...
    bright: float = 0.92  # ... or above this
    exposure_z: float = 3.5  # ... or this far from the dataset's median brightness
    low_contrast: float = 0.04  # grey-level standard deviation (0-1) below this
    size_z: float = 4.0  # log area this far from the median
    aspect_factor: float = 2.0  # aspect ratio more than this factor away from the median
    grayscale_colourfulness: float = 2.0  # colourfulness below this in a set whose median is above 10


def quality_issues(stats: ImageStats, limits: QualityLimits | None = None) -> dict[str, list[tuple[int, float, str]]]:
    """``{issue: [(row, severity, detail), ...]}`` most severe first, for blurry, dark, bright,
    low_contrast, odd_size and grayscale images."""
    lim = limits or QualityLimits()
    ok = stats.ok
    out: dict[str, list[tuple[int, float, str]]] = {}

    def add(name: str, mask: np.ndarray, severity: np.ndarray, detail) -> None:
        rows = np.flatnonzero(mask & ok)
        rows = rows[np.argsort(-severity[rows], kind="stable")]
        out[name] = [(int(i), float(severity[i]), detail(i)) for i in rows]

    blur = stats.column("blur_score")
    zb = -robust_z(blur, ok)
    add("blurry", zb > lim.blur_z, zb,
        lambda i: f"blur score {blur[i]:.2f} ({zb[i]:.1f} MADs below the median {np.median(blur[ok]):.2f}); "
                  f"Laplacian variance {stats.column('laplacian_var')[i]:.1f}")
    bright = stats.column("brightness")
    zx = robust_z(bright, ok)
    add("dark", (bright < lim.dark) | (zx < -lim.exposure_z), -zx, lambda i: f"mean brightness {bright[i]:.3f}")
    add("bright", (bright > lim.bright) | (zx > lim.exposure_z), zx, lambda i: f"mean brightness {bright[i]:.3f}")
    con = stats.column("contrast")
    add("low_contrast", con < lim.low_contrast, -con, lambda i: f"grey-level std {con[i]:.3f}")
    w, h, asp = stats.column("width"), stats.column("height"), stats.column("aspect")
    za = robust_z(np.log(np.maximum(w * h, 1)), ok)
    med_aspect = np.median(asp[ok]) if ok.any() else 1.0
    off = np.abs(np.log(np.maximum(asp, 1e-6) / med_aspect))
    sev = np.maximum(np.abs(za) / lim.size_z, off / np.log(lim.aspect_factor))
    add("odd_size", (np.abs(za) > lim.size_z) | (off > np.log(lim.aspect_factor)), sev,
        lambda i: f"{int(w[i])}x{int(h[i])} (median {int(np.median(w[ok]))}x{int(np.median(h[ok]))})")
    col = stats.column("colourfulness")
    colour_set = ok.any() and np.median(col[ok]) > 10
    add("grayscale", (col < lim.grayscale_colourfulness) if colour_set else np.zeros(len(col), bool), -col,
        lambda i: f"colourfulness {col[i]:.2f} in a colour set (median {np.median(col[ok]):.1f})")
    return out


__all__ = ["STAT_COLUMNS", "THUMB", "ImageStats", "QualityLimits", "image_stats", "image_stats_one",
           "quality_issues", "robust_z"]
