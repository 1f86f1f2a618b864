"""``imgclass data check`` (what is in a dataset) and ``imgclass data pack`` (a dataset into tar shards)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import DEFAULT_MAX_PIXELS, TAXONOMY_HELP, JobsOpt, MaxPixelsOpt, TaskOpt
from ._output import console, print_json, warn_skipped
from .app import data_app


@data_app.command("check", epilog="Example: imgclass data check photos/ --json")
def data_check(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Folder, CSV or JSONL.")],
    task: TaskOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    jobs: JobsOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
):
    """Images per class, sizes and modes, unreadable files, exact duplicates (also across splits), imbalance."""
    from .. import api

    rep = api.check_data(data, task=task, max_pixels=max_pixels, n_jobs=jobs)
    if json_out:
        print_json(rep)
        return
    from rich.table import Table

    con = console()
    con.print(f"[bold]{rep['dataset']}[/]: {rep['images']} images, task {rep['task']}, "
              f"{len(rep['classes'])} classes" + (f", splits {', '.join(rep['per_split'])}" if rep["per_split"] else ""))
    if rep["classes"]:
        t = Table(title="images per class", title_justify="left")
        t.add_column("class")
        splits = list(rep["per_split"] or {})
        for s in splits or ["images"]:
            t.add_column(s, justify="right")
        for c, n in rep["classes"].items():
            t.add_row(c, *([str(rep["per_split"][s].get(c, 0)) for s in splits] if splits else [str(n)]))
        con.print(t)
    if rep["imbalance_ratio"]:
        con.print(f"imbalance ratio (largest / smallest class): {rep['imbalance_ratio']:.2f}")
    if rep["width"]:
        w, h = rep["width"], rep["height"]
        con.print(f"width  min {w['min']}  median {w['median']}  max {w['max']}\n"
                  f"height min {h['min']}  median {h['median']}  max {h['max']}")
    con.print("modes: " + ", ".join(f"{m} {n}" for m, n in rep["modes"].items()))
    con.print(f"bad files: {len(rep['bad_files'])}")
    for b in rep["bad_files"][:50]:
        con.print(f"  [red]{b['path']}[/]: {b['reason']}", markup=True)
    con.print(f"exact duplicates: {rep['duplicate_images']} extra copies in {len(rep['duplicates'])} groups, "
              f"{rep['cross_split_duplicates']} groups across splits")
    for g in rep["duplicates"][:20]:
        flag = " [yellow](across splits)[/]" if g["cross_split"] else ""
        flag += " [red](conflicting labels)[/]" if g["conflicting_labels"] else ""
        con.print("  " + " = ".join(g["paths"]) + flag)


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
    task: TaskOpt = None,
    taxonomy: Annotated[Path | None, typer.Option(help=TAXONOMY_HELP)] = None,
    group_by: Annotated[str | None, typer.Option(help="CSV/JSONL column whose values are kept as each item's group.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Pack a dataset into WebDataset-style tar shards plus index.json; train, evaluate, curate, ... read them."""
    from .. import api

    s = api.pack(data, out, shard_size=shard_size, split_file=split_file, val_split=val_split, test_split=test_split,
                 seed=seed, shuffle=shuffle, overwrite=overwrite, task=task, taxonomy=taxonomy, group_by=group_by)
    if json_out:
        print_json(s)
        return
    warn_skipped(s["skipped"])
    splits = ", ".join(f"{k} {v}" for k, v in s["splits"].items())
    typer.echo(f"packed {s['items']:,} images ({len(s['classes'])} classes" + (f"; {splits}" if splits else "")
               + f") into {s['shards']} shard{'s' if s['shards'] != 1 else ''}, {s['bytes'] / 1e6:.1f} MB, "
               f"in {s['seconds']:.1f} s ({s['images_per_s']:,.0f} img/s)")
    typer.echo(f"index: {s['index']}  (use the folder as DATA anywhere, e.g. imgclass train {s['out']})")
