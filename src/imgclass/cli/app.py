"""Typer commands. Each one parses options, calls ``imgclass.api`` and prints."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="imgclass",
    help="From a folder of images to a trained, evaluated image classifier.\n\n"
         "Example: imgclass compare photos/ --methods hog+svm,lbp+rf,pixels+knn",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
data_app = typer.Typer(help="Inspect datasets.", epilog="Example: imgclass data check photos/",
                       no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")

TASK_HELP = "Override the inferred task: binary, multiclass, multilabel or hierarchical."
MAX_PIXELS_HELP = "Refuse images larger than this many pixels (decompression-bomb guard)."
JOBS_HELP = "Worker processes for decoding and features (default: all cores)."
DUPLICATES_HELP = ("An image listed more than once or in two splits: drop (default, with a warning: repeats with "
                   "the same label collapse into one entry, the train one when splits differ; every entry of an "
                   "image with conflicting labels is left out; an image in both train and val is left out of "
                   "val), keep (use every entry, with a warning) or error (refuse).")
OVERWRITE_HELP = "Empty an existing run folder given as --out and write into it (only imgclass run folders)."

SizeOpt = Annotated[int | None, typer.Option("--size", help="Resize images to SIZE x SIZE first (default: the features' own size).", rich_help_panel="Pre-processing")]
ResizeOpt = Annotated[str, typer.Option("--resize", help="How to reach --size: squash, pad (letterbox) or crop (centre).", rich_help_panel="Pre-processing")]
GrayOpt = Annotated[bool, typer.Option("--grayscale", help="Drop colour.", rich_help_panel="Pre-processing")]
DenoiseOpt = Annotated[str, typer.Option("--denoise", help="none, gaussian, median or wiener.", rich_help_panel="Pre-processing")]
EqualizeOpt = Annotated[str, typer.Option("--equalize", help="none, hist (global) or clahe (adaptive).", rich_help_panel="Pre-processing")]


def _preprocess(size, resize, grayscale, denoise, equalize):
    """The Preprocess dict from the CLI flags, or None when every flag is at its default."""
    pre = {"size": size, "resize": resize, "grayscale": grayscale, "denoise": denoise, "equalize": equalize}
    if pre == {"size": None, "resize": "squash", "grayscale": False, "denoise": "none", "equalize": "none"}:
        return None
    return pre


def _version(value: bool):
    if value:
        from .. import __version__

        typer.echo(f"imgclass {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
):
    """From a folder of images to a trained, evaluated image classifier."""
    _print_data_warnings()


def _print_data_warnings() -> None:
    """Show every ``DataWarning`` (rows skipped for a bad label, ...) as one ``warning:`` line on stderr."""
    import warnings

    from ..errors import DataWarning

    warnings.simplefilter("always", DataWarning)
    if getattr(warnings.showwarning, "_imgclass", False):
        return
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            _err(f"warning: {message}")
        else:
            default(message, category, filename, lineno, file, line)

    show._imgclass = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def _console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def _err(msg: str) -> None:
    typer.echo(msg, err=True)


def _print_json(obj) -> None:
    from .._util import dumps

    typer.echo(dumps(obj))


def _warn_skipped(skipped) -> None:
    for path, reason in skipped[:20]:
        _err(f"warning: skipped {path}: {reason}")
    if len(skipped) > 20:
        _err(f"warning: ... and {len(skipped) - 20} more unreadable images")


def _metric_table(title: str, metrics: dict, keys=None):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        if (keys is None or k in keys) and isinstance(v, (int, float)):
            t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    return t


def _per_class_table(per_class):
    from rich.table import Table

    t = Table(title="per class", title_justify="left")
    for c in ("class", "precision", "recall", "f1", "support"):
        t.add_column(c, justify="left" if c == "class" else "right")
    for r in per_class:
        t.add_row(r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    return t


# --------------------------------------------------------------------------- train
@app.command(epilog="Example: imgclass train photos/ --method hog+svm --out runs/photos")
def train(
    data: Annotated[str | None, typer.Argument(metavar="DATA", help="Folder (one sub-folder per class, or train/val/test), CSV or JSONL.")] = None,
    method: Annotated[str | None, typer.Option("--method", "-m", help="Method spec, e.g. hog+svm, lite0+logreg, lite0, smallcnn (see 'imgclass methods'); default hog+svm, or the method in --params.")] = None,
    val_split: Annotated[float, typer.Option(help="Fraction held out for validation (ignored with pre-split folders).")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for the split and the estimator.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory: a new or empty folder (default: the first free runs/<data>-<method>, -2, -3, ...). A folder with files in it is refused unless --overwrite; one that another run is writing to is always refused.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
    duplicates: Annotated[str, typer.Option(help=DUPLICATES_HELP)] = "drop",
    task: Annotated[str | None, typer.Option(help=TASK_HELP)] = None,
    split: Annotated[Path | None, typer.Option(help="Reuse a split.json from an earlier run.")] = None,
    jobs: Annotated[int | None, typer.Option(help=JOBS_HELP)] = None,
    max_pixels: Annotated[int, typer.Option(help=MAX_PIXELS_HELP)] = 89_478_485,
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
    taxonomy: Annotated[Path | None, typer.Option(help="JSON/YAML tree (child: parent) making the task hierarchical.", rich_help_panel="Task")] = None,
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
        model = api.train(resume=resume, log=_err)
    else:
        claimed = None
        if out is None and data is not None:
            from ..training import RunDir, default_run_dir
            from ..training.distributed import is_main

            if params is not None:
                from ..training.tuning import resolve_params

                method = resolve_params(params, method)[0]
            out = default_run_dir(data, method or "hog+svm")
            if is_main():  # a fresh folder, claimed atomically (other ranks get rank 0's through train)
                made = [p for p in reversed(out.parents) if not p.exists()]
                out = RunDir.claim_name(out)
                claimed = [*made, out]
        try:
            model = api.train(data, method=method, val_split=val_split, seed=seed, out=out, task=task,
                              split_file=str(split) if split else None, n_jobs=jobs, max_pixels=max_pixels,
                              preprocess=_preprocess(size, resize, grayscale, denoise, equalize),
                              train_config=deep or None, img_size=img_size, pretrained=pretrained, log=_err,
                              taxonomy=taxonomy, hierarchy=hierarchy, min_confidence=min_confidence,
                              positive=positive, threshold_for=threshold_for, balance=balance, calibrate=calibrate,
                              unlabeled=unlabeled, semi=semi, pseudo_threshold=pseudo_threshold,
                              exclude=str(exclude) if exclude else None, params=params, overwrite=overwrite,
                              duplicates=duplicates)
        except BaseException:
            import contextlib
            import os

            for d in reversed(claimed or []):  # nothing written yet: give the default name back (not if in use)
                with contextlib.suppress(OSError):
                    os.rmdir(d)
            raise
    from ..training.distributed import is_main

    if not is_main():  # under torchrun rank 0 reports
        return
    val = model.meta_.get("metrics", {}).get("val", {})
    semi_report = model.meta_.get("semi")
    _warn_skipped(model.meta_.get("train_skipped", []) + model.meta_.get("val_skipped", []))
    if json_out:
        _print_json({"run_dir": str(model.run_dir), "model": str(model.run_dir / "model"), "metrics": val,
                     **({"semi": semi_report} if semi_report else {})})
        return
    con = _console()
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
        con.print(_metric_table("validation", val))
    con.print(f"run directory: {model.run_dir}   bundle: {model.run_dir / 'model'}")


# --------------------------------------------------------------------------- evaluate
@app.command(epilog="Example: imgclass evaluate runs/photos/model test_photos/ --out runs/photos/test")
def evaluate(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model bundle folder (runs/NAME/model).")],
    data: Annotated[str, typer.Argument(metavar="DATA", help="Labelled folder, CSV or JSONL.")],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write metrics.json, predictions.csv, plots and report.html here.")] = None,
    task: Annotated[str | None, typer.Option(help=TASK_HELP)] = None,
    jobs: Annotated[int | None, typer.Option(help=JOBS_HELP)] = None,
    max_pixels: Annotated[int, typer.Option(help=MAX_PIXELS_HELP)] = 89_478_485,
    json_out: Annotated[bool, typer.Option("--json", help="Print all metrics as JSON.")] = False,
    group_by: Annotated[str | None, typer.Option(help="CSV/JSONL column whose values are slices (e.g. site, camera, skin tone); metrics per slice, worst first.")] = None,
    tta: Annotated[str, typer.Option(help="Test-time augmentation: none, flip, crops (6 views, no mirrors) or flip+crops (10 views).")] = "none",
):
    """Score a trained model on labelled data: accuracy, balanced accuracy, P/R/F1, top-k, confusion matrix."""
    from .. import api

    ev = api.evaluate(model, data, out=out, task=task, max_pixels=max_pixels, n_jobs=jobs, group_by=group_by, tta=tta)
    _warn_skipped(ev.skipped)
    if json_out:
        _print_json(ev.to_dict())
        return
    con = _console()
    con.print(_metric_table(f"{ev.title} ({ev.metrics['n']} images)",
                            {k: v for k, v in ev.metrics.items() if k != "n"}))
    con.print(_per_class_table(ev.metrics["per_class"]))
    slices = ev.slices()
    if slices:
        key = "macro_f1" if ev.task == "multilabel" else "accuracy"
        con.print("slices (worst first): " + ", ".join(f"{r['group']} {r[key]:.3f} (n={r['n']})" for r in slices))
    if out is not None:
        con.print(f"report: {Path(out) / 'report.html'}")


# --------------------------------------------------------------------------- predict
@app.command(epilog="Example: imgclass predict runs/photos/model cat.jpg holiday/ --top-k 3")
def predict(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model bundle folder (runs/NAME/model).")],
    images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="Image files and/or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many classes to show per image.")] = 3,
    jobs: Annotated[int | None, typer.Option(help=JOBS_HELP)] = None,
    max_pixels: Annotated[int, typer.Option(help=MAX_PIXELS_HELP)] = 89_478_485,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list: per image, the decided label(s), the top-k and (hierarchical) the path.")] = False,
    tta: Annotated[str, typer.Option(help="Test-time augmentation: none, flip, crops (6 views, no mirrors) or flip+crops (10 views).")] = "none",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write predictions to this CSV (path, label, probability, top_k, error) in chunks; rerunning skips the images already in it.")] = None,
    runtime: Annotated[str, typer.Option(help="auto (ONNX Runtime when the bundle has an up-to-date model.onnx from imgclass export), torch or onnx.")] = "auto",
    nproc: Annotated[int | None, typer.Option(help="With --out: predict on N processes with torchrun, each rank a block of the images, merged in input order.")] = None,
):
    """Classify images with a trained model: one line per image with the decision and the top-k classes."""
    import os

    from .. import api
    m = api.resolve_model(model, max_pixels=max_pixels, n_jobs=jobs, runtime=runtime)
    ds = api.images_dataset(images)
    if out is not None:
        from ..deploy.batch import predict_to_csv

        c = predict_to_csv(m, list(ds.sources), out, top_k=top_k, tta=tta, log=_err)
        from ..training.distributed import is_main

        if not is_main():  # under torchrun rank 0 reports
            return
        if json_out:
            _print_json({"out": str(out), **c})
        else:
            typer.echo(f"{out}: {c['predicted']} predicted, {c['skipped']} already there, {c['errors']} unreadable "
                       f"({c['total']} images)")
        return
    if os.environ.get("WORLD_SIZE", "1") != "1":
        from ..errors import ConfigError

        raise ConfigError("predict on several processes (--nproc / torchrun) writes a CSV: add --out preds.csv")
    results = api.predict(m, ds.sources, top_k=top_k, tta=tta)
    errors = dict(m.errors_)
    if json_out:
        _print_json([{"path": p, **(r.to_dict() if r is not None else {"label": None, "error": errors.get(p, "unreadable")})}
                     for p, r in zip(ds.sources, results)])
        return
    names = [os.path.relpath(p) if not os.path.relpath(p).startswith("..") else p for p in ds.sources]
    width = min(max(len(n) for n in names), 60)
    for name, r, src in zip(names, results, ds.sources):
        if r is None:
            typer.echo(f"{name:<{width}}  ERROR: {errors.get(src, 'unreadable')}")
        else:
            typer.echo(f"{name:<{width}}  {_prediction_line(r, m.task_, top_k)}")
    if errors:
        _err(f"{len(errors)} of {len(names)} images could not be read")


def _prediction_line(r, task: str, top_k: int) -> str:
    """``cat 94.0%  fox 4.0%`` (single-label: the decision, then the other top-k classes); multi-label and
    hierarchical: the decision, then ``| top: ...`` when more than one class is asked for."""
    if task in ("multiclass", "binary"):
        others = [(lab, pr) for lab, pr in r.top if lab != r.label][:max(top_k - 1, 0)]
        return "  ".join([r.text()] + [f"{lab} {pr * 100:.1f}%" for lab, pr in others])
    if top_k <= 1:
        return r.text()
    return r.text() + "   | top: " + ", ".join(f"{lab} {pr * 100:.1f}%" for lab, pr in r.top)


# --------------------------------------------------------------------------- robustness
@app.command(epilog="Example: imgclass robustness runs/photos/model test_photos/ --out runs/photos/robustness")
def robustness(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model bundle folder (runs/NAME/model).")],
    data: Annotated[str, typer.Argument(metavar="DATA", help="Labelled folder, CSV or JSONL.")],
    corruptions: Annotated[str | None, typer.Option(help="Comma-separated subset (default: all 9).")] = None,
    severities: Annotated[str, typer.Option(help="Comma-separated severities, 1 to 5.")] = "1,2,3,4,5",
    max_images: Annotated[int | None, typer.Option(help="Use a seeded sample of at most this many images.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write robustness.json and robustness.png here.")] = None,
    jobs: Annotated[int | None, typer.Option(help=JOBS_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the table as JSON.")] = False,
):
    """Accuracy under ImageNet-C-style corruptions (noise, blur, JPEG, pixelate, brightness, contrast, haze)."""
    from .. import api
    from ..errors import ConfigError

    try:
        sev = [int(v) for v in severities.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--severities {severities!r}: give numbers 1 to 5 separated by commas") from None
    res = api.robustness(model, data, corruptions=corruptions.split(",") if corruptions else None, severities=sev,
                         max_images=max_images, out=out, n_jobs=jobs)
    if json_out:
        _print_json(res.to_dict())
        return
    from rich.table import Table

    t = Table(title=f"accuracy under corruption ({res.n} images; clean {res.clean_accuracy:.4f})", title_justify="left")
    t.add_column("corruption")
    for v in res.severities:
        t.add_column(f"s{v}", justify="right")
    t.add_column("mean", justify="right")
    for name, accs in res.table.items():
        t.add_row(name, *[f"{a:.3f}" for a in accs], f"{sum(accs) / len(accs):.3f}")
    con = _console()
    con.print(t)
    con.print(f"mean corruption accuracy {res.mean_corruption_accuracy:.4f} = {res.relative:.3f} of clean")
    if out is not None:
        con.print(f"plot: {Path(out) / 'robustness.png'}")


# --------------------------------------------------------------------------- cv
@app.command(epilog="Example: imgclass explain runs/photos/model cat.jpg --method gradcam --out cat-gradcam.png")
def explain(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model bundle folder (runs/NAME/model).")],
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="The image to explain.")],
    target: Annotated[list[str] | None, typer.Option(help="Class (or taxonomy node) to explain; repeat for several. Default: the prediction (each predicted label for multi-label models).")] = None,
    method: Annotated[str, typer.Option(help="gradcam, gradcam++, integrated-gradients (deep models) or occlusion (any model).")] = "gradcam",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="PNG to write (default IMAGE-STEM.METHOD.png here); with several targets, STEM-TARGET.png.")] = None,
    max_pixels: Annotated[int | None, typer.Option(help=MAX_PIXELS_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print target, probability, peak and file as JSON.")] = False,
):
    """Write a heatmap overlay of what the model looked at (Grad-CAM, Grad-CAM++, integrated gradients, occlusion)."""
    from .. import api
    from ..errors import DataError

    if not image.is_file():
        raise DataError(f"{image}: no such image file; give the path of one image")
    out = out or Path(f"{image.stem}.{method.replace('+', 'p')}.png")
    exps = api.explain(model, image, target=target or None, method=method, out=out, max_pixels=max_pixels)
    if json_out:
        _print_json([e.to_dict() for e in exps])
        return
    con = _console()
    for e in exps:
        r, c = e.peak
        con.print(f"{e.target} {e.probability:.1%} · {e.method} · peak at row {r}, column {c} of "
                  f"{e.heatmap.shape[0]}x{e.heatmap.shape[1]} → {e.path}")


@app.command(epilog="Example: imgclass cv photos/ --method hog+svm --folds 5 --out runs/photos-cv")
def cv(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Labelled folder, CSV or JSONL.")],
    method: Annotated[str, typer.Option("--method", "-m", help="Method spec (see 'imgclass methods').")] = "hog+svm",
    folds: Annotated[int, typer.Option(help="Number of folds.")] = 5,
    repeats: Annotated[int, typer.Option(help="Repeat the k-fold split this many times with different shuffles.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed for the folds and the estimators.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Keep every fold, cv.json and oof.csv here; running again with the same --out resumes.")] = None,
    task: Annotated[str | None, typer.Option(help=TASK_HELP)] = None,
    jobs: Annotated[int | None, typer.Option(help=JOBS_HELP)] = None,
    epochs: Annotated[int | None, typer.Option(help="Deep: training epochs per fold.")] = None,
    img_size: Annotated[int | None, typer.Option(help="Deep: input size in pixels.")] = None,
    hierarchy: Annotated[str, typer.Option(help="Hierarchical: flat or local.")] = "flat",
    balance: Annotated[str | None, typer.Option(help="none, weights or sampler.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print per-fold metrics and the summary as JSON.")] = False,
):
    """Cross-validate a method: stratified folds, mean ± std per metric, out-of-fold probabilities."""
    from .. import api

    res = api.cv(data, method, folds=folds, repeats=repeats, seed=seed, out=out, task=task, n_jobs=jobs,
                 train_config={"epochs": epochs} if epochs else None, img_size=img_size, hierarchy=hierarchy,
                 balance=balance, log=_err)
    if json_out:
        _print_json(res.to_dict())
        return
    from rich.table import Table

    from ..tasks import HEADLINE

    keys = [k for k in HEADLINE.get(res.task, HEADLINE["default"]) if k in res.summary]
    t = Table(title=f"{method}: {folds}-fold cross-validation" + (f" x {repeats}" if repeats > 1 else ""),
              title_justify="left")
    t.add_column("metric")
    t.add_column("mean ± std", justify="right")
    t.add_column("per fold", justify="left")
    for k in keys:
        s = res.summary[k]
        t.add_row(k, f"{s['mean']:.4f} ± {s['std']:.4f}", " ".join(f"{f['metrics'][k]:.3f}" for f in res.folds))
    _console().print(t)
    if out is not None:
        _console().print(f"out-of-fold probabilities: {Path(out) / 'oof.csv'}")


# --------------------------------------------------------------------------- compare
@app.command(epilog="Example: imgclass compare photos/ --methods hog+svm,lbp+rf,pixels+knn,hog+logreg")
def compare(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Labelled folder, CSV or JSONL.")],
    methods: Annotated[str, typer.Option("--methods", "-m", help="Method specs separated by commas, e.g. hog+svm,hog,color_hist+rf,pixels+knn.")] = "hog+svm,lbp+rf,pixels+knn,hog+logreg",
    val_split: Annotated[float, typer.Option(help="Fraction held out for validation (ignored with pre-split folders).")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for the split and the estimators.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Keep split.json, leaderboard.json and every bundle here (a new or empty folder).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)] = False,
    task: Annotated[str | None, typer.Option(help=TASK_HELP)] = None,
    split: Annotated[Path | None, typer.Option(help="Reuse a split.json from an earlier run.")] = None,
    jobs: Annotated[int | None, typer.Option(help=JOBS_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the leaderboard as JSON.")] = False,
    size: SizeOpt = None, resize: ResizeOpt = "squash", grayscale: GrayOpt = False, denoise: DenoiseOpt = "none",
    equalize: EqualizeOpt = "none",
):
    """Train several methods on the same split; print a leaderboard, best first."""
    from .. import api
    from ..models import split_methods

    rows = api.compare(data, split_methods(methods), val_split=val_split, seed=seed, task=task,
                       split_file=str(split) if split else None, n_jobs=jobs, out=out, overwrite=overwrite,
                       preprocess=_preprocess(size, resize, grayscale, denoise, equalize), log=_err)
    if json_out:
        _print_json([{k: v for k, v in r.items() if k != "metrics"} for r in rows])
        return
    from rich.table import Table

    t = Table(title="leaderboard (validation)", title_justify="left")
    for c in ("#", "method", "accuracy", "macro-F1", "fit s", "predict img/s", "size"):
        t.add_column(c, justify="left" if c == "method" else "right")
    for i, r in enumerate(rows, 1):
        t.add_row(str(i), r["method"], f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}", f"{r['fit_s']:.1f}",
                  f"{r['predict_ips']:,.0f}", _human_size(r["size_bytes"]))
    _console().print(t)


def _human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# --------------------------------------------------------------------------- lr-find
@app.command("lr-find", epilog="Example: imgclass lr-find photos/ --method smallcnn --out lr.png")
def lr_find(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Labelled folder, CSV or JSONL.")],
    method: Annotated[str, typer.Option("--method", "-m", help="A deep method, e.g. smallcnn or lite0.")] = "smallcnn",
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the loss-vs-LR plot.")] = Path("lr_find.png"),
    steps: Annotated[int, typer.Option(help="Training steps in the sweep.")] = 100,
    start: Annotated[float, typer.Option(help="First learning rate.")] = 1e-6,
    end: Annotated[float, typer.Option(help="Last learning rate.")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    img_size: Annotated[int | None, typer.Option(help="Input size in pixels (default: the backbone's).")] = None,
    optimizer: Annotated[str, typer.Option(help="adamw, sgd or rmsprop.")] = "adamw",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the curve and the suggestion as JSON.")] = False,
):
    """Learning-rate range test: plot loss against LR and suggest a value for --lr."""
    from .. import api

    res = api.lr_find(data, method, out=out, steps=steps, start=start, end=end, batch_size=batch_size,
                      img_size=img_size, optimizer=optimizer, seed=seed)
    if json_out:
        _print_json({"suggestion": res.suggestion, "lrs": res.lrs, "losses": res.losses, "plot": str(out)})
        return
    sug = f"{res.suggestion:.2e}" if res.suggestion else "none (too few steps)"
    typer.echo(f"suggested --lr {sug}  (plot: {out})")


# --------------------------------------------------------------------------- methods
@app.command(epilog="Example: imgclass methods")
def methods():
    """List method specs (FEATURES+CLASSIFIER) with a one-line description each."""
    from ..models import list_methods

    rows = list_methods()
    width = max(len(s) for s, _ in rows)
    for spec, desc in rows:
        typer.echo(f"{spec:<{width}}  {desc}")


# --------------------------------------------------------------------------- data check
@data_app.command("check", epilog="Example: imgclass data check photos/ --json")
def data_check(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Folder, CSV or JSONL.")],
    task: Annotated[str | None, typer.Option(help=TASK_HELP)] = None,
    max_pixels: Annotated[int, typer.Option(help=MAX_PIXELS_HELP)] = 89_478_485,
    jobs: Annotated[int | None, typer.Option(help=JOBS_HELP)] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the full report as JSON.")] = False,
):
    """Images per class, sizes and modes, unreadable files, exact duplicates (also across splits), imbalance."""
    from ..data import load_dataset
    from ..data.check import check_dataset

    rep = check_dataset(load_dataset(data, task=task), max_pixels=max_pixels, n_jobs=jobs)
    if json_out:
        _print_json(rep)
        return
    from rich.table import Table

    con = _console()
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
