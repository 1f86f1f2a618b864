"""``imgclass pretrain``: self-supervised pretraining on unlabelled images; the run folder becomes a backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import MAX_PIXELS_HELP, JobsOpt, OverwriteOpt
from ._output import err, print_json, warn_skipped
from .app import app

_PANEL = "Objective"


@app.command(epilog="Example: imgclass pretrain photos/ --method simclr --backbone smallcnn --epochs 20 --out runs/simclr; "
                    "then imgclass train labelled/ --method runs/simclr+logreg")
def pretrain(
    data: Annotated[str | None, typer.Argument(metavar="DIR", help="Folder of images (class sub-folders are ignored), CSV or JSONL.")] = None,
    method: Annotated[str | None, typer.Option("--method", "-m", help="simclr (default), byol, rotation, scan (clusters: start from trained weights, give --clusters), or selflabel (SCAN's last step: trains on its own most confident clusters; start from a SCAN run).")] = None,
    backbone: Annotated[str | None, typer.Option(help="Network to pretrain: a timm name (default smallcnn), NAME@imagenet, or an earlier pretrain run.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Epochs (default 20).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch (default 256; SimCLR's negatives come from the batch).")] = None,
    img_size: Annotated[int | None, typer.Option(help="Input size in pixels (default: the backbone's); stored with the weights.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory (default runs/<DIR>-<method>-<backbone>).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run from its directory, after its last finished epoch.")] = None,
    overwrite: OverwriteOpt = False,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (default 2e-3 for AdamW, 1e-3 for BYOL).", rich_help_panel=_PANEL)] = None,
    temperature: Annotated[float | None, typer.Option(help="SimCLR: softmax temperature (default 0.2); selflabel: of its cosine classifier (default 0.1).", rich_help_panel=_PANEL)] = None,
    view_size: Annotated[int | None, typer.Option(help="Side of the augmented views (default: 3/4 of --img-size; with --unfreeze, --img-size); smaller is faster.", rich_help_panel=_PANEL)] = None,
    hflip: Annotated[bool | None, typer.Option("--hflip/--no-hflip", help="Horizontal flips in the views (default on).", rich_help_panel=_PANEL)] = None,
    randaugment: Annotated[int | None, typer.Option(help="Strong views: this many RandAugment operations per view after the crop (SCAN's recipe; 0 = off, the default).", rich_help_panel=_PANEL)] = None,
    clusters: Annotated[int | None, typer.Option(help="SCAN, selflabel: number of clusters to find.", rich_help_panel=_PANEL)] = None,
    neighbors: Annotated[int | None, typer.Option(help="SCAN: nearest neighbours per image, mined once in the starting features (default 20).", rich_help_panel=_PANEL)] = None,
    entropy_weight: Annotated[float | None, typer.Option(help="SCAN: weight of the use-every-cluster term (default 5).", rich_help_panel=_PANEL)] = None,
    confident: Annotated[float | None, typer.Option(help="selflabel: share of each cluster, its most confident images, trained on each epoch (default 0.5).", rich_help_panel=_PANEL)] = None,
    unfreeze: Annotated[int | None, typer.Option(help="SimCLR, SCAN or selflabel with NAME@imagenet or a pretrained run: train only the last N blocks; the frozen rest runs once over a bank of views (fast on a CPU).", rich_help_panel=_PANEL)] = None,
    view_bank: Annotated[int | None, typer.Option(help="With --unfreeze: augmented views cached per image (default 6).", rich_help_panel=_PANEL)] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (default 0).")] = None,
    jobs: JobsOpt = None,
    max_pixels: Annotated[int | None, typer.Option(help=MAX_PIXELS_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
):
    """Self-supervised pretraining on unlabelled images; the run directory then works as a backbone name."""
    from .. import api

    res = api.pretrain(data, method=method, backbone=backbone, epochs=epochs, batch_size=batch_size, img_size=img_size,
                       out=out, resume=resume, seed=seed, n_jobs=jobs, max_pixels=max_pixels, log=err, lr=lr,
                       temperature=temperature, view_size=view_size, hflip=hflip, unfreeze=unfreeze,
                       view_bank=view_bank, clusters=clusters, neighbors=neighbors, entropy_weight=entropy_weight,
                       confident=confident, randaugment=randaugment, overwrite=overwrite)
    warn_skipped(res.skipped)
    if json_out:
        print_json({"run_dir": str(res.run_dir), "backbone": res.backbone, "method": res.method, "arch": res.arch,
                    "img_size": res.img_size, "images": res.n_images, "epochs": res.epochs,
                    "resumed_after": res.resumed_from, "losses": res.losses})
        return
    losses = res.losses
    trend = f", loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else ""
    typer.echo(f"pretrained {res.arch} with {res.method} on {res.n_images} images: {res.epochs} "
               f"epoch{'' if res.epochs == 1 else 's'}{trend}")
    typer.echo(f"backbone: {res.run_dir} ({res.arch}, {res.img_size} px)")
    typer.echo(f"use it:   imgclass train DATA --method {res.run_dir}+logreg   (linear probe on frozen features)")
    hint = f" --img-size {res.img_size}" if res.arch_input_size != res.img_size else ""
    typer.echo(f"          imgclass train DATA --method {res.run_dir}{hint}   (fine-tuning)")
    typer.echo(f"          imgclass cluster DATA --features {res.run_dir}   (clustering)")
