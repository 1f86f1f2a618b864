"""``ImageDataset``: image sources, targets and the task they describe, plus seeded splits."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .._util import atomic_write_json
from ..errors import ConfigError, DataError

TASKS = ("binary", "multiclass", "multilabel", "hierarchical")
SPLIT_NAMES = ("train", "val", "test")
UNLABELLED = -1


@dataclass
class ImageDataset:
    """A list of images with optional labels.

    Attributes:
        sources: one entry per item: a file path (str) or encoded image bytes.
        targets: ``(n,)`` int class indices for binary/multiclass/hierarchical (``-1`` = unlabelled),
            ``(n, C)`` 0/1 matrix for multilabel, or ``None`` for an unlabelled set.
        classes: class names; column order of every probability matrix. For hierarchical data these
            are the leaves (``"animal/cat"``); ``taxonomy`` maps every node to its parent.
        task: one of ``TASKS``, or ``None`` when nothing is labelled.
        taxonomy: ``{node: parent or None}`` for hierarchical data.
        groups: optional group per item (for slice metrics).
        splits: predefined ``{"train"|"val"|"test": indices}`` from pre-split folders or a split column.
        root: folder that relative paths (and ``split.json``) are expressed against.
    """

    sources: list
    targets: np.ndarray | None
    classes: list[str]
    task: str | None
    taxonomy: dict[str, str | None] | None = None
    groups: list[str] | None = None
    splits: dict[str, np.ndarray] | None = None
    root: str | None = None
    name: str = "dataset"
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (source, reason) of bad files

    # ------------------------------------------------------------------ basics
    def __len__(self) -> int:
        return len(self.sources)

    def __repr__(self) -> str:
        return (f"ImageDataset(name={self.name!r}, n={len(self)}, task={self.task}, "
                f"classes={len(self.classes)}, splits={sorted(self.splits) if self.splits else None})")

    @property
    def is_labelled(self) -> bool:
        return self.targets is not None and self.task is not None

    @property
    def labelled_mask(self) -> np.ndarray:
        if self.targets is None:
            return np.zeros(len(self), dtype=bool)
        if self.targets.ndim == 2:
            return np.ones(len(self), dtype=bool)
        return self.targets != UNLABELLED

    def labels(self) -> list:
        """Human-readable labels: a class name, a list of names (multilabel) or ``None``."""
        if self.targets is None:
            return [None] * len(self)
        if self.targets.ndim == 2:
            return [[self.classes[j] for j in np.flatnonzero(row)] for row in self.targets]
        return [self.classes[t] if t != UNLABELLED else None for t in self.targets]

    def class_counts(self) -> dict[str, int]:
        if self.targets is None:
            return {}
        if self.targets.ndim == 2:
            return {c: int(n) for c, n in zip(self.classes, self.targets.sum(axis=0))}
        counts = np.bincount(self.targets[self.targets >= 0], minlength=len(self.classes))
        return {c: int(n) for c, n in zip(self.classes, counts)}

    def imbalance_ratio(self) -> float | None:
        counts = [n for n in self.class_counts().values() if n > 0]
        return max(counts) / min(counts) if counts else None

    def relpath(self, i: int) -> str:
        src = self.sources[i]
        if not isinstance(src, str):
            return f"<bytes #{i}>"
        if self.root:
            try:
                return Path(src).relative_to(self.root).as_posix()
            except ValueError:
                pass
        return src

    def subset(self, indices: Sequence[int] | np.ndarray, name: str | None = None) -> ImageDataset:
        idx = np.asarray(indices, dtype=np.int64)
        return replace(
            self,
            sources=[self.sources[i] for i in idx],
            targets=None if self.targets is None else self.targets[idx],
            groups=None if self.groups is None else [self.groups[i] for i in idx],
            splits=None,
            name=name or self.name,
            skipped=list(self.skipped),
        )

    def without(self, excluded: str | os.PathLike | Sequence[str]) -> tuple[ImageDataset, int]:
        """This dataset minus the items listed in ``excluded`` (a CSV with a ``path`` column, such as
        ``excluded.csv`` from ``imgclass curate``, or a list of paths); predefined splits are kept.
        Returns ``(dataset, number removed)``. Paths match absolutely or relative to ``root``."""
        if isinstance(excluded, (str, os.PathLike)):
            import csv

            p = Path(excluded)
            try:
                rows = list(csv.DictReader(p.read_text(encoding="utf-8").splitlines()))
            except (OSError, UnicodeDecodeError) as exc:
                raise DataError(f"{p}: cannot read the exclusion list ({exc}); give a CSV with a path column") from None
            if rows and "path" not in rows[0]:
                raise DataError(f"{p}: the exclusion list needs a 'path' column (as in imgclass curate's excluded.csv)")
            paths = [r["path"] for r in rows if r.get("path")]
        else:
            paths = [os.fspath(x) for x in excluded]
        drop = {os.path.abspath(x) for x in paths} | set(paths)
        if self.root:
            drop |= {os.path.abspath(os.path.join(self.root, x)) for x in paths}
        keep = [i for i, src in enumerate(self.sources)
                if not (isinstance(src, str) and (src in drop or os.path.abspath(src) in drop))]
        removed = len(self) - len(keep)
        out = self.subset(keep)
        if self.splits:
            pos = np.full(len(self), -1, dtype=np.int64)
            pos[np.asarray(keep, dtype=np.int64)] = np.arange(len(keep))
            out.splits = {k: pos[v][pos[v] >= 0] for k, v in self.splits.items()}
        return out, removed

    def fingerprint(self) -> str:
        """A hash of the item names and labels: tells whether two runs saw the same data."""
        h = hashlib.sha256()
        for i in range(len(self)):
            h.update(self.relpath(i).encode())
            h.update(b"\0")
        if self.targets is not None:
            h.update(np.ascontiguousarray(self.targets).tobytes())
        h.update("\0".join(self.classes).encode())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ task
    def with_task(self, task: str) -> ImageDataset:
        """Re-interpret the labels as another task (``--task``); raises ``ConfigError`` if impossible."""
        if task not in TASKS:
            raise ConfigError(f"--task {task!r} is not one of {', '.join(TASKS)}")
        if task == self.task:
            return self
        if self.targets is None:
            raise ConfigError(f"--task {task}: dataset {self.name!r} has no labels")
        if task == "multilabel":
            if self.targets.ndim == 2:
                return replace(self, task=task)
            onehot = np.zeros((len(self), len(self.classes)), dtype=np.uint8)
            lab = self.targets >= 0
            onehot[np.flatnonzero(lab), self.targets[lab]] = 1
            return replace(self, targets=onehot, task=task, taxonomy=None)
        targets = self.targets
        if targets.ndim == 2:
            per_row = targets.sum(axis=1)
            if (per_row != 1).any():
                bad = int((per_row != 1).sum())
                raise ConfigError(f"--task {task}: {bad} items of {self.name!r} do not have exactly one label")
            targets = targets.argmax(axis=1).astype(np.int64)
        if task == "binary" and len(self.classes) != 2:
            raise ConfigError(f"--task binary needs exactly 2 classes; {self.name!r} has {len(self.classes)}")
        taxonomy = self.taxonomy
        if task == "hierarchical" and not taxonomy:
            taxonomy = {c: None for c in self.classes}
        if task != "hierarchical":
            taxonomy = None
        return replace(self, targets=targets, task=task, taxonomy=taxonomy)

    # ------------------------------------------------------------------ splitting
    def _strata(self) -> np.ndarray:
        if self.targets is None:
            return np.zeros(len(self), dtype=np.int64)
        return self.targets.astype(np.int64)

    def _multilabel_split(self, val: float, test: float, seed: int) -> dict[str, np.ndarray]:
        """Iterative stratification (Sechidis et al. 2011, via ``iterstrat``): every label, and label
        pairs, keep their proportions in each part as well as possible."""
        from iterstrat.ml_stratifiers import MultilabelStratifiedShuffleSplit

        Y = self.targets.astype(np.int64)
        idx = np.arange(len(self))
        out = {}
        for name, frac in (("test", test), ("val", val)):
            share = frac / max(1e-12, len(idx) / len(self))  # fraction of what is left
            if frac <= 0 or len(idx) < 2:
                continue
            n_take = int(round(share * len(idx)))
            if n_take < 1 or n_take >= len(idx):
                continue
            sss = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=n_take, random_state=seed)
            keep, take = next(sss.split(np.zeros((len(idx), 1)), Y[idx]))
            out[name] = np.sort(idx[take])
            idx = idx[keep]
        out["train"] = np.sort(idx)
        return out

    def split_indices(self, val: float = 0.2, test: float = 0.0, seed: int = 0) -> dict[str, np.ndarray]:
        """Seeded stratified split into train/val(/test) index arrays.

        Written by hand instead of ``sklearn.model_selection.train_test_split`` because that refuses
        classes with a single image; here such a class stays in train and every other class gives
        ``round(n * fraction)`` items (at least one when it has three or more) to val and test.
        """
        if not (0.0 <= val < 1.0 and 0.0 <= test < 1.0 and val + test < 1.0):
            raise ConfigError(f"--val-split {val} / --test-split {test}: fractions must be in [0, 1) "
                              "and sum to less than 1")
        if self.targets is not None and self.targets.ndim == 2:
            return self._multilabel_split(val, test, seed)
        rng = np.random.default_rng(seed)
        strata = self._strata()
        out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for s in np.unique(strata):
            members = np.flatnonzero(strata == s)
            members = members[rng.permutation(len(members))]
            n = len(members)
            n_val = int(round(n * val))
            n_test = int(round(n * test))
            if n >= 3:
                n_val = max(n_val, 1 if val > 0 else 0)
                n_test = max(n_test, 1 if test > 0 else 0)
            while n_val + n_test >= n and (n_val or n_test):  # keep at least one for training
                if n_test >= n_val and n_test:
                    n_test -= 1
                else:
                    n_val -= 1
            out["val"].extend(members[:n_val])
            out["test"].extend(members[n_val:n_val + n_test])
            out["train"].extend(members[n_val + n_test:])
        return {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in out.items() if v or k == "train"}

    def split(self, val: float = 0.2, test: float = 0.0, seed: int = 0,
              use_predefined: bool = True) -> tuple[ImageDataset, ...]:
        """Return ``(train, val)`` or ``(train, val, test)`` subsets.

        Pre-split folders (``root/train``, ``root/val``, ``root/test``) or a ``split`` column win when
        present; a missing val split is then carved out of train with ``val`` and ``seed``.
        """
        idx = self.plan_split(val=val, test=test, seed=seed, use_predefined=use_predefined)
        parts = [self.subset(idx["train"], f"{self.name}:train"), self.subset(idx.get("val", []), f"{self.name}:val")]
        if "test" in idx and (test > 0 or (self.splits and "test" in self.splits and use_predefined)):
            parts.append(self.subset(idx["test"], f"{self.name}:test"))
        return tuple(parts)

    def plan_split(self, val: float = 0.2, test: float = 0.0, seed: int = 0,
                   use_predefined: bool = True) -> dict[str, np.ndarray]:
        if use_predefined and self.splits and "train" in self.splits:
            idx = {k: np.asarray(v, dtype=np.int64) for k, v in self.splits.items()}
            if "val" not in idx and val > 0:
                inner = self.subset(idx["train"]).split_indices(val=val, test=0.0, seed=seed)
                idx["val"] = idx["train"][inner["val"]]
                idx["train"] = idx["train"][inner["train"]]
            return idx
        return self.split_indices(val=val, test=test, seed=seed)

    def save_split(self, path: str | os.PathLike, indices: dict[str, np.ndarray], seed: int,
                   val: float, test: float) -> None:
        """Write ``split.json``: item paths (relative to the dataset root) per split."""
        doc = {
            "format": "imgclass.split/1",
            "dataset": self.name,
            "root": self.root,
            "fingerprint": self.fingerprint(),
            "seed": seed,
            "val_fraction": val,
            "test_fraction": test,
            "splits": {k: [self.relpath(int(i)) for i in v] for k, v in indices.items()},
        }
        atomic_write_json(path, doc)

    def load_split(self, path: str | os.PathLike) -> dict[str, np.ndarray]:
        """Read a ``split.json`` written by ``save_split`` and map it onto this dataset."""
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            splits = doc["splits"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: not a readable split.json ({exc}); pass a file written by "
                            "'imgclass train'") from None
        pos = {self.relpath(i): i for i in range(len(self))}
        out = {}
        for name, items in splits.items():
            missing = [p for p in items if p not in pos]
            if missing:
                raise DataError(f"{path}: {len(missing)} items of split {name!r} are not in the dataset "
                                f"(first: {missing[0]}); use the split with the data it was made for")
            out[name] = np.asarray([pos[p] for p in items], dtype=np.int64)
        return out

