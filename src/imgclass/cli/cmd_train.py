"""``imgclass train`` (a classifier into a run folder) and ``imgclass methods`` (what it can train)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import (
    DEFAULT_MAX_PIXELS,
    DUPLICATES_HELP,
    TAXONOMY_HELP,
    VAL_SPLIT_HELP,
    DenoiseOpt,
    EqualizeOpt,
    GrayOpt,
    JobsOpt,
    MaxPixelsOpt,
    OverwriteOpt,
    ResizeOpt,
    SizeOpt,
    SplitOpt,
    TaskOpt,
    preprocess,
)
from ._output import console, err, metric_table, print_json, warn_skipped
from .app import app


@app.command(epilog="Example: imgclass train photos/ --method hog+svm --out runs/photos")
def train(
    data: Annotated[str | None, typer.Argument(metavar="DATA", help="Folder (one sub-folder per class, or train/val/test), CSV or JSONL.")] = None,
    method: Annotated[str | None, typer.Option("--method", "-m", help="Method spec, e.g. hog+svm, lite0+logreg, lite0, smallcnn (see 'imgclass methods'); default hog+svm, or the method in --params.")] = None,
    val_split: Annotated[float, typer.Option(help=VAL_SPLIT_HELP)] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for the split and the estimator.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory: a new or empty folder (default: the first free runs/<data>-<method>, -2, -3, ...). A folder with files in it is refused unless --overwrite; one that another run is writing to is always refused.")] = None,
    overwrite: OverwriteOpt = False,
    duplicates: Annotated[str, typer.Option(help=DUPLICATES_HELP)] = "drop",
    task: TaskOpt = None,
    split: SplitOpt = None,
    jobs: JobsOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    size: SizeOpt = None, resize: ResizeOpt = "squash", grayscale: GrayOpt = False, denoise: DenoiseOpt = "none",
    equalize: EqualizeOpt = "none",
    epochs: Annotated[int | None, typer.Option(help="Deep: training epochs (default 10).", rich_help_panel="Deep training")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Deep: batch size (default 64).", rich_help_panel="Deep training")] = None,
    lr: Annotated[float | None, typer.Option(help="Deep: peak learning rate (default per optimizer).", rich_help_panel="Deep training")] = None,
    img_size: Annotated[int | None, typer.Option(help="Deep: input size in pixels (default: the backbone's).", rich_help_panel="Deep training")] = None,
    optimizer: Annotated[str | None, typer.Option(help="Deep: adamw, sgd or rmsprop.", rich_help_panel="Deep training")] = None,
    schedule: Annotated[str | None, typer.Option(help="Deep: onecycle, cosine or constant (with warmup).", rich_help_panel="Deep training")] = None,
    augment: Annotated[str | None, typer.Option(help="Deep: none, light, standard, strong or corruptions (standard plus ImageNet-C-style corruptions).", rich_help_panel="Deep training")] = None,
    hflip: Annotated[bool | None, typer.Option("--hflip/--no-hflip", help="Deep: horizontal flips in augmentation and TTA (default on); turn off for text, digits and handwriting.", rich_help_panel="Deep training")] = None,
    degrees: Annotated[float | None, typer.Option(help="Deep: random rotation of up to ± this many degrees (default 0; e.g. 10 for handwriting).", rich_help_panel="Deep training")] = None,
    scale: Annotated[float | None, typer.Option(help="Deep: random zoom by 1 ± this fraction (default 0; e.g. 0.15).", rich_help_panel="Deep training")] = None,
    unfreeze: Annotated[str | None, typer.Option(help="Deep, pretrained: fine-tune only the last N blocks (default 3; the frozen blocks' activations are cached), or 'all'.", rich_help_panel="Deep training")] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Deep: label smoothing (default 0.1).", rich_help_panel="Deep training")] = None,
    mixup: Annotated[float | None, typer.Option(help="Deep: mixup alpha (0 = off).", rich_help_panel="Deep training")] = None,
    cutmix: Annotated[float | None, typer.Option(help="Deep: cutmix alpha (0 = off).", rich_help_panel="Deep training")] = None,
    ema: Annotated[float | None, typer.Option(help="Deep: EMA decay of the weights, e.g. 0.999 (0 = off).", rich_help_panel="Deep training")] = None,
    early_stopping: Annotated[int | None, typer.Option(help="Deep: stop after N epochs without improvement.", rich_help_panel="Deep training")] = None,
    pretrained: Annotated[str | None, typer.Option(help="Deep: weights file (.safetensors or state dict) instead of the method's.", rich_help_panel="Deep training")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted deep run from its directory.", rich_help_panel="Deep training")] = None,
    nproc: Annotated[int | None, typer.Option(help="Deep: train on N processes with torchrun + DistributedDataParallel (same global --batch-size); multi-node: see the README.", rich_help_panel="Scale out")] = None,
    device: Annotated[str | None, typer.Option(help="Deep: auto (a GPU when there is one), cpu, cuda or mps.", rich_help_panel="Scale out")] = None,
    precision: Annotated[str | None, typer.Option(help="Deep: auto (bf16/fp16 autocast on GPU, fp32 on CPU), fp32, bf16 or fp16.", rich_help_panel="Scale out")] = None,
    stream: Annotated[str | None, typer.Option(help="Deep: auto (stream the training images when they do not fit in memory), on (always; tar shards are then read front to back through a shuffle buffer) or off.", rich_help_panel="Scale out")] = None,
    taxonomy: Annotated[Path | None, typer.Option(help=TAXONOMY_HELP, rich_help_panel="Task")] = None,
    hierarchy: Annotated[str, typer.Option(help="Hierarchical: flat (one leaf classifier, summed up the tree) or local (one per parent node).", rich_help_panel="Task")] = "flat",
    min_confidence: Annotated[float | None, typer.Option(help="Hierarchical: fall back to the deepest node with at least this probability.", rich_help_panel="Task")] = None,
    positive: Annotated[str | None, typer.Option(help="Binary: the positive class (default: the second class).", rich_help_panel="Task")] = None,
    threshold_for: Annotated[str | None, typer.Option(help="Binary: tune the threshold on validation for f1 (default), youden, precision=P or recall=R.", rich_help_panel="Task")] = None,
    balance: Annotated[str | None, typer.Option(help="Imbalance: none, weights (class-weighted loss / class_weight) or sampler (balanced batches / resampling).", rich_help_panel="Task")] = None,
    calibrate: Annotated[bool, typer.Option("--calibrate/--no-calibrate", help="Fit a temperature on validation (stored in the bundle, used by predict).", rich_help_panel="Task")] = True,
    unlabeled: Annotated[str | None, typer.Option(help="Folder (or CSV) of unlabelled images to learn from as well; labels there only score the pseudo-labels.", rich_help_panel="Semi-supervised")] = None,
    semi: Annotated[str | None, typer.Option(help="self-training, balanced-self-training (the same share of the pool per class, growing each round; --pseudo-threshold is then the final share) or label-spreading (classical; default self-training), fixmatch (deep, the default).", rich_help_panel="Semi-supervised")] = None,
    exclude: Annotated[Path | None, typer.Option(help="CSV with a path column (excluded.csv from imgclass curate): leave those items out.")] = None,
    params: Annotated[Path | None, typer.Option("--params", help="best.json from 'imgclass tune': train with its parameters (and its method unless --method is given); explicit options win.")] = None,
    pseudo_threshold: Annotated[float | None, typer.Option(help="Confidence a prediction needs to become a pseudo-label (default 0.75 classical, 0.95 fixmatch).", rich_help_panel="Semi-supervised")] = None,
):
    """Train a classifier; writes the bundle, split, metrics and report to a run directory."""
    from .. import api

    deep = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer, "schedule": schedule,
            "augment": augment, "unfreeze": unfreeze, "label_smoothing": label_smoothing,
            "mixup": mixup, "cutmix": cutmix, "ema": ema, "early_stopping": early_stopping, "hflip": hflip,
            "degrees": degrees, "scale": scale, "device": device, "precision": precision, "stream": stream}
    deep = {k: v for k, v in deep.items() if v is not None}
    if resume is not None:
        model = api.train(resume=resume, log=err)
    else:
        def run(method, out):
            return api.train(data, method=method, val_split=val_split, seed=seed, out=out, task=task,
                             split_file=str(split) if split else None, n_jobs=jobs, max_pixels=max_pixels,
                             preprocess=preprocess(size, resize, grayscale, denoise, equalize),
                             train_config=deep or None, img_size=img_size, pretrained=pretrained, log=err,
                             taxonomy=taxonomy, hierarchy=hierarchy, min_confidence=min_confidence,
                             positive=positive, threshold_for=threshold_for, balance=balance, calibrate=calibrate,
                             unlabeled=unlabeled, semi=semi, pseudo_threshold=pseudo_threshold,
                             exclude=str(exclude) if exclude else None, params=params, overwrite=overwrite,
                             duplicates=duplicates)

        if out is None and data is not None:
            what = api.train_method(method, params)  # the folder is named after the method train will use
            with api.new_run_dir(data, what) as out:
                model = run(what if params is not None else method, out)
        else:
            model = run(method, out)
    if not api.is_main_process():  # under torchrun rank 0 reports
        return
    val = model.meta_.get("metrics", {}).get("val", {})
    semi_report = model.meta_.get("semi")
    warn_skipped(model.meta_.get("train_skipped", []) + model.meta_.get("val_skipped", []))
    if json_out:
        print_json({"run_dir": str(model.run_dir), "model": str(model.run_dir / "model"), "metrics": val,
                    **({"semi": semi_report} if semi_report else {})})
        return
    con = console()
    con.print(f"trained [bold]{model.method}[/] on {len(model.classes_)} classes ({model.task_})")
    if semi_report:
        from rich.table import Table

        t = Table(title=f"{semi_report['method']}: pseudo-labels from {semi_report['unlabeled']} unlabelled images "
                        f"(threshold {semi_report['threshold']})", title_justify="left")
        for col in ("round", "pseudo-labels", "correct"):
            t.add_column(col, justify="right")
        for r in semi_report["rounds"]:
            t.add_row(str(r["round"]), str(r["added"]), "—" if r["accuracy"] is None else f"{r['accuracy']:.1%}")
        con.print(t)
    if val:
        con.print(metric_table("validation", val))
    con.print(f"run directory: {model.run_dir}   bundle: {model.run_dir / 'model'}")


@app.command(epilog="Example: imgclass methods")
def methods():
    """List method specs (FEATURES+CLASSIFIER) with a one-line description each."""
    from .. import api

    rows = api.methods()
    width = max(len(s) for s, _ in rows)
    for spec, desc in rows:
        typer.echo(f"{spec:<{width}}  {desc}")
