"""WebDataset-style tar shards: pack a dataset into them, read them back lazily, stream them.

Layout written by ``pack_shards``::

    DIR/shard-000000.tar   members <key>.<ext> (the original encoded image bytes, untouched),
                           <key>.json ({"key", "path", "split", "label"[, "group"]}),
                           <key>.cls (class index, single-label data only)
    DIR/shard-000001.tar   ...
    DIR/index.json         format, task, classes, taxonomy, counts, and per shard its file, count,
                           bytes and every item with the byte offset and size of each member

Keys are the items' positions in the packed dataset, zero-padded, so reading restores the original
order even though items are shuffled across shards (within each split) when packing.

Two ways to read:

* ``read_shards`` (behind ``load_dataset``) gives an ``ImageDataset`` whose sources are
  ``ShardMember`` strings: lazy references (shard URL, byte offset, size) that ``load_image`` reads
  one byte range at a time, so every command that takes a dataset takes shards.
* ``ShardStream`` (a torch ``IterableDataset``) reads whole shards sequentially with a shuffle
  buffer, split across DDP ranks and DataLoader workers.

Shards are plain tar files, written and read with the stdlib ``tarfile`` and opened through
``fsspec`` (local paths, ``file://``, ``memory://``, ``s3://``, ``https://``, ...). Not the
``webdataset`` package: what is needed here is a few lines of ``tarfile``, it would be one more
dependency, and it does not record member offsets, which the random access above needs.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import re
import tarfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .._util import atomic_write_bytes, dumps, progress_bar
from ..errors import ConfigError, DataError
from .dataset import SPLIT_NAMES, UNLABELLED, ImageDataset

FORMAT = "imgclass.shards/1"
INDEX_NAME = "index.json"
SHARD_NAME = "shard-{:06d}.tar"
#: member extensions read as the image of an item (``img``: bytes of unknown format)
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "img")
_BLOCK = tarfile.BLOCKSIZE
_PIL_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif"}


# --------------------------------------------------------------------------- sizes
def parse_size(text: str | int) -> int:
    """``"256MB"``, ``"1GB"``, ``"500KB"``, ``"64MiB"`` or a number of bytes → bytes (KB = 1000, KiB = 1024)."""
    if isinstance(text, int):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)b?\s*", str(text), flags=re.IGNORECASE)
        if not m:
            raise ConfigError(f"--shard-size {text!r}: give a size such as 256MB, 1GB or 500KB")
        base = 1024 if m.group(3) else 1000
        value = int(float(m.group(1)) * base ** "_kmgt".index(m.group(2).lower() or "_"))
    if value < 4 * _BLOCK:
        raise ConfigError(f"--shard-size {text!r}: too small; shards need at least a few KB (e.g. 500KB)")
    return value


# --------------------------------------------------------------------------- locations (local path or URL)
def _is_url(s: str) -> bool:
    return "://" in s


def _fs(url: str):
    """``(filesystem, path)`` for a URL; local paths stay plain paths (no fsspec needed)."""
    from fsspec.core import url_to_fs

    try:
        return url_to_fs(url)
    except (ImportError, ValueError) as exc:  # unknown protocol, or its fsspec backend is not installed
        raise DataError(f"{url}: cannot open this URL ({exc}); check the URL or install the fsspec backend "
                        "for it (s3fs for s3://, gcsfs for gs://, aiohttp for https://)") from None


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name if _is_url(root) else os.path.join(root, name)


def _parent(url: str) -> str:
    return url.rsplit("/", 1)[0] if _is_url(url) else os.path.dirname(url)


def _exists(url: str) -> bool:
    if not _is_url(url):
        return os.path.isfile(url)
    fs, path = _fs(url)
    return fs.isfile(path)


def _cat(url: str) -> bytes:
    if not _is_url(url):
        with open(url, "rb") as f:
            return f.read()
    fs, path = _fs(url)
    return fs.cat_file(path)


def _open(url: str, mode: str = "rb"):
    if not _is_url(url):
        return open(url, mode)
    import fsspec

    return fsspec.open(url, mode).open()


def _normalise(source: str) -> str:
    """``file://`` URLs become local absolute paths; other URLs get fsspec's canonical spelling."""
    if source.startswith("file://"):
        return os.path.abspath(_fs(source)[1])
    if _is_url(source):
        fs, path = _fs(source)
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
    if _is_url(url):
        fs, path = _fs(url)
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
        return _split_member(self.member)[0]

    @property
    def location(self) -> str:
        """``shard-000003.tar:000000123.jpg`` (where the bytes are, for messages)."""
        return f"{self.url.rsplit('/', 1)[-1]}:{self.member}"

    def __repr__(self) -> str:
        return f"ShardMember({str(self)!r}, {self.location} @ {self.offset}+{self.size})"


