"""Checks and building blocks shared by ``suggest`` and ``simulate``: the method, the labelled data,
the feature pipeline and a one-thread BLAS limit."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ...data import ImageDataset, load_dataset
from ...errors import ConfigError, DataError


def check_method(method: str) -> None:
    """Refuse a method that is not ``FEATURES+CLASSIFIER``: every round refits only the classifier."""
    from ...models import parse_spec

    if parse_spec(method).kind != "features":
        raise ConfigError(f"--method {method}: active learning refits the classifier on fixed features; use a "
                          "FEATURES+CLASSIFIER method such as lite0+logreg or hog+logreg")


def feature_pipeline(method: str, seed: int, n_jobs: int | None, max_pixels: int | None):
    """The unfitted feature pipeline of ``method``."""
    from ...models import build_model

    check_method(method)
    return build_model(method, seed=seed, n_jobs=n_jobs, max_pixels=max_pixels)


def as_dataset(data: ImageDataset | str | os.PathLike, task: str | None, option: str = "DATA") -> ImageDataset:
    """``data`` as a labelled single-label ``ImageDataset``, or a one-line error naming ``option``."""
    ds = data if isinstance(data, ImageDataset) else load_dataset(data, task=task)
    if task and isinstance(data, ImageDataset):
        ds = ds.with_task(task)
    if not ds.is_labelled or not ds.labelled_mask.any():
        raise DataError(f"{option} {ds.name}: has no labels; active learning starts from labelled images "
                        "(a folder per class, or a CSV/JSONL with a label column)")
    if ds.task == "multilabel":
        raise ConfigError(f"{option} {ds.name}: multi-label data is not supported by active learning yet; "
                          "use single-label data (one class per image)")
    return ds


def check_two_classes(y: np.ndarray, classes: list[str], where: str) -> None:
    """Refuse labels of fewer than two classes: nothing to train on."""
    present = np.unique(y[y >= 0])
    if len(present) < 2:
        have = ", ".join(classes[i] for i in present) or "none"
        raise DataError(f"{where}: too few labels to train: labelled images of at least two classes are needed "
                        f"(found: {have}); label more images")


def one_thread():
    """Limit BLAS/OpenMP to one thread: the simulation's fits are small (hundreds of rows), so extra
    threads mostly wait for each other. Entered per round, so that libraries loaded by the first fit
    (scipy's own OpenBLAS) are limited too."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


def source_name(src: Any, i: int) -> str:
    """A printable name of an image source (a path, or in-memory bytes by position)."""
    return str(src) if isinstance(src, (str, os.PathLike)) else f"<bytes #{i}>"
