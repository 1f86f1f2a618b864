"""The one image decoder. Every part of imgclass reads pixels through ``load_image``."""

from __future__ import annotations

import errno
import io
import os
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ..errors import ImageLoadError
from ..limits import DEFAULT_MAX_PIXELS
from .shards.io import ShardMember

#: Bytes read per image file at most: no image within the pixel limit needs more (4 bytes a pixel, plus
#: room for metadata), so a bigger file, or an endless one such as ``/dev/zero``, is refused unread.
MIN_FILE_BYTES_LIMIT = 256 << 20
NO_PIXEL_LIMIT_FILE_BYTES = 4 << 30


def max_file_bytes(max_pixels: int | None = DEFAULT_MAX_PIXELS) -> int:
    """The per-file byte budget that goes with a pixel limit (``None``: no pixel limit, a 4 GiB ceiling)."""
    if max_pixels is None:
        return NO_PIXEL_LIMIT_FILE_BYTES
    return max(MIN_FILE_BYTES_LIMIT, 4 * int(max_pixels) + (16 << 20))


_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a device"),
          (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket"))


def open_regular(path: str | os.PathLike, max_bytes: int | None):
    """Open ``path`` for binary reading if it is a regular file of at most ``max_bytes``; otherwise raise
    ``OSError`` with a reason. Opened without blocking, so a FIFO cannot hang the run."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _KINDS if test(st.st_mode)), "not a regular file")
            raise OSError(errno.EINVAL, f"not a regular file ({kind}); list image files only")
        if max_bytes is not None and st.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"{st.st_size:,} bytes, more than the limit of {max_bytes:,} for one image")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray

# Truncated files must fail loudly instead of decoding as half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def is_image_file(name: str | os.PathLike) -> bool:
    """True for a supported image extension (case-insensitive)."""
    return Path(name).suffix.lower() in IMAGE_EXTENSIONS


def source_name(src: ImageSource) -> str:
    """A printable name for an image source (its path, or a placeholder for in-memory images)."""
    if isinstance(src, (str, os.PathLike)):
        return str(src)
    return f"<{type(src).__name__}>"


def source_bytes(src: ImageSource, max_bytes: int | None = None) -> bytes:
    """The encoded bytes of a path, bytes or tar-shard member (``ShardMember``) source; ``OSError`` if unreadable,
    not a regular file, or larger than ``max_bytes`` (default: ``max_file_bytes()``)."""
    if isinstance(src, ShardMember):
        return src.read_bytes()
    if isinstance(src, (bytes, bytearray)):
        return bytes(src)
    cap = max_file_bytes() if max_bytes is None else max_bytes
    with open_regular(src, cap) as f:
        data = f.read(cap + 1)
    if len(data) > cap:  # the file grew after it was opened
        raise OSError(errno.EFBIG, f"more than the limit of {cap:,} bytes for one image")
    return data


def _composite_on_white(img: Image.Image) -> Image.Image:
    if img.mode in ("La", "RGBa"):  # premultiplied alpha: un-premultiply first
        img = img.convert("LA" if img.mode == "La" else "RGBA")
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_to_rgb(img: Image.Image) -> Image.Image:
    """I;16 / I / F images: scale to 8 bits instead of clipping (Pillow's convert clips at 255)."""
    arr = np.asarray(img)
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=0.0))
        if lo >= 0.0 and hi <= 1.0:  # the usual convention for float images
            out = arr * 255.0
        elif hi > lo:
            out = (arr - lo) / (hi - lo) * 255.0
        else:
            out = np.zeros_like(arr)
    else:
        arr = arr.astype(np.int64)
        hi = int(arr.max(initial=0))
        if img.mode.startswith("I;16") or (0 <= arr.min(initial=0) and hi <= 65535 and hi > 255):
            out = arr / 257.0  # full 16-bit range onto 0..255
        elif hi <= 255 and arr.min(initial=0) >= 0:
            out = arr.astype(np.float64)
        else:
            lo = int(arr.min(initial=0))
            out = (arr - lo) / max(hi - lo, 1) * 255.0
    gray = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB; transparency is composited onto white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _composite_on_white(img)
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _high_depth_to_rgb(img)
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


_PIL_LIMIT_LOCK = threading.Lock()