# --------------------------------------------------------------------------- packing
def _stored_paths(ds: ImageDataset) -> list[str]:
    """Item paths to record: relative to the dataset root; paths outside it relative to their common folder."""
    rel = [ds.relpath(i) if isinstance(ds.sources[i], str) else f"bytes-{i:06d}" for i in range(len(ds))]
    outside = [i for i, r in enumerate(rel) if os.path.isabs(r) or r.startswith("../")]
    if outside:
        absolute = [os.path.abspath(rel[i]) for i in outside]
        common = os.path.commonpath(absolute) if len(absolute) > 1 else os.path.dirname(absolute[0])
        for i, a in zip(outside, absolute):
            rel[i] = os.path.relpath(a, common)
    return [r.replace(os.sep, "/") for r in rel]


def _encoded(src: Any) -> tuple[bytes, str]:
    """(encoded bytes, member extension) of a source, untouched; in-memory images become PNG."""
    if isinstance(src, ShardMember):
        data, name = src.read_bytes(), str(src)
    elif isinstance(src, (str, os.PathLike)):
        name = os.fspath(src)
        with open(name, "rb") as f:
            data = f.read()
    elif isinstance(src, (bytes, bytearray)):
        data, name = bytes(src), ""
    else:  # a PIL image or an array: no original bytes, so lossless PNG
        from .decode import load_image

        buf = io.BytesIO()
        load_image(src).save(buf, format="PNG")
        return buf.getvalue(), "png"
    ext = posixpath.splitext(name.replace("\\", "/"))[1].lower().lstrip(".")
    if ext not in IMAGE_EXTS:
        ext = _sniff_ext(data)
    return data, ext


