"""Scoring models on labelled data: ``evaluate``, ``compare``, ``cv`` and ``robustness``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from ..data import ImageDataset
from ..deploy.load import resolve_model
from ..errors import ConfigError, DataError
from ..evaluation import Evaluation
from ..evaluation import evaluate as _evaluate
from ..training import RunDir, check_task_options
from ..transforms import Preprocess
from ._data import as_dataset, as_preprocess, prepare_split


def evaluate(model, data: ImageDataset | str | os.PathLike, out: str | os.PathLike | None = None,
             task: str | None = None, max_pixels: int | None = None, n_jobs: int | None = None,
             group_by: str | None = None, tta: str | None = None) -> Evaluation:
    """Evaluate a model (object or bundle path) on labelled data; with ``out`` write the report files.
    ``group_by`` names a CSV/JSONL column whose values define slices, reported separately."""
    model = resolve_model(model, max_pixels, n_jobs)
    ds = as_dataset(data, task, group_by=group_by) if group_by else as_dataset(data, task)
    ev = _evaluate(model, ds, tta=tta)
    if out is not None:
        ev.write(out)
    return ev


def compare(data: ImageDataset | str | os.PathLike, methods: Sequence[str], *, val_split: float = 0.2,
            seed: int = 0, task: str | None = None, split_file: str | None = None, n_jobs: int | None = None,
            out: str | os.PathLike | None = None, preprocess: Preprocess | dict | None = None,
            overwrite: bool = False, log: Callable[[str], Any] = lambda m: None) -> list[dict[str, Any]]:
    """Train and score several methods on the same split; returns leaderboard rows, best first. ``out``
    must be new or empty unless ``overwrite`` (as in ``train``)."""
    from ..evaluation import compare as _compare

    if not methods:
        raise ConfigError("--methods is empty; e.g. --methods hog+svm,lbp+rf,pixels+knn")
    ds = as_dataset(data, task)
    if not ds.is_labelled:
        raise DataError(f"{ds.name}: has no labels; compare needs labelled data")
    idx, train_ds, val_ds = prepare_split(ds, val_split, seed, split_file)
    save_dir = None
    if out is not None:
        run = RunDir.create(out, overwrite=overwrite)
        ds.save_split(run.split_file, idx, seed=seed, val=val_split, test=0.0)
        save_dir = run.path / "models"
    rows = _compare(train_ds, val_ds, methods, seed=seed, n_jobs=n_jobs, save_dir=save_dir,
                    preprocess=as_preprocess(preprocess), log=log)
    if out is not None:
        from .._util import atomic_write_json

        atomic_write_json(run.path / "leaderboard.json", rows)
    return rows


def cv(data: ImageDataset | str | os.PathLike, method: str, *, folds: int = 5, repeats: int = 1, seed: int = 0,
       out: str | os.PathLike | None = None, task: str | None = None, n_jobs: int | None = None,
       preprocess: Preprocess | dict | None = None, train_config: dict | None = None, img_size: int | None = None,
       pretrained: str | None = None, hierarchy: str = "flat", balance: str | None = None,
       log: Callable[[str], Any] = lambda m: None):
    """Stratified k-fold cross-validation of ``method``; returns a ``CVResult`` (per-fold metrics,
    ``summary`` mean/std, out-of-fold probabilities). With ``out``, folds are kept and a rerun with the
    same ``out`` resumes after the last finished fold; ``oof.csv`` and ``cv.json`` are written there."""
    from ..evaluation import cross_validate

    ds = as_dataset(data, task)
    check_task_options(ds, hierarchy=hierarchy, balance=balance)
    return cross_validate(ds, method, folds=folds, repeats=repeats, seed=seed, out=out, log=log, n_jobs=n_jobs,
                          preprocess=as_preprocess(preprocess), train_config=train_config, img_size=img_size,
                          pretrained=pretrained, hierarchy=hierarchy, balance=balance)


def robustness(model, data: ImageDataset | str | os.PathLike, *, corruptions: Sequence[str] | None = None,
               severities: Sequence[int] = (1, 2, 3, 4, 5), max_images: int | None = None, seed: int = 0,
               out: str | os.PathLike | None = None, task: str | None = None, n_jobs: int | None = None):
    """Accuracy under ImageNet-C-style corruptions (``RobustnessResult``); with ``out`` writes
    ``robustness.json`` and the accuracy-vs-severity plot ``robustness.png``."""
    from ..evaluation import robustness as _robustness

    m = resolve_model(model, n_jobs=n_jobs)
    res = _robustness(m, as_dataset(data, task), corruptions=corruptions, severities=severities,
                      max_images=max_images, seed=seed)
    if out is not None:
        res.write(out, title=f"{m.method}")
    return res


def headline_metrics(task: str) -> tuple[str, ...]:
    """The metrics reported first for a task kind (accuracy first for single-label, micro-F1 for multi-label)."""
    from ..tasks import HEADLINE

    return tuple(HEADLINE.get(task, HEADLINE["default"]))