def _open(fp):
    """``Image.open`` with Pillow's own bomb guard reduced to a warning we ignore: ``load_image`` applies
    its configurable limit itself. Only when Pillow refuses outright (> 2x its global limit) and the
    caller allowed more is the global lifted, briefly and under a lock, then restored."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(fp)
        except Image.DecompressionBombError:
            if hasattr(fp, "seek"):
                fp.seek(0)
            with _PIL_LIMIT_LOCK:
                saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
                try:
                    return Image.open(fp)
                finally:
                    Image.MAX_IMAGE_PIXELS = saved


def _decode(fp, name: str, max_pixels: int | None, draft_size: int | None) -> Image.Image:
    with _open(fp) as img:
        w, h = img.size
        if max_pixels is not None and w * h > max_pixels:
            raise ImageLoadError(
                name, f"{w}x{h} = {w * h:,} pixels exceeds the limit of {max_pixels:,} "
                "(possible decompression bomb; raise --max-pixels if you trust it)")
        if getattr(img, "is_animated", False):
            img.seek(0)
        if draft_size and img.format == "JPEG":
            img.draft("RGB", (draft_size, draft_size))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
        img = ImageOps.exif_transpose(img)
        return to_rgb(img)


def load_image(src: ImageSource, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               draft_size: int | None = None) -> Image.Image:
    """Decode one image into an RGB ``PIL.Image``.

    ``src`` is a path, raw bytes, a tar-shard member (``ShardMember``), a PIL image or a HxW / HxWxC
    uint8 array. EXIF orientation is applied, GIFs give their first frame, and every mode becomes RGB.
    ``draft_size`` lets the JPEG decoder shrink by a power of two while decoding when only a small
    image is needed (much faster on big photos).

    Raises ``ImageLoadError(path, reason)`` for empty, truncated, corrupt and non-image files and
    for images above ``max_pixels`` (a decompression-bomb guard; ``None`` disables it).
    """
    name = source_name(src)
    if isinstance(src, Image.Image):
        try:
            return to_rgb(src)
        except (ValueError, OSError) as exc:
            raise ImageLoadError(name, f"cannot convert mode {src.mode} to RGB ({exc})") from None
    if isinstance(src, np.ndarray):
        arr = src
        if arr.dtype != np.uint8:
            raise ImageLoadError(name, f"array dtype {arr.dtype} is not uint8; convert it first")
        if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] in (1, 3, 4)):
            return to_rgb(Image.fromarray(arr.squeeze(-1) if arr.ndim == 3 and arr.shape[2] == 1 else arr))
        raise ImageLoadError(name, f"array shape {arr.shape} is not HxW or HxWx{{1,3,4}}")
    if isinstance(src, (bytes, bytearray)):
        data = bytes(src)
        if not data:
            raise ImageLoadError(name, "empty data (0 bytes)")
        fp = io.BytesIO(data)
    elif isinstance(src, ShardMember):  # one byte range of a tar shard (data.shards)
        try:
            data = src.read_bytes()
        except OSError as exc:
            raise ImageLoadError(name, f"cannot read {src.location} ({exc.strerror or exc})") from None
        if not data:
            raise ImageLoadError(name, f"empty member {src.location} (0 bytes)")
        fp = io.BytesIO(data)
    else:
        try:
            fh = open_regular(src, max_file_bytes(max_pixels))
        except OSError as exc:
            raise ImageLoadError(name, f"cannot read file ({exc.strerror or exc})") from None
        with fh:
            if os.fstat(fh.fileno()).st_size == 0:
                raise ImageLoadError(name, "empty file (0 bytes)")
            return _decode_or_raise(fh, name, max_pixels, draft_size)
    return _decode_or_raise(fp, name, max_pixels, draft_size)


def _decode_or_raise(fp, name: str, max_pixels: int | None, draft_size: int | None) -> Image.Image:
    """``_decode`` with every decoder failure turned into ``ImageLoadError(name, reason)``."""
    try:
        return _decode(fp, name, max_pixels, draft_size)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(name, "not an image Pillow can identify (corrupt or wrong format)") from None
    except Image.DecompressionBombError as exc:
        raise ImageLoadError(name, f"decompression bomb: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        reason = str(exc) or type(exc).__name__
        if "truncated" in reason.lower():
            reason = "truncated file (" + reason + ")"
        raise ImageLoadError(name, f"cannot decode: {reason}") from None
