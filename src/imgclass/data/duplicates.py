"""The ``--duplicates`` policy: what training does with an image listed more than once or in two splits.

An item's identity is its normalised absolute path (a tar-shard member: its name in the shard), so
``a.png`` and ``./imgs/../a.png`` are one file; copies with equal bytes under other names are not
duplicates here (``imgclass data check`` and ``curate`` report those).

``drop`` (default, with a warning): repeated entries of a file with the same label collapse into the
first one, preferring a ``train`` entry over ``val``/``test`` when the split column or pre-split folders
put it in several splits (so the file stays in train only); every entry of a file listed with
*conflicting* labels is left out, since no label can be trusted. After splitting, a file in both train
and val (an explicit ``val`` set, or a ``--split`` file) is taken out of val.
``keep``: use every entry as listed, and warn. ``error``: refuse to train, listing the files.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from .dataset import ImageDataset

POLICIES = ("drop", "keep", "error")
_SPLIT_RANK = {"train": 0, "val": 1, "test": 2}
_EXAMPLES = 3


def check_policy(policy: str) -> None:
    """Refuse an unknown ``--duplicates`` value before anything is read or written."""
    if policy not in POLICIES:
        raise ConfigError(f"--duplicates {policy!r}: choose drop, keep or error")


def item_key(src: Any) -> str | None:
    """The identity of one source (``None`` for in-memory images, which are never duplicates)."""
    if not isinstance(src, (str, os.PathLike)):
        return None
    s = os.fspath(src)
    if type(src) is not str and isinstance(src, str):  # a ShardMember: already a stable name
        return s
    return os.path.normcase(os.path.abspath(s))


def _label_of(ds: ImageDataset, i: int) -> Any:
    if ds.targets is None:
        return None
    t = ds.targets[i]
    return tuple(int(x) for x in t) if np.ndim(t) else int(t)


def _show(ds: ImageDataset, i: int) -> str:
    lab = ds.labels()[i] if ds.targets is not None else None
    lab = "|".join(lab) if isinstance(lab, list) else ("unlabelled" if lab is None else lab)
    return lab


def _keep(ds: ImageDataset, keep: list[int]) -> ImageDataset:
    """``ds`` restricted to ``keep`` (sorted), with its predefined splits renumbered."""
    out = ds.subset(keep)
    if ds.splits:
        pos = np.full(len(ds), -1, dtype=np.int64)
        pos[np.asarray(keep, dtype=np.int64)] = np.arange(len(keep))
        out.splits = {k: pos[np.asarray(v, dtype=np.int64)][pos[np.asarray(v, dtype=np.int64)] >= 0]
                      for k, v in ds.splits.items()}
    return out


def resolve_duplicates(ds: ImageDataset, policy: str, log: Callable[[str], Any]) -> ImageDataset:
    """Apply ``policy`` to files listed more than once in ``ds`` (before splitting); report what was found."""
    check_policy(policy)
    groups: dict[str, list[int]] = defaultdict(list)
    for i, src in enumerate(ds.sources):
        key = item_key(src)
        if key is not None:
            groups[key].append(i)
    multi = [idx for idx in groups.values() if len(idx) > 1]
    if not multi:
        return ds
    split_of = [""] * len(ds)
    for name, idx in (ds.splits or {}).items():
        for i in idx:
            split_of[int(i)] = name
    conflicts = [idx for idx in multi if len({_label_of(ds, i) for i in idx}) > 1]
    repeats = [idx for idx in multi if len({_label_of(ds, i) for i in idx}) == 1]
    cross = [idx for idx in repeats if len({split_of[i] for i in idx}) > 1]
    where = ds.name
    parts = []
    if conflicts:
        eg = "; ".join(f"{ds.relpath(idx[0])}: {', '.join(sorted({_show(ds, i) for i in idx}))}"
                       for idx in conflicts[:_EXAMPLES])
        parts.append(f"{len(conflicts)} file{'s are' if len(conflicts) != 1 else ' is'} listed with conflicting "
                     f"labels (e.g. {eg})")
    if cross:
        eg = "; ".join(f"{ds.relpath(idx[0])}: {', '.join(sorted({split_of[i] for i in idx}))}"
                       for idx in cross[:_EXAMPLES])
        parts.append(f"{len(cross)} file{'s are' if len(cross) != 1 else ' is'} in more than one split (e.g. {eg})")
    n_rep = len(repeats) - len(cross)
    if n_rep:
        parts.append(f"{n_rep} file{'s are' if n_rep != 1 else ' is'} listed more than once with the same label")
    found = "; ".join(parts)
    if policy == "error":
        raise DataError(f"{where}: {found}; fix the list, or pass --duplicates drop (or keep)")
    if policy == "keep":
        log(f"warning: {where}: {found}; --duplicates keep uses every entry (validation scores may be optimistic)")
        return ds
    drop: set[int] = set()
    for idx in conflicts:
        drop.update(idx)
    for idx in repeats:
        first = min(idx, key=lambda i: (_SPLIT_RANK.get(split_of[i], 0), i))
        drop.update(i for i in idx if i != first)
    log(f"warning: {where}: {found}; --duplicates drop left out {len(drop)} entr{'ies' if len(drop) != 1 else 'y'} "
        "(conflicting files entirely, repeats but one, train copy kept)")
    return _keep(ds, [i for i in range(len(ds)) if i not in drop])


def overlap(train_sources, val_sources) -> list[int]:
    """Positions in ``val_sources`` of files that are also in ``train_sources``."""
    keys = {item_key(s) for s in train_sources} - {None}
    return [j for j, s in enumerate(val_sources) if item_key(s) in keys]


def resolve_overlap(train: ImageDataset, val: ImageDataset, policy: str,
                    log: Callable[[str], Any]) -> ImageDataset:
    """Apply ``policy`` to files in both ``train`` and ``val`` (after splitting); returns the val set to use."""
    both = overlap(train.sources, val.sources)
    if not both:
        return val
    eg = ", ".join(val.relpath(j) for j in both[:_EXAMPLES])
    found = f"{len(both)} validation image{'s are' if len(both) != 1 else ' is'} also in the training split (e.g. {eg})"
    if policy == "error":
        raise DataError(f"{val.name}: {found}; fix the split, or pass --duplicates drop (or keep)")
    if policy == "keep":
        log(f"warning: {val.name}: {found}; --duplicates keep validates on them anyway (optimistic scores)")
        return val
    log(f"warning: {val.name}: {found}; --duplicates drop leaves them out of validation")
    gone = set(both)
    return val.subset([j for j in range(len(val)) if j not in gone], val.name)


__all__ = ["POLICIES", "check_policy", "item_key", "overlap", "resolve_duplicates", "resolve_overlap"]