def _sniff_ext(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return _PIL_EXT.get(im.format or "", "img")
    except Exception:  # unreadable bytes are packed anyway and skipped when decoded, like a bad file
        return "img"


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = size, 0o644, 0, 0, 0, "", ""
    return ti


def _padded(n: int) -> int:
    return -(-n // _BLOCK) * _BLOCK


class _ShardWriter:
    """One tar being written; records each member's data offset (header sizes included, whatever they are)."""

    def __init__(self, root: str, number: int):
        self.file = SHARD_NAME.format(number)
        self.url = _join(root, self.file)
        self.tmp = None
        if _is_url(root):
            self.fh = _open(self.url, "wb")
        else:  # local: write a temp file and rename when complete, so a shard is never half there
            self.tmp = _join(root, f".{self.file}.tmp-{os.getpid()}")
            self.fh = open(self.tmp, "wb")
        self.tar = tarfile.open(fileobj=self.fh, mode="w|", format=tarfile.USTAR_FORMAT)
        self.items: list[dict] = []
        self.splits: dict[str, int] = {}

    @property
    def offset(self) -> int:
        return self.tar.offset

    def add(self, files: list[tuple[str, bytes]]) -> dict[str, list[int]]:
        members = {}
        for name, data in files:
            self.tar.addfile(_tarinfo(name, len(data)), io.BytesIO(data))
            members[name.split(".", 1)[1]] = [self.tar.offset - _padded(len(data)), len(data)]
        return members

    def close(self) -> dict:
        self.tar.close()
        self.fh.flush()
        size = self.fh.tell()
        if self.tmp is not None:
            os.fsync(self.fh.fileno())
        self.fh.close()
        if self.tmp is not None:
            os.replace(self.tmp, self.url)
        return {"file": self.file, "count": len(self.items), "bytes": size, "splits": self.splits,
                "items": self.items}

    def abort(self) -> None:
        with suppress(Exception):
            self.fh.close()
        if self.tmp is not None:
            with suppress(OSError):
                os.unlink(self.tmp)


def _existing_shards(root: str) -> list[str]:
    if _is_url(root):
        fs, path = _fs(root)
        return [fs.unstrip_protocol(p) for p in fs.glob(path + "/shard-*.tar")] if fs.isdir(path) else []
    import glob

    return glob.glob(os.path.join(glob.escape(root), "shard-*.tar"))


def _remove(url: str) -> None:
    if _is_url(url):
        fs, path = _fs(url)
        fs.rm_file(path)
    else:
        os.unlink(url)


def pack_shards(ds: ImageDataset, out: str | os.PathLike, shard_size: str | int = "256MB", *,
                split_file: str | os.PathLike | None = None, val_split: float | None = None,
                test_split: float = 0.0, seed: int = 0, shuffle: bool = True, overwrite: bool = False,
                log: Callable[[str], Any] = lambda m: None) -> dict[str, Any]:
    """Write ``ds`` as WebDataset-style tar shards of about ``shard_size`` each plus ``index.json``.

    ``out`` is a folder or any fsspec URL. Every item keeps its split: ``split_file`` (a
    ``split.json``) wins, then ``val_split``/``test_split`` (seeded, stratified; carved out of train
    for pre-split data), then the dataset's own pre-split folders or split column. Items are shuffled
    with ``seed`` within each split (``shuffle=False`` keeps the dataset order); image bytes are
    copied untouched (files that cannot be read are skipped and listed; corrupt images are packed and
    skipped later when decoded, as they would be from a folder). Returns a summary: ``items``,
    ``shards``, ``bytes``, ``seconds``, ``images_per_s``, ``splits``, ``skipped``, ``index``.
    """
    t0 = time.perf_counter()
    limit = parse_size(shard_size)
    root = _normalise(os.fspath(out))
    index_url = _join(root, INDEX_NAME)
    old = _existing_shards(root)
    if (old or _exists(index_url)) and not overwrite:
        raise DataError(f"{root}: already holds shards; pass --overwrite to replace them or choose another --out")
    if not _is_url(root):
        if os.path.exists(root) and not os.path.isdir(root):
            raise DataError(f"--out {root}: is a file; give a folder for the shards")
        os.makedirs(root, exist_ok=True)
    n = len(ds)
    if not n:
        raise DataError(f"{ds.name}: no images to pack")
    if any(isinstance(src, ShardMember) and _parent(src.url) == root for src in ds.sources[:1]):
        raise DataError(f"--out {root}: the shards being packed live there; pack into another folder")

    if split_file is not None:
        splits = ds.load_split(split_file)
    elif val_split or test_split:
        splits = ds.plan_split(val=val_split or 0.0, test=test_split, seed=seed)
    else:
        splits = ds.splits or {}
    split_of = np.full(n, "", dtype=object)
    for name, idx in splits.items():
        split_of[np.asarray(idx, dtype=np.int64)] = name
    rng = np.random.default_rng(seed)
    order: list[int] = []
    for s in (*SPLIT_NAMES, ""):  # split by split, so a stream of one split reads few other shards
        members = np.flatnonzero(split_of == s)
        order.extend((members[rng.permutation(len(members))] if shuffle else members).tolist())

    paths = _stored_paths(ds)
    labels = ds.labels()
    single = ds.targets is not None and ds.targets.ndim == 1
    width = max(9, len(str(n - 1)))
    shards: list[dict] = []
    skipped: list[tuple[str, str]] = []
    writer: _ShardWriter | None = None
    total = 0
    try:
        with progress_bar(n, "packing") as bar:
            for i in order:
                bar.advance()
                try:
                    data, ext = _encoded(ds.sources[i])
                except OSError as exc:
                    skipped.append((paths[i], f"cannot read file ({exc.strerror or exc})"))
                    continue
                key = f"{i:0{width}d}"
                meta: dict[str, Any] = {"key": key, "path": paths[i], "split": split_of[i], "label": labels[i]}
                if ds.groups is not None:
                    meta["group"] = ds.groups[i]
                files = [(f"{key}.{ext}", data), (f"{key}.json", dumps(meta, indent=None).encode())]
                if single and labels[i] is not None:
                    files.append((f"{key}.cls", str(int(ds.targets[i])).encode()))
                need = sum(_BLOCK + _padded(len(d)) for _, d in files)
                if writer is not None and writer.items and writer.offset + need + 2 * _BLOCK > limit:
                    shards.append(writer.close())
                    total += shards[-1]["bytes"]
                    writer = None
                if writer is None:
                    writer = _ShardWriter(root, len(shards))
                writer.items.append({**meta, "members": writer.add(files)})
                writer.splits[split_of[i]] = writer.splits.get(split_of[i], 0) + 1
            if writer is not None:
                shards.append(writer.close())
                total += shards[-1]["bytes"]
                writer = None
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    if not shards:
        raise DataError(f"{ds.name}: none of the {n} images could be read; nothing was packed")
    new = {s["file"] for s in shards}
    for url in old:  # shards of an earlier pack that this one did not overwrite
        if posixpath.basename(url.replace(os.sep, "/")) not in new:
            _remove(url)

    kept = [it for s in shards for it in s["items"]]
    split_counts = {s: sum(1 for it in kept if it["split"] == s) for s in SPLIT_NAMES}
    index = {
        "format": FORMAT,
        "name": ds.name,
        "task": ds.task,
        "classes": list(ds.classes),
        "taxonomy": ds.taxonomy,
        "num_items": len(kept),
        "counts": _label_counts([it["label"] for it in kept], ds.classes),
        "splits": {s: c for s, c in split_counts.items() if c},
        "shard_size": limit,
        "seed": seed,
        "shuffled": shuffle,
        "shards": shards,
    }
    text = dumps(index, indent=None) + "\n"
    if _is_url(root):
        fs, path = _fs(index_url)
        fs.pipe_file(path, text.encode())
    else:
        atomic_write_bytes(index_url, text.encode())
        with suppress(OSError):  # readable like the shards (the atomic temp file is created private)
            os.chmod(index_url, os.stat(_join(root, shards[0]["file"])).st_mode & 0o777)
    secs = time.perf_counter() - t0
    for path, reason in skipped:
        log(f"warning: skipped {path}: {reason}")
    return {"out": root, "index": index_url, "items": len(kept), "shards": len(shards), "bytes": total,
            "seconds": secs, "images_per_s": len(kept) / max(secs, 1e-9), "splits": index["splits"],
            "classes": index["counts"], "skipped": skipped}


def _label_counts(labels: Sequence, classes: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(classes, 0)
    for lab in labels:
        for c in (lab if isinstance(lab, list) else [lab] if lab is not None else []):
            counts[c] = counts.get(c, 0) + 1
    return counts


# --------------------------------------------------------------------------- finding shards
@dataclass
class ShardSet:
    """What a shard source names: the folder its paths are relative to, the shard URLs in order, and
    ``index.json`` when there is one."""

    root: str
    shards: list[str]
    index: dict | None

    def entry(self, url: str) -> dict | None:
        """The index entry of one shard (``None`` when the index does not list it)."""
        if self.index is None:
            return None
        if not hasattr(self, "_by_file"):
            self._by_file = {_join(self.root, s["file"]): s for s in self.index["shards"]}
        return self._by_file.get(url)


def _read_index(url: str) -> dict | None:
    if not _exists(url):
        return None
    try:
        doc = json.loads(_cat(url))
    except (OSError, ValueError) as exc:
        raise DataError(f"{url}: not a readable shard index ({exc}); repack with 'imgclass data pack'") from None
    fmt = str(doc.get("format", "")) if isinstance(doc, dict) else ""
    if not fmt.startswith("imgclass.shards/"):
        return None
    if fmt != FORMAT:
        raise DataError(f"{url}: shard index format {fmt!r} is newer than this imgclass reads ({FORMAT}); "
                        "upgrade imgclass")
    return doc


def _glob(pattern: str) -> list[str]:
    if _is_url(pattern):
        fs, path = _fs(pattern)
        return sorted(fs.unstrip_protocol(p) for p in fs.glob(path))
    import glob

    return sorted(os.path.abspath(p) for p in glob.glob(pattern))


def _magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def is_shard_source(source: str | os.PathLike) -> bool:
    """True for what ``read_shards`` reads: a URL, a ``.tar`` file, a glob, or a folder holding a
    shard ``index.json``."""
    s = os.fspath(source)
    if _is_url(s):
        return True
    if os.path.isdir(s):  # a folder holding index.json and shards (a damaged index is reported when read)
        return os.path.isfile(os.path.join(s, INDEX_NAME)) and bool(_existing_shards(os.path.abspath(s)))
    if os.path.isfile(s):
        return s.lower().endswith(".tar")
    return _magic(s)


def find_shards(source: str | os.PathLike) -> ShardSet:
    """Resolve ``DIR`` (with ``index.json``), ``DIR/shard-*.tar``, ``one.tar`` or any fsspec URL of those."""
    try:
        return _find_shards(os.fspath(source))
    except OSError as exc:  # a remote store refusing access, a network failure, ...
        raise DataError(f"{os.fspath(source)}: cannot list the shards ({exc}); check the path and access rights") from None


def _find_shards(raw: str) -> ShardSet:
    src = raw if _magic(raw) and not _is_url(raw) else _normalise(raw)
    if _magic(src):
        shards = [s for s in _glob(src) if s.lower().endswith(".tar")]
        if not shards:
            raise DataError(f"{raw}: no tar shards match; check the pattern (e.g. DIR/shard-*.tar)")
        parts = src.split("/") if _is_url(src) else src.split(os.sep)
        first = next(k for k, p in enumerate(parts) if _magic(p))
        root = _normalise("/".join(parts[:first]) if _is_url(src) else os.sep.join(parts[:first]) or ".")
        shards = [_normalise(s) for s in shards]
    elif src.lower().endswith(".tar"):
        if not _exists(src):
            raise DataError(f"{raw}: no such shard; pass a .tar, a shard folder or DIR/shard-*.tar")
        root, shards = _parent(src), [src]
    else:
        index = _read_index(_join(src, INDEX_NAME))
        if index is None:
            raise DataError(f"{raw}: no shard index.json there; pass a folder written by 'imgclass data pack', "
                            "a .tar or DIR/shard-*.tar")
        return ShardSet(src, [_join(src, s["file"]) for s in index["shards"]], index)
    return ShardSet(root, shards, _read_index(_join(root, INDEX_NAME)))


# --------------------------------------------------------------------------- reading a dataset
def _split_member(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is everything before the first dot of the file name."""
    d, _, base = name.rpartition("/")
    key, _, ext = base.partition(".")
    return (f"{d}/{key}" if d else key), ext.lower()


def _scan(url: str) -> list[dict]:
    """Index-style items of a shard without an index entry: headers are read, data skipped, except the
    small ``.json``/``.cls`` members that carry the labels."""
    items: dict[str, dict] = {}
    try:
        with _open(url) as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, ext = _split_member(m.name)
                it = items.setdefault(key, {"key": key, "members": {}})
                it["members"][ext] = [m.offset_data, m.size]
                if ext in ("json", "cls"):
                    raw = tar.extractfile(m).read()
                    if ext == "json":
                        meta = json.loads(raw)
                        it.update({k: v for k, v in meta.items() if k in ("path", "split", "label", "group")})
                    else:
                        it.setdefault("label", raw.decode("utf-8").strip())
    except (OSError, tarfile.TarError, ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{url}: not a readable tar shard ({exc}); repack it with 'imgclass data pack'") from None
    return list(items.values())


def _image_ext(members: dict) -> str | None:
    return next((e for e in members if e in IMAGE_EXTS), None)


def read_shards(source: str | os.PathLike, name: str | None = None) -> ImageDataset:
    """An ``ImageDataset`` over tar shards whose sources are lazy ``ShardMember`` references.

    ``source``: a folder written by ``pack_shards`` (read through its ``index.json``, no shard is
    opened), ``DIR/shard-*.tar`` (the index entries of the matching shards), a single ``.tar``, or an
    fsspec URL of any of these. Shards without an index entry are scanned once for their labels.
    Items come back in their original order, with their splits, groups and classes.
    """
    sset = find_shards(source)
    index = sset.index
    rows: list[tuple[str, dict]] = []
    skipped: list[tuple[str, str]] = []
    for url in sset.shards:
        entry = sset.entry(url)
        for it in (entry["items"] if entry is not None else _scan(url)):
            rows.append((url, it))
    if all(str(it["key"]).isdigit() for _, it in rows):  # restore the order items had before packing
        rows.sort(key=lambda r: int(r[1]["key"]))
    sources: list[ShardMember] = []
    metas: list[dict] = []
    for url, it in rows:
        ext = _image_ext(it["members"])
        path = it.get("path") or f"{url.rsplit('/', 1)[-1]}#{it['key']}.{ext}"
        if ext is None:
            skipped.append((_join(sset.root, path), "no image member in the shard (only "
                            + ", ".join(sorted(it["members"])) + ")"))
            continue
        off, size = it["members"][ext]
        sources.append(ShardMember(_join(sset.root, path), url, off, size, f"{it['key']}.{ext}"))
        metas.append(it)
    if not sources:
        raise DataError(f"{os.fspath(source)}: no images in the shards")

    labels = [m.get("label") for m in metas]
    task = index.get("task") if index else None
    taxonomy = index.get("taxonomy") if index else None
    classes = list(index["classes"]) if index and index.get("classes") else None
    multi = task == "multilabel" or any(isinstance(lab, list) for lab in labels)
    seen = sorted({c for lab in labels if lab is not None for c in (lab if isinstance(lab, list) else [lab])})
    if classes is None:
        classes = seen
    else:
        unknown = [c for c in seen if c not in set(classes)]
        if unknown:
            raise DataError(f"{sset.root}: labels {unknown[:5]} are not among the index.json classes; "
                            "repack the shards with 'imgclass data pack'")
    pos = {c: k for k, c in enumerate(classes)}
    if not seen and not classes:
        targets, task = None, None
    elif multi:
        targets = np.zeros((len(labels), len(classes)), dtype=np.uint8)
        for r, lab in enumerate(labels):
            targets[r, [pos[c] for c in (lab if isinstance(lab, list) else [lab] if lab is not None else [])]] = 1
        task = "multilabel"
    else:
        targets = np.array([pos[lab] if lab is not None else UNLABELLED for lab in labels], dtype=np.int64)
        if task is None:
            if any("/" in c for c in classes):
                task, taxonomy = "hierarchical", _path_taxonomy(classes)
            else:
                task = "binary" if len(classes) == 2 else "multiclass"
    split_names = np.asarray([m.get("split") or "" for m in metas], dtype=object)
    splits = {s: np.flatnonzero(split_names == s) for s in SPLIT_NAMES if (split_names == s).any()} or None
    groups = [str(m.get("group", "")) for m in metas] if any("group" in m for m in metas) else None
    ds_name = name or (index or {}).get("name") or sset.root.rstrip("/").rsplit("/", 1)[-1]
    return ImageDataset(sources=sources, targets=targets, classes=classes, task=task, taxonomy=taxonomy,
                        groups=groups, splits=splits, root=sset.root, name=ds_name, skipped=skipped)


def _path_taxonomy(classes: Sequence[str]) -> dict[str, str | None]:
    tax: dict[str, str | None] = {}
    for c in classes:
        parts = c.split("/")
        for k in range(1, len(parts) + 1):
            tax["/".join(parts[:k])] = "/".join(parts[:k - 1]) or None
    return tax


# --------------------------------------------------------------------------- streaming
class _StreamBase:
    """The logic of ``ShardStream`` (which adds torch's ``IterableDataset`` as a base when first used,
    so importing this module does not import torch)."""

    def __init__(self, source: str | os.PathLike | ShardSet, *, split: str | None = None,
                 shuffle_buffer: int = 0, shuffle_shards: bool = True, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, split_by: str = "auto",
                 preprocess: Any = None, max_pixels: int | None = None, classes: Sequence[str] | None = None,
                 select: Mapping[tuple[str, str], Any] | None = None):
        self.shardset = source if isinstance(source, ShardSet) else find_shards(source)
        self.select = select
        self._selected_shards = {u for u, _ in select} if select is not None else None
        index = self.shardset.index
        self.classes = list(classes) if classes is not None else (list(index["classes"]) if index else None)
        self._pos = {c: k for k, c in enumerate(self.classes or [])}
        self.multilabel = bool(index and index.get("task") == "multilabel")
        if split is not None and split not in SPLIT_NAMES:
            raise ConfigError(f"split {split!r}: choose one of {', '.join(SPLIT_NAMES)}")
        if split_by not in ("auto", "shard", "item"):
            raise ConfigError(f"split_by {split_by!r}: choose auto, shard or item")
        if (rank is None) != (world_size is None) or (world_size is not None and not 0 <= rank < world_size):
            raise ConfigError(f"rank {rank} / world_size {world_size}: give both, with 0 <= rank < world_size")
        self.split, self.shuffle_buffer, self.shuffle_shards = split, int(shuffle_buffer), shuffle_shards
        self.seed, self.epoch, self.rank, self.world_size, self.split_by = int(seed), 0, rank, world_size, split_by
        if preprocess is not None and not hasattr(preprocess, "to_array"):
            # duck-typed so that data (the first layer) does not import transforms
            raise ConfigError("preprocess: give an imgclass.transforms.Preprocess, e.g. Preprocess(size=32)")
        self.preprocess = preprocess
        from .decode import DEFAULT_MAX_PIXELS

        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        self.skipped: list[tuple[str, str]] = []

    def set_epoch(self, epoch: int) -> None:
        """Shard order and shuffle buffer use ``seed + epoch``: call it before each epoch's iteration."""
        self.epoch = int(epoch)

    def _parts(self) -> tuple[int, int]:
        """``(this part, number of parts)`` over DDP ranks x DataLoader workers."""
        rank, world = self.rank, self.world_size
        wid, nw = 0, 1
        try:
            import torch.distributed as dist
            from torch.utils.data import get_worker_info

            if rank is None and dist.is_available() and dist.is_initialized():
                rank, world = dist.get_rank(), dist.get_world_size()
            info = get_worker_info()
            if info is not None:
                wid, nw = info.id, info.num_workers
        except ImportError:
            pass
        rank, world = (0, 1) if rank is None else (rank, world)
        return rank * nw + wid, world * nw

    def shard_order(self) -> list[str]:
        """This epoch's shard order (all parts), leaving out shards holding nothing of ``split``."""
        shards = list(self.shardset.shards)
        if self.split is not None and self.shardset.index is not None:
            shards = [u for u in shards if (self.shardset.entry(u) or {}).get("splits", {self.split: 1}).get(self.split)]
        if self._selected_shards is not None:
            shards = [u for u in shards if u in self._selected_shards]
        if self.shuffle_shards:
            perm = np.random.default_rng(self.seed + self.epoch).permutation(len(shards))
            shards = [shards[k] for k in perm]
        return shards

    def _target(self, meta: dict):
        lab = meta.get("label")
        if self.classes is None:
            return lab
        if self.multilabel or isinstance(lab, list):
            y = np.zeros(len(self.classes), dtype=np.uint8)
            y[[self._pos[c] for c in (lab or [])]] = 1
            return y
        return UNLABELLED if lab is None else self._pos[lab]

    def _samples(self, shards: list[str]) -> Iterator[tuple[str, str, dict[str, bytes]]]:
        """``(shard url, key, {ext: bytes})`` per item, reading each tar front to back (no seeking)."""
        for url in shards:
            key, sample = None, {}
            try:
                with _open(url) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
                    for m in tar:
                        if not m.isfile():
                            continue
                        k, ext = _split_member(m.name)
                        if k != key and sample:
                            yield url, key, sample
                            sample = {}
                        key = k
                        sample[ext] = tar.extractfile(m).read()
            except (OSError, tarfile.TarError) as exc:
                raise DataError(f"{url}: cannot stream this shard ({exc}); check the URL or repack") from None
            if sample:
                yield url, key, sample

    def _items(self, shards: list[str], part: int, parts: int) -> Iterator[tuple[str, bytes, Any]]:
        position = 0
        for url, key, sample in self._samples(shards):
            if self.select is not None:
                if (url, key) not in self.select:
                    continue
                meta = {}
            else:
                meta = json.loads(sample["json"]) if "json" in sample else {}
            if "label" not in meta and "cls" in sample:
                meta["label"] = sample["cls"].decode().strip()
            if self.split is not None and self.select is None and (meta.get("split") or "") != self.split:
                continue
            ext = _image_ext(sample)
            if ext is None:
                continue
            mine = position % parts == part
            position += 1
            if mine:
                yield key, sample[ext], self.select[url, key] if self.select is not None else self._target(meta)

    def __iter__(self) -> Iterator[tuple[str, Any, Any]]:
        part, parts = self._parts()
        shards = self.shard_order()
        by_shard = self.split_by == "shard" or (self.split_by == "auto" and len(shards) >= parts)
        items = self._items(shards[part::parts], 0, 1) if by_shard else self._items(shards, part, parts)
        if self.shuffle_buffer > 1:
            items = _buffer_shuffle(items, self.shuffle_buffer,
                                    np.random.default_rng([self.seed + self.epoch, part]))
        for key, data, target in items:
            if self.preprocess is None:
                yield key, data, target
                continue
            from ..errors import ImageLoadError
            from .decode import load_image

            size = self.preprocess.size
            try:
                img = load_image(data, max_pixels=self.max_pixels,
                                 draft_size=max(size) if isinstance(size, tuple) else size)
            except ImageLoadError as exc:
                self.skipped.append((key, exc.reason))
                continue
            yield key, np.ascontiguousarray(self.preprocess.to_array(img).transpose(2, 0, 1)), target


def _buffer_shuffle(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """The WebDataset shuffle: keep ``size`` items, emit a random one as each new item arrives."""
    buf: list = []
    for it in items:
        if len(buf) < size:
            buf.append(it)
            continue
        j = int(rng.integers(len(buf)))
        buf[j], it = it, buf[j]
        yield it
    for j in rng.permutation(len(buf)):
        yield buf[j]


_STREAM_DOC = """Stream tar shards for training: a torch ``IterableDataset``.

    Reads whole shards front to back (no random access: good for object stores), in an order
    shuffled with ``seed + epoch`` (``set_epoch``), through a shuffle buffer of ``shuffle_buffer``
    items. Parts: every DDP rank (``torch.distributed`` when initialised, or ``rank``/``world_size``)
    times every DataLoader worker gets a disjoint part, together covering the data once: whole shards
    when there are at least as many shards as parts (``split_by="shard"``; parts may then differ in
    size by up to a shard), else every part reads all shards and keeps every n-th item
    (``split_by="item"``; equal parts, more reading). ``split`` keeps one of train/val/test.
    ``select`` (``{(shard URL, key): target}``) keeps only those items, with those targets, and skips
    shards holding none of them (how training streams the train part of a split it made itself).

    Yields ``(key, encoded bytes, target)``, or with ``preprocess`` (a ``Preprocess``)
    ``(key, uint8 array 3xHxW, target)``; undecodable images are skipped and listed in ``skipped``
    (per process). ``target`` is the class index (``-1`` unlabelled), a 0/1 vector (multilabel) or,
    without known classes, the label text. The same seed and epoch give the same order.
    """


if TYPE_CHECKING:  # what the class built below is, for type checkers and linters
    from torch.utils.data import IterableDataset

    class ShardStream(_StreamBase, IterableDataset):
        pass


def _make_stream_class() -> type:
    from torch.utils.data import IterableDataset

    cls = type("ShardStream", (_StreamBase, IterableDataset), {"__doc__": _STREAM_DOC, "__module__": __name__})
    return cls


def __getattr__(name: str):
    if name == "ShardStream":  # built on first use so that importing this module does not import torch
        cls = _make_stream_class()
        globals()[name] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["FORMAT", "ShardMember", "ShardSet", "ShardStream", "find_shards", "is_shard_source", "pack_shards",
           "parse_size", "read_range", "read_shards"]
