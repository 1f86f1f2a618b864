"""Where shard bytes live: local paths or fsspec URLs, ranged reads, and ``ShardMember``, the lazy reference
to one image inside a tar shard that ``load_image`` reads.

This module is the bottom of the shards package: the decoder imports ``ShardMember`` from here, and
nothing here imports the decoder.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from contextlib import suppress

from ...errors import DataError

FORMAT = "imgclass.shards/1"
INDEX_NAME = "index.json"
SHARD_NAME = "shard-{:06d}.tar"
#: member extensions read as the image of an item (``img``: bytes of unknown format)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "img")


# --------------------------------------------------------------------------- locations (local path or URL)
def is_url(s: str) -> bool:
    return "://" in s


def url_fs(url: str):
    """``(filesystem, path)`` for a URL; local paths stay plain paths (no fsspec needed)."""
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as exc:  # unknown protocol, or its fsspec backend is not installed
        raise DataError(f"{url}: cannot open this URL ({exc}); check the URL or install the fsspec backend "
                        "for it (s3fs for s3://, gcsfs for gs://, aiohttp for https://)") from None


def join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name if is_url(root) else os.path.join(root, name)


def parent(url: str) -> str:
    return url.rsplit("/", 1)[0] if is_url(url) else os.path.dirname(url)


def exists(url: str) -> bool:
    if not is_url(url):
        return os.path.isfile(url)
    fs, path = url_fs(url)
    return fs.isfile(path)


def cat(url: str) -> bytes:
    if not is_url(url):
        with open(url, "rb") as f:
            return f.read()
    fs, path = url_fs(url)
    return fs.cat_file(path)


def open_url(url: str, mode: str = "rb"):
    if not is_url(url):
        return open(url, mode)
    import fsspec

    return fsspec.open(url, mode).open()


def normalise(source: str) -> str:
    """``file://`` URLs become local absolute paths; other URLs get fsspec's canonical spelling."""
    if source.startswith("file://"):
        return os.path.abspath(url_fs(source)[1])
    if is_url(source):
        fs, path = url_fs(source)
        return fs.unstrip_protocol(path.rstrip("/"))
    return os.path.abspath(source)


# --------------------------------------------------------------------------- lazy members
class _LocalFile:
    """An open file descriptor, closed when the last reader drops it (so eviction from the cache
    never closes a descriptor another thread is reading)."""

    __slots__ = ("fd", "stat", "lock")

    def __init__(self, path: str):
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
        st = os.fstat(self.fd)
        self.stat = (st.st_ino, st.st_mtime_ns, st.st_size)
        self.lock = threading.Lock()

    def read(self, offset: int, size: int) -> bytes:
        if hasattr(os, "pread"):  # positional read: no shared file position, so no lock
            return os.pread(self.fd, size, offset)
        with self.lock:
            os.lseek(self.fd, offset, os.SEEK_SET)
            return os.read(self.fd, size)

    def __del__(self):
        with suppress(OSError, AttributeError):
            os.close(self.fd)


_FILES: OrderedDict[str, _LocalFile] = OrderedDict()
_FILES_LOCK = threading.Lock()
_MAX_OPEN = 64  # per process; well under the usual limit of 1024 descriptors


def _local_file(path: str) -> _LocalFile:
    st = os.stat(path)
    with _FILES_LOCK:
        f = _FILES.get(path)
        if f is not None and f.stat == (st.st_ino, st.st_mtime_ns, st.st_size):
            _FILES.move_to_end(path)
            return f
    f = _LocalFile(path)  # first read, or the shard was rewritten since
    with _FILES_LOCK:
        _FILES[path] = f
        _FILES.move_to_end(path)
        while len(_FILES) > _MAX_OPEN:
            _FILES.popitem(last=False)
    return f


def read_range(url: str, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of a shard. Local shards: a cached descriptor per process and
    ``pread`` (thread- and fork-safe); URLs: one ranged ``cat_file`` through fsspec."""
    if is_url(url):
        fs, path = url_fs(url)
        data = fs.cat_file(path, start=offset, end=offset + size)
    else:
        data = _local_file(url).read(offset, size)
    if len(data) != size:
        raise OSError(f"shard ends after {len(data)} of {size} bytes (truncated shard?)")
    return bytes(data)


class ShardMember(str):
    """An image stored inside a tar shard: a ``str`` (``<shard root>/<original relative path>``, so
    ``relpath``, fingerprints, split files and CSV outputs read as for a folder) that also knows
    where its bytes are: ``url`` (shard), ``offset`` and ``size`` (inside the tar), ``member`` (name).

    ``load_image`` reads it through ``read_bytes``; it pickles to worker processes like a string.
    """

    url: str
    offset: int
    size: int
    member: str

    def __new__(cls, value: str, url: str = "", offset: int = 0, size: int = 0, member: str = ""):
        obj = super().__new__(cls, value)
        obj.url, obj.offset, obj.size, obj.member = url, int(offset), int(size), member
        return obj

    def read_bytes(self) -> bytes:
        """The member's encoded bytes (raises ``OSError`` when the shard cannot be read)."""
        return read_range(self.url, self.offset, self.size)

    @property
    def key(self) -> str:
        """The WebDataset key of the item (its member name without extensions)."""
        return split_member(self.member)[0]

    @property
    def location(self) -> str:
        """``shard-000003.tar:000000123.jpg`` (where the bytes are, for messages)."""
        return f"{self.url.rsplit('/', 1)[-1]}:{self.member}"

    def __repr__(self) -> str:
        return f"ShardMember({str(self)!r}, {self.location} @ {self.offset}+{self.size})"



def split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is everything before the first dot of the file name."""
    d, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{d}/{key}" if d else key), ext.lower()


def image_ext(members) -> str | None:
    """The extension of an item's image member (among ``members``' keys), or ``None``."""
    return next((e for e in members if e in IMAGE_EXTS), None)


def existing_shards(root: str) -> list[str]:
    """The ``shard-*.tar`` files in a folder or URL."""
    if is_url(root):
        fs, path = url_fs(root)
        return [fs.unstrip_protocol(p) for p in fs.glob(path + "/shard-*.tar")] if fs.isdir(path) else []
    import glob

    return glob.glob(os.path.join(glob.escape(root), "shard-*.tar"))
