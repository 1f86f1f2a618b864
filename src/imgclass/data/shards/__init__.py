"""WebDataset-style tar shards: pack a dataset into them and read them back lazily.

Layout written by ``pack_shards``::

    DIR/shard-000000.tar   members <key>.<ext> (the original encoded image bytes, untouched),
                           <key>.json ({"key", "path", "split", "label"[, "group"]}),
                           <key>.cls (class index, single-label data only)
    DIR/shard-000001.tar   ...
    DIR/index.json         format, task, classes, taxonomy, counts, and per shard its file, count,
                           bytes and every item with the byte offset and size of each member

Keys are the items' positions in the packed dataset, zero-padded, so reading restores the original
order even though items are shuffled across shards (within each split) when packing.

``read_shards`` (behind ``load_dataset``) gives an ``ImageDataset`` whose sources are ``ShardMember``
strings: lazy references (shard URL, byte offset, size) that ``load_image`` reads one byte range at a
time, so every command that takes a dataset takes shards. Training streams whole shards through
``imgclass.training.shard_stream.ShardStream`` (a torch ``IterableDataset``).

Shards are plain tar files, written and read with the stdlib ``tarfile`` and opened through ``fsspec``
(local paths, ``file://``, ``memory://``, ``s3://``, ``https://``, ...). Not the ``webdataset`` package:
what is needed here is a few lines of ``tarfile``, and it does not record member offsets, which the
random access above needs.

Modules: ``io`` (locations, ranged reads, ``ShardMember``), ``write`` (``pack_shards``), ``read``
(``find_shards``, ``read_shards``, ``iter_samples``).
"""

from .io import FORMAT, ShardMember, read_range
from .read import ShardSet, find_shards, is_shard_source, iter_samples, read_shards
from .write import pack_shards, parse_size

__all__ = ["FORMAT", "ShardMember", "ShardSet", "find_shards", "is_shard_source", "iter_samples", "pack_shards",
           "parse_size", "read_range", "read_shards"]
