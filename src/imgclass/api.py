"""The public Python API. The CLI calls these functions and nothing else does more work than them."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .data import ImageDataset, from_paths, load_dataset
from .data.decode import DEFAULT_MAX_PIXELS, ImageSource
from .errors import ConfigError, DataError
from .evaluation import Evaluation
from .evaluation import evaluate as _evaluate
from .models import load_model
from .training import RunDir, fit_model
from .transforms import Preprocess

__all__ = ["compare", "evaluate", "load_dataset", "load_model", "predict", "predict_proba", "prepare_split",
           "train"]


def _as_preprocess(pre: Preprocess | dict | None) -> Preprocess | None:
    if pre is None or isinstance(pre, Preprocess):
        return pre
    return Preprocess.from_dict(pre)


def _as_dataset(data: ImageDataset | str | os.PathLike, task: str | None = None, **kw) -> ImageDataset:
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


def train(data: ImageDataset | str | os.PathLike, method: str = "hog+svm", val: ImageDataset | None = None, *,
          val_split: float = 0.2, seed: int = 0, out: str | os.PathLike | None = None, task: str | None = None,
          split_file: str | None = None, n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
          preprocess: Preprocess | dict | None = None, log: Callable[[str], Any] = lambda m: None):
    """Train ``method`` on ``data``. With ``out`` the whole run directory is written.

    ``data`` is a dataset or a path. When ``val`` is not given, a seeded stratified split of ``data``
    (or its pre-split folders, or ``split_file``) provides it. Returns the fitted model; its
    ``run_dir`` attribute points at the run folder when ``out`` was given. ``preprocess`` (a
    ``Preprocess`` or its dict form) overrides the method's default pre-processing.
    """
    from .models import parse_spec

    parse_spec(method)  # a bad --method fails before anything is written
    ds = _as_dataset(data, task)
    preprocess = _as_preprocess(preprocess)
    if val is None:
        idx, train_ds, val_ds = prepare_split(ds, val_split, seed, split_file)
    else:
        idx, train_ds, val_ds = None, ds, val
    run = None
    if out is not None:
        run = RunDir.create(out)
        run.write_config({"data": str(data) if not isinstance(data, ImageDataset) else data.name, "method": method,
                          "task": ds.task, "val_split": val_split, "seed": seed, "split_file": split_file,
                          "max_pixels": max_pixels, "n_jobs": n_jobs,
                          "preprocess": preprocess.to_dict() if preprocess else None, "platform": platform.platform()})
        if idx is not None:
            ds.save_split(run.split_file, idx, seed=seed, val=val_split, test=0.0)
        run.log(f"train {method} on {len(train_ds)} images, validate on {len(val_ds)}")
    model, P = fit_model(train_ds, method, val=val_ds if len(val_ds) else None, seed=seed, n_jobs=n_jobs,
                         max_pixels=max_pixels, preprocess=preprocess, log=log)
    model.run_dir = run.path if run else None
    if run is not None:
        ev = None
        if P is not None and not np.isnan(P).all():
            from .evaluation import evaluate_probabilities

            ev = evaluate_probabilities(model.task_, model.classes_, val_ds.targets, P,
                                        items=[val_ds.relpath(i) for i in range(len(val_ds))],
                                        skipped=model.meta_.get("train_skipped", []) + model.meta_.get("val_skipped", []),
                                        title=f"{method} on {ds.name} (validation)")
            ev.write(run.path)
            run.log_metrics({"split": "val", **ev.headline, "n": ev.metrics["n"], "skipped": len(ev.skipped)})
        run.log_metrics({"split": "train", "n": len(train_ds), "skipped": len(model.meta_.get("train_skipped", [])),
                         **{k: round(v, 3) for k, v in model.timings_.items()}})
        model.save(run.model_dir, metrics=model.meta_.get("metrics", {}), data_fingerprint=ds.fingerprint())
        run.log(f"saved bundle to {run.model_dir}")
    return model


def resolve_model(model, max_pixels: int | None = None, n_jobs: int | None = None):
    """A model object, or the bundle at a path loaded; optionally set its image limit and workers."""
    model = load_model(model) if isinstance(model, (str, os.PathLike)) else model
    if max_pixels is not None:
        model.max_pixels = max_pixels
    if n_jobs is not None:
        model.n_jobs = n_jobs
    return model


def predict_proba(model, images: Sequence[ImageSource] | ImageDataset, max_pixels: int | None = None) -> np.ndarray:
    """Class probabilities, one row per image (NaN rows for unreadable images)."""
    return resolve_model(model, max_pixels).predict_proba(images)


def predict(model, images: Sequence[ImageSource] | ImageDataset, top_k: int = 1, max_pixels: int | None = None):
    """Top-k ``(label, probability)`` lists, best first; ``None`` for unreadable images."""
    return resolve_model(model, max_pixels).predict(images, top_k=top_k)


def evaluate(model, data: ImageDataset | str | os.PathLike, out: str | os.PathLike | None = None,
             task: str | None = None, max_pixels: int | None = None, n_jobs: int | None = None) -> Evaluation:
    """Evaluate a model (object or bundle path) on labelled data; with ``out`` write the report files."""
    model = resolve_model(model, max_pixels, n_jobs)
    ds = _as_dataset(data, task)
    ev = _evaluate(model, ds)
    if out is not None:
        ev.write(out)
    return ev


def compare(data: ImageDataset | str | os.PathLike, methods: Sequence[str], *, val_split: float = 0.2,
            seed: int = 0, task: str | None = None, split_file: str | None = None, n_jobs: int | None = None,
            out: str | os.PathLike | None = None, preprocess: Preprocess | dict | None = None,
            log: Callable[[str], Any] = lambda m: None) -> list[dict[str, Any]]:
    """Train and score several methods on the same split; returns leaderboard rows, best first."""
    from .evaluation import compare as _compare

    if not methods:
        raise ConfigError("--methods is empty; e.g. --methods hog+svm,lbp+rf,pixels+knn")
    ds = _as_dataset(data, task)
    if not ds.is_labelled:
        raise DataError(f"{ds.name}: has no labels; compare needs labelled data")
    idx, train_ds, val_ds = prepare_split(ds, val_split, seed, split_file)
    save_dir = None
    if out is not None:
        run = RunDir.create(out)
        ds.save_split(run.split_file, idx, seed=seed, val=val_split, test=0.0)
        save_dir = run.path / "models"
    rows = _compare(train_ds, val_ds, methods, seed=seed, n_jobs=n_jobs, save_dir=save_dir,
                    preprocess=_as_preprocess(preprocess), log=log)
    if out is not None:
        from ._util import atomic_write_json

        atomic_write_json(run.path / "leaderboard.json", rows)
    return rows


def images_dataset(paths: Sequence[str | os.PathLike]) -> ImageDataset:
    """Unlabelled dataset of image files and folders (for ``predict``)."""
    return from_paths(paths)
