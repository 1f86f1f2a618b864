"""Turning what a client sent into images: request bodies (multipart, JSON with base64, raw image bytes)
and the checks every upload passes before the one decoder (``imgclass.data.decode.load_image``) sees it.

Nothing here ever opens a path: a client sends bytes, and a ``path`` field is refused.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import os
import struct
import warnings
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, UnidentifiedImageError

from ..data.decode import load_image
from ..errors import ImageLoadError

#: Formats the server identifies. Pillow can open more (EPS, PSD, ...), some through external
#: programs; an upload from anyone is held to the common photo and web formats.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP")  # JPEG includes its MPO variant


def _open_formats() -> list[str]:
    Image.init()
    return [f for f in ALLOWED_FORMATS if f in Image.OPEN]

#: File signatures of the allowed formats: bytes that start like one are a broken image (422), not a
#: non-image (415).
MAGIC = (("JPEG", b"\xff\xd8\xff"), ("PNG", b"\x89PNG\r\n\x1a\n"), ("GIF", b"GIF87a"), ("GIF", b"GIF89a"),
         ("TIFF", b"II*\x00"), ("TIFF", b"MM\x00*"), ("WEBP", b"RIFF"), ("BMP", b"BM"))

#: Fields a JSON or multipart body may carry besides the image(s).
OPTION_FIELDS = ("top_k", "target", "method")


class ApiError(Exception):
    """An error answered as ``{"error": {"code": ..., "message": ...}}`` with ``status``."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


def _mb(n: int) -> str:
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n:,} bytes"


@dataclass
class Upload:
    """One image as sent: its bytes and (multipart only) a file name to echo back, never opened."""

    data: bytes
    filename: str | None = None


@dataclass
class Body:
    uploads: list[Upload]
    options: dict[str, Any] = field(default_factory=dict)


def too_large(size: int, limit: int, what: str = "the upload") -> ApiError:
    return ApiError(413, "payload_too_large", f"{what} is {_mb(size)}; this server accepts images up to "
                    f"{_mb(limit)} (imgclass serve --max-upload-mb)")


def _clean_name(name: str | None) -> str | None:
    if not name:
        return None
    return os.path.basename(name.replace("\\", "/"))[:200] or None


def _from_base64(text: Any, max_bytes: int, where: str) -> bytes:
    if not isinstance(text, str):
        raise ApiError(400, "bad_request", f"{where}: give the image as a base64 string")
    if text.startswith("data:"):  # a data URL: data:image/png;base64,....
        head, sep, text = text.partition(",")
        if not sep or ";base64" not in head:
            raise ApiError(400, "bad_request", f"{where}: a data URL must be base64-encoded")
    text = "".join(text.split())
    if len(text) // 4 * 3 > max_bytes + 3:  # refuse before decoding
        raise too_large(len(text) // 4 * 3, max_bytes, where)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_request", f"{where}: not valid base64") from None
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes, where)
    return data


