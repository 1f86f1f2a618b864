"""Datasets in and out: loading, splitting, checking and packing them, the method list, JSON."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..data import ImageDataset, from_paths, load_dataset
from ..data.decode import DEFAULT_MAX_PIXELS
from ..transforms import Preprocess


def as_preprocess(pre: Preprocess | dict | None) -> Preprocess | None:
    """``pre`` as a ``Preprocess`` (from its dict form), or None."""
    if pre is None or isinstance(pre, Preprocess):
        return pre
    return Preprocess.from_dict(pre)


def as_dataset(data: ImageDataset | str | os.PathLike, task: str | None = None, **kw) -> ImageDataset:
    """``data`` as a dataset: a dataset (with ``task`` applied) or a path read with ``load_dataset``."""
    if isinstance(data, ImageDataset):
        return data.with_task(task) if task else data
    return load_dataset(data, task=task, **kw)


def prepare_split(ds: ImageDataset, val_split: float = 0.2, seed: int = 0, split_file: str | None = None,
                  test_split: float = 0.0) -> tuple[dict[str, np.ndarray], ImageDataset, ImageDataset]:
    """Choose train/val indices: from ``split_file`` if given, else pre-split folders, else a seeded split."""
    idx = ds.load_split(split_file) if split_file else ds.plan_split(val=val_split, test=test_split, seed=seed)
    if "val" not in idx or not len(idx["val"]):
        idx["val"] = np.zeros(0, dtype=np.int64)
    return idx, ds.subset(idx["train"], f"{ds.name}:train"), ds.subset(idx["val"], f"{ds.name}:val")


def images_dataset(paths: Sequence[str | os.PathLike]) -> ImageDataset:
    """Unlabelled dataset of image files and folders (for ``predict``)."""
    return from_paths(paths)


def dumps(obj: Any) -> str:
    """``obj`` as indented JSON; numpy values and paths become plain JSON values."""
    from .._util import dumps as _dumps

    return _dumps(obj)


def methods() -> list[tuple[str, str]]:
    """Every method spec with a one-line description (``imgclass methods``)."""
    from ..models import list_methods

    return list_methods()


def split_methods(text: str) -> list[str]:
    """A comma-separated list of method specs split into specs (commas inside a spec's features stay)."""
    from ..models import split_methods as _split

    return _split(text)


def check_data(data: ImageDataset | str | os.PathLike, *, task: str | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, n_jobs: int | None = None) -> dict[str, Any]:
    """Inspect every image of ``data``: classes, sizes and modes, unreadable files, duplicates, imbalance."""
    from ..data.check import check_dataset

    return check_dataset(as_dataset(data, task), max_pixels=max_pixels, n_jobs=n_jobs)


def pack(data: ImageDataset | str | os.PathLike, out: str | os.PathLike, *, shard_size: str | int = "256MB",
         split_file: str | os.PathLike | None = None, val_split: float | None = None, test_split: float = 0.0,
         seed: int = 0, shuffle: bool = True, overwrite: bool = False, task: str | None = None,
         taxonomy: str | os.PathLike | None = None, group_by: str | None = None,
         log: Callable[[str], Any] = lambda m: None) -> dict[str, Any]:
    """Pack ``data`` into WebDataset-style tar shards plus ``index.json`` under ``out``; returns a summary."""
    from ..data.shards import pack_shards

    ds = data if isinstance(data, ImageDataset) else load_dataset(data, task=task, taxonomy=taxonomy,
                                                                   group_by=group_by)
    return pack_shards(ds, out, shard_size, split_file=split_file, val_split=val_split, test_split=test_split,
                       seed=seed, shuffle=shuffle, overwrite=overwrite, log=log)
