"""``imgclass data pack``: Typer command, thin over ``imgclass.data.shards``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import TASK_HELP, _print_json, _warn_skipped, data_app


@data_app.command("pack", epilog="Example: imgclass data pack photos/ --out shards/ --shard-size 256MB")
def data_pack(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Folder, CSV, JSONL or shards to (re)pack.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder (or fsspec URL, e.g. s3://bucket/shards) for shard-NNNNNN.tar and index.json.")],
    shard_size: Annotated[str, typer.Option(help="Shard size, e.g. 256MB, 1GB, 500KB.")] = "256MB",
    split_file: Annotated[Path | None, typer.Option(help="Record the split of this split.json (from an earlier run) in the shards.")] = None,
    val_split: Annotated[float | None, typer.Option(help="Carve a seeded validation split (out of train for pre-split data) and record it.")] = None,
    test_split: Annotated[float, typer.Option(help="Carve a seeded test split as well and record it.")] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed for the split and for shuffling items across shards.")] = 0,
    shuffle: Annotated[bool, typer.Option("--shuffle/--no-shuffle", help="Shuffle items across shards within each split (reading restores the order).")] = True,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace shards already in --out.")] = False,
    task: Annotated[str | None, typer.Option(help=TASK_HELP)] = None,
    taxonomy: Annotated[Path | None, typer.Option(help="JSON/YAML tree (child: parent) making the task hierarchical.")] = None,
    group_by: Annotated[str | None, typer.Option(help="CSV/JSONL column whose values are kept as each item's group.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Pack a dataset into WebDataset-style tar shards plus index.json; train, evaluate, curate, ... read them."""
    from ..data import load_dataset
    from ..data.shards import pack_shards

    ds = load_dataset(data, task=task, taxonomy=taxonomy, group_by=group_by)
    s = pack_shards(ds, out, shard_size, split_file=split_file, val_split=val_split, test_split=test_split,
                    seed=seed, shuffle=shuffle, overwrite=overwrite)
    if json_out:
        _print_json(s)
        return
    _warn_skipped(s["skipped"])
    splits = ", ".join(f"{k} {v}" for k, v in s["splits"].items())
    typer.echo(f"packed {s['items']:,} images ({len(s['classes'])} classes" + (f"; {splits}" if splits else "")
                     + f") into {s['shards']} shard{'s' if s['shards'] != 1 else ''}, {s['bytes'] / 1e6:.1f} MB, "
                     f"in {s['seconds']:.1f} s ({s['images_per_s']:,.0f} img/s)")
    typer.echo(f"index: {s['index']}  (use the folder as DATA anywhere, e.g. imgclass train {s['out']})")
