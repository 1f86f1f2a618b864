"""Streaming training data: images are read and decoded batch by batch while the network trains.

The engine's default decodes every training image once into a uint8 tensor in memory. That is the
fastest way for small and medium datasets, and impossible for data that does not fit in memory (or
on local disk: tar shards behind an fsspec URL). ``StreamingImages`` stands in for that tensor in
``TrainData.x``: the labels stay in memory (they are small), the images are decoded each epoch by
DataLoader worker processes, and the engine receives batches of ``(item indices, uint8 images)``.

Two sources:

* **tar shards** (every source a ``ShardMember``, from ``imgclass data pack``): a ``ShardStream``
  reads whole shards front to back (no random access, which suits object stores) in an order shuffled
  per epoch, through a shuffle buffer, split over DDP ranks and workers; ``select`` keeps exactly the
  items of this run's train part, so the split, ``--exclude`` and unlabelled filtering stay the same
  as in memory;
* **anything else** (files, URLs of files): a map-style dataset read in the engine's own order
  (the same ``randperm`` / ``DistributedSampler`` / balanced sampler as in memory).

Every rank must take the same number of optimiser steps under DDP, or the gradient all-reduce waits
forever. A rank's part of a shard stream depends on which shards it reads, and unreadable images
drop out, so ``batches`` re-cuts the stream into exactly ``quota`` items per rank in full batches:
``len // world`` items for shards (WebDataset's ``with_epoch`` idea), the sampler's length
otherwise. A part that runs short starts over in a new order; one that runs long stops early.
This re-batching is written here because neither torch nor torchvision has it for iterable data.

The engine imports this module only when it trains (torch is loaded by then).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..data.shards import ShardMember, ShardSet
from ..errors import DataError
from ..features import load_arrays
from .shard_stream import ShardStream

#: items per DataLoader batch from a worker (re-cut into training batches by ``batches``)
_CHUNK = 32


def _collate(items):
    """Worker output: ``(indices of decoded items, uint8 (k, 3, H, W), [(index, reason), ...])``."""
    good = [(i, a) for i, a, _ in items if a is not None]
    errors = [(i, r) for i, a, r in items if a is None]
    idx = torch.tensor([i for i, _ in good], dtype=torch.long)
    x = torch.from_numpy(np.stack([a for _, a in good])) if good else None
    return idx, x, errors


def _decode(data, preprocess, max_pixels) -> tuple[np.ndarray | None, str | None]:
    arrays, ok, errors = load_arrays([data], preprocess, max_pixels)
    if ok[0]:
        return np.ascontiguousarray(arrays[0].transpose(2, 0, 1)), None
    return None, errors[0][1] if errors else "unreadable image"


def _worker_init(_):
    torch.set_num_threads(1)  # decoding is one image at a time; the training process owns the cores


class _DecodedStream(IterableDataset):
    """Iterated inside each worker: the worker's part of the shard stream, decoded."""

    def __init__(self, stream, preprocess, max_pixels):
        self.stream, self.preprocess, self.max_pixels = stream, preprocess, max_pixels

    def __iter__(self):
        for _, data, index in self.stream:
            arr, reason = _decode(data, self.preprocess, self.max_pixels)
            yield index, arr, reason


class _DecodedFiles(Dataset):
    def __init__(self, sources, preprocess, max_pixels):
        self.sources, self.preprocess, self.max_pixels = sources, preprocess, max_pixels

    def __len__(self):
        return len(self.sources)

    def __getitem__(self, i):
        arr, reason = _decode(self.sources[i], self.preprocess, self.max_pixels)
        return int(i), arr, reason


class StreamingImages:
    """Training images decoded while training (see the module docstring). ``len()`` is the number of
    items; ``errors`` lists ``(source, reason)`` of the unreadable ones met so far (this process)."""

    def __init__(self, sources: Sequence, preprocess, *, max_pixels: int | None = None, workers: int = 1,
                 shuffle_buffer: int = 1000, seed: int = 0):
        self.sources, self.preprocess, self.max_pixels = list(sources), preprocess, max_pixels
        self.workers, self.shuffle_buffer, self.seed = max(0, int(workers)), int(shuffle_buffer), int(seed)
        #: shard streams are read in their own order; other sources follow the engine's sampler
        self.sequential = bool(self.sources) and all(isinstance(s, ShardMember) for s in self.sources)
        self._errors: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def errors(self) -> list[tuple[str, str]]:
        return [(str(self.sources[i]), r) for i, r in sorted(self._errors.items())]

    def quota(self, order_len: int | None, world: int) -> int:
        """Items each rank trains on per epoch."""
        return len(self) // world if self.sequential or order_len is None else order_len

    # -- one pass over this rank's part, as worker chunks
    def _loader(self, epoch: int, attempt: int, order, rank: int, world: int):
        kw: dict[str, Any] = {"num_workers": self.workers, "collate_fn": _collate, "batch_size": _CHUNK}
        if self.workers:
            kw.update(worker_init_fn=_worker_init, prefetch_factor=4)
        if self.sequential:
            select = {(s.url, s.key): i for i, s in enumerate(self.sources)}
            urls = list(dict.fromkeys(s.url for s in self.sources))
            stream = ShardStream(ShardSet(urls[0].rsplit("/", 1)[0], urls, None), select=select,
                                 shuffle_buffer=self.shuffle_buffer, seed=self.seed + 7919 * attempt,
                                 rank=rank, world_size=world)
            stream.set_epoch(epoch)
            return DataLoader(_DecodedStream(stream, self.preprocess, self.max_pixels), **kw)
        if attempt:  # a rerun to fill a short part: the same items in another order
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch * 101 + attempt)
            order = order[torch.randperm(len(order), generator=g)]
        return DataLoader(_DecodedFiles(self.sources, self.preprocess, self.max_pixels), sampler=order.tolist(), **kw)

    def batches(self, epoch: int, order, batch_size: int, rank: int = 0, world: int = 1) -> Iterator[tuple[Any, Any]]:
        """``(indices, uint8 images)`` batches of exactly ``batch_size`` (the last one: what is left of
        the quota), ``ceil(quota / batch_size)`` of them on every rank. ``order`` is the engine's item
        order for map-style sources (ignored for shards)."""
        quota = self.quota(None if order is None else len(order), world)
        done, attempt = 0, 0
        idx_parts: list = []
        x_parts: list = []
        have = 0
        while done < quota:
            got = False
            for idx, x, errors in self._loader(epoch, attempt, order, rank, world):
                self._errors.update(errors)
                if x is None:
                    continue
                got = True
                idx_parts.append(idx)
                x_parts.append(x)
                have += len(idx)
                while done < quota and have >= min(batch_size, quota - done):
                    need = min(batch_size, quota - done)
                    ib, xb = torch.cat(idx_parts), torch.cat(x_parts)
                    idx_parts, x_parts, have = [ib[need:]], [xb[need:]], have - need
                    done += need
                    yield ib[:need], xb[:need]
                if done >= quota:
                    break
            if not got:
                raise DataError(f"no readable training images in part {rank + 1} of {world} of the stream "
                                f"({len(self._errors)} unreadable); check the data with 'imgclass check'")
            attempt += 1

    def steps(self, order_len: int | None, batch_size: int, world: int) -> int:
        return max(1, math.ceil(self.quota(order_len, world) / batch_size))


__all__ = ["StreamingImages"]
