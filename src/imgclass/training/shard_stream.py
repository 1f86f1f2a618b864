"""``ShardStream``: tar shards streamed for training, a torch ``IterableDataset``.

The data layer reads shards (``imgclass.data.shards``); this is the torch side next to the other training
streams (``training.streaming``): shard order per epoch, parts over DDP ranks and DataLoader workers, the
shuffle buffer and optional decoding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch.distributed as dist
from torch.utils.data import IterableDataset, get_worker_info

from ..data.dataset import SPLIT_NAMES, UNLABELLED
from ..data.decode import DEFAULT_MAX_PIXELS, load_image
from ..data.shards import ShardSet, find_shards, iter_samples
from ..data.shards.io import image_ext
from ..errors import ConfigError, ImageLoadError


class ShardStream(IterableDataset):
    """Stream tar shards for training: a torch ``IterableDataset``.

    Reads whole shards front to back (no random access: good for object stores), in an order
    shuffled with ``seed + epoch`` (``set_epoch``), through a shuffle buffer of ``shuffle_buffer``
    items. Parts: every DDP rank (``torch.distributed`` when initialised, or ``rank``/``world_size``)
    times every DataLoader worker gets a disjoint part, together covering the data once: whole shards
    when there are at least as many shards as parts (``split_by="shard"``; parts may then differ in
    size by up to a shard), else every part reads all shards and keeps every n-th item
    (``split_by="item"``; equal parts, more reading). ``split`` keeps one of train/val/test.
    ``select`` (``{(shard URL, key): target}``) keeps only those items, with those targets, and skips
    shards holding none of them (how training streams the train part of a split it made itself).

    Yields ``(key, encoded bytes, target)``, or with ``preprocess`` (a ``Preprocess``)
    ``(key, uint8 array 3xHxW, target)``; undecodable images are skipped and listed in ``skipped``
    (per process). ``target`` is the class index (``-1`` unlabelled), a 0/1 vector (multilabel) or,
    without known classes, the label text. The same seed and epoch give the same order.
    """

    def __init__(self, source: str | os.PathLike | ShardSet, *, split: str | None = None,
                 shuffle_buffer: int = 0, shuffle_shards: bool = True, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, split_by: str = "auto",
                 preprocess: Any = None, max_pixels: int | None = None, classes: Sequence[str] | None = None,
                 select: Mapping[tuple[str, str], Any] | None = None):
        self.shardset = source if isinstance(source, ShardSet) else find_shards(source)
        self.select = select
        self._selected_shards = {u for u, _ in select} if select is not None else None
        index = self.shardset.index
        self.classes = list(classes) if classes is not None else (list(index["classes"]) if index else None)
        self._pos = {c: k for k, c in enumerate(self.classes or [])}
        self.multilabel = bool(index and index.get("task") == "multilabel")
        if split is not None and split not in SPLIT_NAMES:
            raise ConfigError(f"split {split!r}: choose one of {', '.join(SPLIT_NAMES)}")
        if split_by not in ("auto", "shard", "item"):
            raise ConfigError(f"split_by {split_by!r}: choose auto, shard or item")
        if (rank is None) != (world_size is None) or (world_size is not None and not 0 <= rank < world_size):
            raise ConfigError(f"rank {rank} / world_size {world_size}: give both, with 0 <= rank < world_size")
        self.split, self.shuffle_buffer, self.shuffle_shards = split, int(shuffle_buffer), shuffle_shards
        self.seed, self.epoch, self.rank, self.world_size, self.split_by = int(seed), 0, rank, world_size, split_by
        if preprocess is not None and not hasattr(preprocess, "to_array"):
            raise ConfigError("preprocess: give an imgclass.transforms.Preprocess, e.g. Preprocess(size=32)")
        self.preprocess = preprocess
        self.max_pixels = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
        self.skipped: list[tuple[str, str]] = []

    def set_epoch(self, epoch: int) -> None:
        """Shard order and shuffle buffer use ``seed + epoch``: call it before each epoch's iteration."""
        self.epoch = int(epoch)

    def _parts(self) -> tuple[int, int]:
        """``(this part, number of parts)`` over DDP ranks x DataLoader workers."""
        rank, world = self.rank, self.world_size
        if rank is None and dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        rank, world = (0, 1) if rank is None else (rank, world)
        return rank * nw + wid, world * nw

    def shard_order(self) -> list[str]:
        """This epoch's shard order (all parts), leaving out shards holding nothing of ``split``."""
        shards = list(self.shardset.shards)
        if self.split is not None and self.shardset.index is not None:
            shards = [u for u in shards if (self.shardset.entry(u) or {}).get("splits", {self.split: 1}).get(self.split)]
        if self._selected_shards is not None:
            shards = [u for u in shards if u in self._selected_shards]
        if self.shuffle_shards:
            perm = np.random.default_rng(self.seed + self.epoch).permutation(len(shards))
            shards = [shards[k] for k in perm]
        return shards

    def _target(self, meta: dict):
        lab = meta.get("label")
        if self.classes is None:
            return lab
        if self.multilabel or isinstance(lab, list):
            y = np.zeros(len(self.classes), dtype=np.uint8)
            y[[self._pos[c] for c in (lab or [])]] = 1
            return y
        return UNLABELLED if lab is None else self._pos[lab]

    def _items(self, shards: list[str], part: int, parts: int) -> Iterator[tuple[str, bytes, Any]]:
        position = 0
        for url, key, sample in iter_samples(shards):
            if self.select is not None:
                if (url, key) not in self.select:
                    continue
                meta = {}
            else:
                meta = json.loads(sample["json"]) if "json" in sample else {}
            if "label" not in meta and "cls" in sample:
                meta["label"] = sample["cls"].decode().strip()
            if self.split is not None and self.select is None and (meta.get("split") or "") != self.split:
                continue
            ext = image_ext(sample)
            if ext is None:
                continue
            mine = position % parts == part
            position += 1
            if mine:
                yield key, sample[ext], self.select[url, key] if self.select is not None else self._target(meta)

    def __iter__(self) -> Iterator[tuple[str, Any, Any]]:
        part, parts = self._parts()
        shards = self.shard_order()
        by_shard = self.split_by == "shard" or (self.split_by == "auto" and len(shards) >= parts)
        items = self._items(shards[part::parts], 0, 1) if by_shard else self._items(shards, part, parts)
        if self.shuffle_buffer > 1:
            items = _buffer_shuffle(items, self.shuffle_buffer,
                                    np.random.default_rng([self.seed + self.epoch, part]))
        for key, data, target in items:
            if self.preprocess is None:
                yield key, data, target
                continue
            size = self.preprocess.size
            try:
                img = load_image(data, max_pixels=self.max_pixels,
                                 draft_size=max(size) if isinstance(size, tuple) else size)
            except ImageLoadError as exc:
                self.skipped.append((key, exc.reason))
                continue
            yield key, np.ascontiguousarray(self.preprocess.to_array(img).transpose(2, 0, 1)), target


def _buffer_shuffle(items: Iterator, size: int, rng: np.random.Generator) -> Iterator:
    """The WebDataset shuffle: keep ``size`` items, emit a random one as each new item arrives."""
    buf: list = []
    for it in items:
        if len(buf) < size:
            buf.append(it)
            continue
        j = int(rng.integers(len(buf)))
        buf[j], it = it, buf[j]
        yield it
    for j in rng.permutation(len(buf)):
        yield buf[j]

