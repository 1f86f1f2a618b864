"""Read tar shards: find them (folder with ``index.json``, glob, one ``.tar``, URL), read them as an
``ImageDataset`` of lazy ``ShardMember`` sources, or iterate their items front to back."""

from __future__ import annotations

import json
import os
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from ...errors import DataError
from ..dataset import SPLIT_NAMES, UNLABELLED, ImageDataset
from .io import (
    FORMAT,
    INDEX_NAME,
    ShardMember,
    cat,
    existing_shards,
    exists,
    image_ext,
    is_url,
    join,
    normalise,
    open_url,
    parent,
    split_member,
    url_fs,
)


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
            self._by_file = {join(self.root, s["file"]): s for s in self.index["shards"]}
        return self._by_file.get(url)


def _read_index(url: str) -> dict | None:
    if not exists(url):
        return None
    try:
        doc = json.loads(cat(url))
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
    if is_url(pattern):
        fs, path = url_fs(pattern)
        return sorted(fs.unstrip_protocol(p) for p in fs.glob(path))
    import glob

    return sorted(os.path.abspath(p) for p in glob.glob(pattern))


def _magic(s: str) -> bool:
    return any(c in s for c in "*?[")


def is_shard_source(source: str | os.PathLike) -> bool:
    """True for what ``read_shards`` reads: a URL, a ``.tar`` file, a glob, or a folder holding a
    shard ``index.json``."""
    s = os.fspath(source)
    if is_url(s):
        return True
    if os.path.isdir(s):  # a folder holding index.json and shards (a damaged index is reported when read)
        return os.path.isfile(os.path.join(s, INDEX_NAME)) and bool(existing_shards(os.path.abspath(s)))
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
    src = raw if _magic(raw) and not is_url(raw) else normalise(raw)
    if _magic(src):
        shards = [s for s in _glob(src) if s.lower().endswith(".tar")]
        if not shards:
            raise DataError(f"{raw}: no tar shards match; check the pattern (e.g. DIR/shard-*.tar)")
        parts = src.split("/") if is_url(src) else src.split(os.sep)
        first = next(k for k, p in enumerate(parts) if _magic(p))
        root = normalise("/".join(parts[:first]) if is_url(src) else os.sep.join(parts[:first]) or ".")
        shards = [normalise(s) for s in shards]
    elif src.lower().endswith(".tar"):
        if not exists(src):
            raise DataError(f"{raw}: no such shard; pass a .tar, a shard folder or DIR/shard-*.tar")
        root, shards = parent(src), [src]
    else:
        index = _read_index(join(src, INDEX_NAME))
        if index is None:
            raise DataError(f"{raw}: no shard index.json there; pass a folder written by 'imgclass data pack', "
                            "a .tar or DIR/shard-*.tar")
        return ShardSet(src, [join(src, s["file"]) for s in index["shards"]], index)
    return ShardSet(root, shards, _read_index(join(root, INDEX_NAME)))



def _scan(url: str) -> list[dict]:
    """Index-style items of a shard without an index entry: headers are read, data skipped, except the
    small ``.json``/``.cls`` members that carry the labels."""
    items: dict[str, dict] = {}
    try:
        with open_url(url) as fh, tarfile.open(fileobj=fh, mode="r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, ext = split_member(m.name)
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
        ext = image_ext(it["members"])
        path = it.get("path") or f"{url.rsplit('/', 1)[-1]}#{it['key']}.{ext}"
        if ext is None:
            skipped.append((join(sset.root, path), "no image member in the shard (only "
                            + ", ".join(sorted(it["members"])) + ")"))
            continue
        off, size = it["members"][ext]
        sources.append(ShardMember(join(sset.root, path), url, off, size, f"{it['key']}.{ext}"))
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


def iter_samples(shards: Sequence[str]) -> Iterator[tuple[str, str, dict[str, bytes]]]:
    """``(shard url, key, {ext: bytes})`` per item, reading each tar front to back (no seeking)."""
    for url in shards:
        key, sample = None, {}
        try:
            with open_url(url) as fh, tarfile.open(fileobj=fh, mode="r|") as tar:
                for m in tar:
                    if not m.isfile():
                        continue
                    k, ext = split_member(m.name)
                    if k != key and sample:
                        yield url, key, sample
                        sample = {}
                    key = k
                    sample[ext] = tar.extractfile(m).read()
        except (OSError, tarfile.TarError) as exc:
            raise DataError(f"{url}: cannot stream this shard ({exc}); check the URL or repack") from None
        if sample:
            yield url, key, sample
