"""Pack a dataset into WebDataset-style tar shards plus ``index.json`` (``imgclass data pack``)."""

from __future__ import annotations

import io
import os
import posixpath
import re
import tarfile
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from typing import Any

import numpy as np

from ..._util import atomic_write_bytes, dumps, progress_bar
from ...errors import ConfigError, DataError
from ..dataset import SPLIT_NAMES, ImageDataset
from .io import (
    FORMAT,
    IMAGE_EXTS,
    INDEX_NAME,
    SHARD_NAME,
    ShardMember,
    existing_shards,
    exists,
    is_url,
    join,
    normalise,
    open_url,
    parent,
    url_fs,
)

_BLOCK = tarfile.BLOCKSIZE
_PIL_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp", "GIF": "gif", "TIFF": "tif"}


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
        from ..decode import load_image

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
        self.url = join(root, self.file)
        self.tmp = None
        if is_url(root):
            self.fh = open_url(self.url, "wb")
        else:  # local: write a temp file and rename when complete, so a shard is never half there
            self.tmp = join(root, f".{self.file}.tmp-{os.getpid()}")
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


def _remove(url: str) -> None:
    if is_url(url):
        fs, path = url_fs(url)
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
    root, index_url, old = _prepare_out(ds, out, overwrite)
    split_of, order = _pack_order(ds, split_file, val_split, test_split, seed, shuffle)
    shards, skipped, total = _write_shards(ds, root, limit, order, split_of)
    new = {s["file"] for s in shards}
    for url in old:  # shards of an earlier pack that this one did not overwrite
        if posixpath.basename(url.replace(os.sep, "/")) not in new:
            _remove(url)
    index = _write_index(ds, root, index_url, shards, limit, seed, shuffle)
    secs = time.perf_counter() - t0
    for path, reason in skipped:
        log(f"warning: skipped {path}: {reason}")
    kept = index["num_items"]
    return {"out": root, "index": index_url, "items": kept, "shards": len(shards), "bytes": total,
            "seconds": secs, "images_per_s": kept / max(secs, 1e-9), "splits": index["splits"],
            "classes": index["counts"], "skipped": skipped}


def _prepare_out(ds: ImageDataset, out: str | os.PathLike, overwrite: bool) -> tuple[str, str, list[str]]:
    """``(root, index URL, shards already there)`` after checking ``out`` may receive ``ds``'s shards."""
    root = normalise(os.fspath(out))
    index_url = join(root, INDEX_NAME)
    old = existing_shards(root)
    if (old or exists(index_url)) and not overwrite:
        raise DataError(f"{root}: already holds shards; pass --overwrite to replace them or choose another --out")
    if not is_url(root):
        if os.path.exists(root) and not os.path.isdir(root):
            raise DataError(f"--out {root}: is a file; give a folder for the shards")
        os.makedirs(root, exist_ok=True)
    if not len(ds):
        raise DataError(f"{ds.name}: no images to pack")
    if any(isinstance(src, ShardMember) and parent(src.url) == root for src in ds.sources[:1]):
        raise DataError(f"--out {root}: the shards being packed live there; pack into another folder")
    return root, index_url, old


def _pack_order(ds: ImageDataset, split_file, val_split, test_split: float, seed: int,
                shuffle: bool) -> tuple[np.ndarray, list[int]]:
    """``(split name per item, the order to pack the items in)``: split by split, shuffled within each."""
    if split_file is not None:
        splits = ds.load_split(split_file)
    elif val_split or test_split:
        splits = ds.plan_split(val=val_split or 0.0, test=test_split, seed=seed)
    else:
        splits = ds.splits or {}
    split_of = np.full(len(ds), "", dtype=object)
    for name, idx in splits.items():
        split_of[np.asarray(idx, dtype=np.int64)] = name
    rng = np.random.default_rng(seed)
    order: list[int] = []
    for s in (*SPLIT_NAMES, ""):  # split by split, so a stream of one split reads few other shards
        members = np.flatnonzero(split_of == s)
        order.extend((members[rng.permutation(len(members))] if shuffle else members).tolist())
    return split_of, order


def _write_shards(ds: ImageDataset, root: str, limit: int, order: list[int],
                  split_of: np.ndarray) -> tuple[list[dict], list[tuple[str, str]], int]:
    """Write the items in ``order`` into shards of at most ``limit`` bytes: ``(shards, skipped, bytes)``."""
    n = len(ds)
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
    return shards, skipped, total


def _write_index(ds: ImageDataset, root: str, index_url: str, shards: list[dict], limit: int, seed: int,
                 shuffle: bool) -> dict[str, Any]:
    """Write and return ``index.json``: the dataset's classes and counts and every shard's items."""
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
    if is_url(root):
        fs, path = url_fs(index_url)
        fs.pipe_file(path, text.encode())
    else:
        atomic_write_bytes(index_url, text.encode())
        with suppress(OSError):  # readable like the shards (the atomic temp file is created private)
            os.chmod(index_url, os.stat(join(root, shards[0]["file"])).st_mode & 0o777)
    return index


def _label_counts(labels: Sequence, classes: Sequence[str]) -> dict[str, int]:
    counts = dict.fromkeys(classes, 0)
    for lab in labels:
        for c in (lab if isinstance(lab, list) else [lab] if lab is not None else []):
            counts[c] = counts.get(c, 0) + 1
    return counts

