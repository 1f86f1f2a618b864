"""What is compressed and on which images: the model (a bundle path or object), its class order,
and the train/validation split (the run's own split when the data is the training data)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ConfigError, DataError


def load_model_arg(model) -> tuple[Any, Path | None]:
    """A model object (kept) or the bundle at a path loaded; returns ``(model, bundle folder or None)``."""
    if isinstance(model, (str, os.PathLike)):
        from ...models import load_model

        folder = Path(model)
        return load_model(folder), (folder if folder.is_dir() else folder.parent)
    bundle = (model.meta_ or {}).get("bundle") if hasattr(model, "meta_") else None
    return model, Path(bundle) if bundle else None


def method_name(model) -> str:
    """The model's method spec, or its type name, for tables and logs."""
    return str(getattr(model, "method", None) or type(model).__name__)


def split_data(data, task: str | None, bundle: Path | None, fingerprint: str | None, val_split: float, seed: int,
               split_file: str | os.PathLike | None):
    """``(dataset, indices, train, val, where the split came from)``. The run's own ``split.json`` next
    to the bundle is reused when ``data`` is the data the model was trained on (same fingerprint), so
    the validation images are ones the model never trained on; else a seeded split (the same one
    ``imgclass train`` makes with the same ``val_split`` and ``seed``)."""
    from ...data import ImageDataset, load_dataset

    ds = data if isinstance(data, ImageDataset) else load_dataset(data, task=task)
    if task and isinstance(data, ImageDataset):
        ds = ds.with_task(task)
    if not ds.is_labelled:
        raise DataError(f"{ds.name}: no labels; DATA must be labelled (a folder per class, a CSV or JSONL)")
    if not 0 < val_split < 1 and split_file is None:
        raise ConfigError(f"--val-split {val_split}: give a fraction in (0, 1), e.g. 0.2")
    source = "seeded"
    if split_file is None and bundle is not None and (bundle.parent / "split.json").exists() \
            and fingerprint is not None and fingerprint == ds.fingerprint():
        split_file, source = bundle.parent / "split.json", "run"
    if split_file is not None:
        idx = ds.load_split(split_file)
        source = source if source == "run" else str(split_file)
    else:
        idx = ds.plan_split(val=val_split, test=0.0, seed=seed)
    if "val" not in idx or not len(idx["val"]):
        raise DataError(f"{ds.name}: no validation images after splitting; raise --val-split or pass --split")
    train = ds.subset(idx["train"], f"{ds.name}:train")
    val = ds.subset(idx["val"], f"{ds.name}:val")
    return ds, idx, train, val, source


def targets_in(classes: list[str], ds) -> np.ndarray:
    """``ds``'s targets re-indexed to ``classes`` (a model's class order); refuses other class sets."""
    if list(ds.classes) == list(classes):
        return ds.targets
    if set(ds.classes) != set(classes):
        extra = sorted(set(ds.classes) - set(classes))[:5]
        missing = sorted(set(classes) - set(ds.classes))[:5]
        raise DataError(f"{ds.name}: its classes differ from the model's (in DATA only: {extra or '-'}; in the "
                        f"model only: {missing or '-'}); pass the data the model was trained on")
    pos = np.array([list(classes).index(c) for c in ds.classes])
    t = ds.targets
    if t.ndim == 2:
        out = np.zeros_like(t)
        out[:, pos] = t
        return out
    return np.where(t >= 0, pos[np.clip(t, 0, None)], -1)



def data_name(data) -> str:
    """The data as recorded in ``config.yaml`` and ``compress.json``: an absolute path or the dataset's name."""
    return os.path.abspath(data) if isinstance(data, (str, os.PathLike)) else getattr(data, "name", "data")