def _check_options(opts: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for k, v in opts.items():
        if k not in allowed:
            hint = (" (the server never reads files: send the image itself)" if k in ("path", "paths", "url", "file")
                    else "")
            raise ApiError(400, "bad_request", f"unknown field {k!r}{hint}; allowed: {', '.join(allowed)}")
        out[k] = v
    if "top_k" in out and out["top_k"] is not None:
        out["top_k"] = _top_k(out["top_k"])
    for k in ("target", "method"):
        if k in out and out[k] is not None and not isinstance(out[k], str):
            raise ApiError(400, "bad_request", f"{k}: give a string")
    return out


def _top_k(value: Any) -> int:
    """``top_k`` as a whole number in 1..10,000, or a 400 (booleans, fractions, infinities, huge and odd strings)."""
    bad = ApiError(400, "bad_request", f"top_k {str(value)[:40]!r}: give a whole number >= 1")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii() or not text.isdigit() or len(text) > 6:
            raise bad
        value = int(text)
    if isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise bad
    if value < 1:
        raise bad
    return min(int(value), 10_000)  # more than the classes is clamped later


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes) -> Any:
    """The JSON document of a body, or a 400 for anything malformed: bad syntax or encoding, NaN and
    Infinity, numbers too long to convert, nesting deeper than the parser's stack."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, "bad_request", "the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError, OverflowError) as exc:
        raise ApiError(400, "bad_request", f"the body is not valid JSON ({str(exc)[:200]})") from None


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


async def read_body(request, *, many: bool, max_bytes: int, max_items: int, options: tuple[str, ...]) -> Body:
    """The image(s) of a request: multipart (field ``file``, or ``files`` when ``many``), JSON
    (``{"image": base64}``; ``many``: ``{"images": [...]}`` or a bare list) or a raw ``image/*`` body.
    The request body itself is already bounded by the server's middleware."""
    kind = media_type(request.headers.get("content-type"))
    if kind == "multipart/form-data":
        from starlette.exceptions import HTTPException

        try:
            form = await request.form(max_files=max_items if many else 1, max_fields=16)
        except HTTPException as exc:  # Starlette's own limits while parsing
            if "too many files" in str(exc.detail).lower():
                raise (too_many(max_items + 1, max_items) if many else
                       ApiError(400, "bad_request", "send one image; use /v1/predict/batch for several")) from None
            raise ApiError(400, "bad_request", f"the multipart body cannot be parsed ({exc.detail})") from None
        try:
            name = "files" if many else "file"
            items = form.getlist(name) or (form.getlist("file") if many else [])
            if not items:
                raise ApiError(400, "bad_request", f"no {name!r} field; send the image as the multipart file "
                               f"field {name!r}")
            uploads = []
            for it in items:
                if isinstance(it, str) or not hasattr(it, "read"):
                    raise ApiError(400, "bad_request", f"field {name!r} must be a file upload (the server never "
                                   "reads paths)")
                data = await it.read()
                uploads.append(Upload(data, _clean_name(getattr(it, "filename", None))))
            opts = {k: v for k, v in form.multi_items() if k not in ("file", "files")}
        finally:
            await form.close()
        return Body(uploads, _check_options(opts, options))
    if kind in ("application/json", "text/json") or kind.endswith("+json"):
        doc = parse_json(await request.body())
        if many and isinstance(doc, list):
            doc = {"images": doc}
        if not isinstance(doc, dict):
            raise ApiError(400, "bad_request", 'send a JSON object, e.g. {"image": "<base64>", "top_k": 3}')
        key = "images" if many else "image"
        if key not in doc:
            other = [k for k in doc if k in ("path", "paths", "url", "file")]
            hint = " (the server never reads files or URLs: send the image bytes)" if other else ""
            raise ApiError(400, "bad_request", f"no {key!r} field{hint}; send " +
                           ('{"images": ["<base64>", ...]}' if many else '{"image": "<base64>"}'))
        opts = {k: v for k, v in doc.items() if k != key}
        opts = _check_options(opts, options)
        if many:
            images = doc[key]
            if not isinstance(images, list):
                raise ApiError(400, "bad_request", '"images" must be a list of base64 strings')
            if len(images) > max_items:
                raise too_many(len(images), max_items)
            # a bad item becomes that item's error, later; here only the bytes are taken out
            return Body([_lazy_b64(s, max_bytes, f"images[{i}]") for i, s in enumerate(images)], opts)
        return Body([Upload(_from_base64(doc[key], max_bytes, "image"))], opts)
    if kind.startswith("image/") or kind == "application/octet-stream":
        if many:
            raise ApiError(415, "unsupported_media_type", "a batch is multipart (field 'files') or JSON "
                           '({"images": [...]})')
        data = await request.body()
        if len(data) > max_bytes:
            raise too_large(len(data), max_bytes)
        return Body([Upload(data)], {})
    raise ApiError(415, "unsupported_media_type",
                   f"content type {kind or 'none'!r}: send multipart/form-data with the image in field "
                   f"{'files' if many else 'file'!r}, or JSON {{\"image{'s' if many else ''}\": base64}}")


def too_many(n: int, limit: int) -> ApiError:
    return ApiError(413, "too_many_images", f"{'more than ' + str(limit) if n > limit else n} images in one "
                    f"request; send at most {limit} per batch request")


class _BadItem(Upload):
    """A batch item whose bytes could not be taken out (its error is reported in its place)."""

    def __init__(self, error: ApiError):
        super().__init__(b"")
        self.error = error


def _lazy_b64(text: Any, max_bytes: int, where: str) -> Upload:
    try:
        return Upload(_from_base64(text, max_bytes, where))
    except ApiError as exc:
        return _BadItem(exc)


def item_error(upload: Upload) -> ApiError | None:
    return getattr(upload, "error", None)


def sniff(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` from the header; ``None`` when Pillow's own bomb guard refused to
    even open it (more than twice its pixel limit). Raises ``ApiError`` 415 for anything that is not an
    image of an allowed format."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=_open_formats()) as im:
                return im.format or "?", int(im.size[0]), int(im.size[1])
        except Image.DecompressionBombError:
            return None
        except UnidentifiedImageError:
            pass
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error) as exc:
            # a header that identifies but cannot be parsed is a broken image
            raise ApiError(422, "corrupt_image", f"the image header cannot be read ({exc})") from None
    for fmt, magic in MAGIC:  # an image of a known format whose header is cut off or damaged
        if data.startswith(magic) and (fmt != "WEBP" or data[8:12] == b"WEBP") and (fmt != "BMP" or data[6:10] == bytes(4)):
            raise ApiError(422, "corrupt_image", f"this looks like a {fmt} file but cannot be read (truncated or "
                           "corrupt)")
    try:  # say which format it is, when Pillow knows it but the server does not take it
        with Image.open(io.BytesIO(data)) as im:
            fmt = im.format
    except Exception:
        fmt = None
    if fmt:
        raise ApiError(415, "unsupported_media_type", f"{fmt} images are not accepted; send "
                       f"{', '.join(ALLOWED_FORMATS)}")
    raise ApiError(415, "unsupported_media_type", "not an image (the bytes are no format Pillow knows); send "
                   "a JPEG, PNG, GIF, BMP, TIFF or WebP file")


@dataclass(frozen=True)
class Header:
    """What an upload's header says, read without decoding: format, size, and the size a decode makes
    (smaller for a JPEG drafted to the model's input size)."""

    format: str
    width: int
    height: int
    decoded: tuple[int, int]


def _drafted_size(data: bytes, draft_size: int) -> tuple[int, int] | None:
    """The size a JPEG decode drafted to ``draft_size`` gives (header only; Pillow picks the scale)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data), formats=["JPEG"]) as im:
                im.draft("RGB", (draft_size, draft_size))
                return int(im.size[0]), int(im.size[1])
        except Exception:  # noqa: BLE001 - any failure here only means "no smaller estimate"
            return None


def inspect_upload(data: bytes, *, max_bytes: int, max_pixels: int | None, draft_size: int | None) -> Header:
    """Check one upload from its header alone (bytes, format, pixel count) before anything is decoded;
    raises ``ApiError`` (413, 415 or 422)."""
    if len(data) > max_bytes:
        raise too_large(len(data), max_bytes)
    if not data:
        raise ApiError(415, "unsupported_media_type", "the upload is empty (0 bytes); send an image file")
    head = sniff(data)
    if head is None or (max_pixels is not None and head[1] * head[2] > max_pixels):
        size = "" if head is None else f"{head[1]}x{head[2]} = {head[1] * head[2]:,} pixels "
        limit = f"{max_pixels:,}" if max_pixels is not None else "Pillow's"
        raise ApiError(422, "image_too_large", f"the image is {size or 'too large to open '}over the limit of "
                       f"{limit} pixels (decompression-bomb guard; imgclass serve --max-pixels)")
    fmt, w, h = head
    decoded = (_drafted_size(data, draft_size) if draft_size and fmt == "JPEG" else None) or (w, h)
    return Header(fmt, w, h, decoded)


def decode_checked(data: bytes, head: Header, *, max_pixels: int | None, draft_size: int | None) -> Image.Image:
    """Decode an upload that ``inspect_upload`` passed into an RGB image, or raise ``ApiError`` 422."""
    try:
        return load_image(data, max_pixels=max_pixels, draft_size=draft_size)
    except ImageLoadError as exc:
        raise ApiError(422, "corrupt_image", f"the {head.format} image cannot be decoded: {exc.reason}") from None


def decode_upload(data: bytes, *, max_bytes: int, max_pixels: int | None, draft_size: int | None) -> Image.Image:
    """Check and decode one upload into an RGB image, or raise ``ApiError`` (413, 415 or 422)."""
    head = inspect_upload(data, max_bytes=max_bytes, max_pixels=max_pixels, draft_size=draft_size)
    return decode_checked(data, head, max_pixels=max_pixels, draft_size=draft_size)
