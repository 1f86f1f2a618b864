"""``imgclass data check``: counts, sizes and modes, bad files, exact duplicates and imbalance."""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from typing import Any

import numpy as np
from PIL import Image

from .._util import progress_bar
from ..errors import ImageLoadError
from .dataset import ImageDataset
from .decode import DEFAULT_MAX_PIXELS, load_image, max_file_bytes, source_bytes


def _inspect(src, max_pixels):
    """(sha256, (w, h), original mode, error reason or None) for one source; a device, FIFO, folder or a file
    above the byte budget of ``max_pixels`` is refused unread, with its reason."""
    try:
        data = source_bytes(src, max_file_bytes(max_pixels))  # a file, bytes or a tar-shard member
    except OSError as exc:
        return None, None, None, f"cannot read file ({exc.strerror or exc})"
    digest = hashlib.sha256(data).hexdigest()
    size = mode = None
    try:
        import io

        with Image.open(io.BytesIO(data)) as im:
            size, mode = im.size, im.mode
    except Exception:
        pass
    try:
        load_image(data if data else src, max_pixels=max_pixels)
    except ImageLoadError as exc:
        return digest, size, mode, exc.reason
    return digest, size, mode, None


def _inspect_chunk(sources, max_pixels):
    return len(sources), [_inspect(s, max_pixels) for s in sources]


def check_dataset(ds: ImageDataset, max_pixels: int | None = DEFAULT_MAX_PIXELS, n_jobs: int | None = None) -> dict[str, Any]:
    """Inspect every image of ``ds``: decodability, size, mode, content hash. Returns a JSON-able dict."""
    n = len(ds)
    results: list = []
    with progress_bar(n, "checking") as bar:
        chunks = [ds.sources[s:s + 128] for s in range(0, n, 128)]
        if n < 256 or n_jobs == 1:
            gen = (_inspect_chunk(c, max_pixels) for c in chunks)
        else:
            from joblib import Parallel, delayed

            gen = Parallel(n_jobs=n_jobs or os.cpu_count() or 1, return_as="generator")(
                delayed(_inspect_chunk)(c, max_pixels) for c in chunks)
        for k, res in gen:
            results.extend(res)
            bar.advance(k)

    split_of = ["all"] * n
    if ds.splits:
        for name, idx in ds.splits.items():
            for i in idx:
                split_of[i] = name
    bad, sizes, modes, by_hash = [], [], Counter(), defaultdict(list)
    for i, (digest, size, mode, err) in enumerate(results):
        if mode:
            modes[mode] += 1
        if err:
            bad.append({"path": ds.relpath(i), "reason": err})
            continue
        if size:
            sizes.append(size)
        by_hash[digest].append(i)
    labels = ds.labels()
    dup_groups = []
    for digest, idx in by_hash.items():
        if len(idx) > 1:
            splits = sorted({split_of[i] for i in idx})
            labs = sorted({"|".join(labels[i]) if isinstance(labels[i], list) else str(labels[i]) for i in idx})
            dup_groups.append({"sha256": digest[:16], "paths": [ds.relpath(i) for i in idx],
                               "splits": splits, "cross_split": len(splits) > 1, "conflicting_labels": len(labs) > 1})
    dup_groups.sort(key=lambda g: (-g["cross_split"], -len(g["paths"])))
    w = np.array([s[0] for s in sizes]) if sizes else np.zeros(0)
    h = np.array([s[1] for s in sizes]) if sizes else np.zeros(0)

    def stats(a):
        return {"min": int(a.min()), "median": int(np.median(a)), "max": int(a.max())} if len(a) else None

    per_split = {}
    if ds.splits:
        for name, idx in ds.splits.items():
            per_split[name] = ds.subset(idx).class_counts()
    return {
        "dataset": ds.name,
        "root": ds.root,
        "task": ds.task,
        "images": n,
        "classes": ds.class_counts(),
        "per_split": per_split or None,
        "unlabelled": int((~ds.labelled_mask).sum()) if ds.targets is not None else n,
        "imbalance_ratio": ds.imbalance_ratio(),
        "width": stats(w),
        "height": stats(h),
        "modes": dict(modes.most_common()),
        "bad_files": bad,
        "duplicates": dup_groups,
        "duplicate_images": sum(len(g["paths"]) - 1 for g in dup_groups),
        "cross_split_duplicates": sum(1 for g in dup_groups if g["cross_split"]),
    }
