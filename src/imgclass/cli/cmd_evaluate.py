"""``imgclass evaluate``, ``cv``, ``compare`` and ``robustness``: scoring models on labelled data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import (
    DEFAULT_MAX_PIXELS,
    LABELLED_HELP,
    MODEL_HELP,
    TTA_HELP,
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
from ._output import console, err, human_size, metric_table, per_class_table, print_json, warn_skipped
from .app import app


@app.command(epilog="Example: imgclass evaluate runs/photos/model test_photos/ --out runs/photos/test")
def evaluate(
    model: Annotated[str, typer.Argument(metavar="MODEL", help=MODEL_HELP)],
    data: Annotated[str, typer.Argument(metavar="DATA", help=LABELLED_HELP)],
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write metrics.json, predictions.csv, plots and report.html here.")] = None,
    task: TaskOpt = None,
    jobs: JobsOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    json_out: Annotated[bool, typer.Option("--json", help="Print all metrics as JSON.")] = False,
    group_by: Annotated[str | None, typer.Option(help="CSV/JSONL column whose values are slices (e.g. site, camera, skin tone); metrics per slice, worst first.")] = None,
    tta: Annotated[str, typer.Option(help=TTA_HELP)] = "none",
):
    """Score a trained model on labelled data: accuracy, balanced accuracy, P/R/F1, top-k, confusion matrix."""
    from .. import api

    ev = api.evaluate(model, data, out=out, task=task, max_pixels=max_pixels, n_jobs=jobs, group_by=group_by, tta=tta)
    warn_skipped(ev.skipped)
    if json_out:
        print_json(ev.to_dict())
        return
    con = console()
    con.print(metric_table(f"{ev.title} ({ev.metrics['n']} images)",
                           {k: v for k, v in ev.metrics.items() if k != "n"}))
    con.print(per_class_table(ev.metrics["per_class"]))
    slices = ev.slices()
    if slices:
        key = "macro_f1" if ev.task == "multilabel" else "accuracy"
        con.print("slices (worst first): " + ", ".join(f"{r['group']} {r[key]:.3f} (n={r['n']})" for r in slices))
    if out is not None:
        con.print(f"report: {Path(out) / 'report.html'}")


@app.command(epilog="Example: imgclass cv photos/ --method hog+svm --folds 5 --out runs/photos-cv")
def cv(
    data: Annotated[str, typer.Argument(metavar="DATA", help=LABELLED_HELP)],
    method: Annotated[str, typer.Option("--method", "-m", help="Method spec (see 'imgclass methods').")] = "hog+svm",
    folds: Annotated[int, typer.Option(help="Number of folds.")] = 5,
    repeats: Annotated[int, typer.Option(help="Repeat the k-fold split this many times with different shuffles.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed for the folds and the estimators.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Keep every fold, cv.json and oof.csv here; running again with the same --out resumes.")] = None,
    task: TaskOpt = None,
    jobs: JobsOpt = None,
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
                 balance=balance, log=err)
    if json_out:
        print_json(res.to_dict())
        return
    from rich.table import Table

    keys = [k for k in api.headline_metrics(res.task) if k in res.summary]
    t = Table(title=f"{method}: {folds}-fold cross-validation" + (f" x {repeats}" if repeats > 1 else ""),
              title_justify="left")
    t.add_column("metric")
    t.add_column("mean ± std", justify="right")
    t.add_column("per fold", justify="left")
    for k in keys:
        s = res.summary[k]
        t.add_row(k, f"{s['mean']:.4f} ± {s['std']:.4f}", " ".join(f"{f['metrics'][k]:.3f}" for f in res.folds))
    console().print(t)
    if out is not None:
        console().print(f"out-of-fold probabilities: {Path(out) / 'oof.csv'}")


@app.command(epilog="Example: imgclass compare photos/ --methods hog+svm,lbp+rf,pixels+knn,hog+logreg")
def compare(
    data: Annotated[str, typer.Argument(metavar="DATA", help=LABELLED_HELP)],
    methods: Annotated[str, typer.Option("--methods", "-m", help="Method specs separated by commas, e.g. hog+svm,hog,color_hist+rf,pixels+knn.")] = "hog+svm,lbp+rf,pixels+knn,hog+logreg",
    val_split: Annotated[float, typer.Option(help=VAL_SPLIT_HELP)] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for the split and the estimators.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Keep split.json, leaderboard.json and every bundle here (a new or empty folder).")] = None,
    overwrite: OverwriteOpt = False,
    task: TaskOpt = None,
    split: SplitOpt = None,
    jobs: JobsOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the leaderboard as JSON.")] = False,
    size: SizeOpt = None, resize: ResizeOpt = "squash", grayscale: GrayOpt = False, denoise: DenoiseOpt = "none",
    equalize: EqualizeOpt = "none",
):
    """Train several methods on the same split; print a leaderboard, best first."""
    from .. import api

    rows = api.compare(data, api.split_methods(methods), val_split=val_split, seed=seed, task=task,
                       split_file=str(split) if split else None, n_jobs=jobs, out=out, overwrite=overwrite,
                       preprocess=preprocess(size, resize, grayscale, denoise, equalize), log=err)
    if json_out:
        print_json([{k: v for k, v in r.items() if k != "metrics"} for r in rows])
        return
    from rich.table import Table

    t = Table(title="leaderboard (validation)", title_justify="left")
    for c in ("#", "method", "accuracy", "macro-F1", "fit s", "predict img/s", "size"):
        t.add_column(c, justify="left" if c == "method" else "right")
    for i, r in enumerate(rows, 1):
        t.add_row(str(i), r["method"], f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}", f"{r['fit_s']:.1f}",
                  f"{r['predict_ips']:,.0f}", human_size(r["size_bytes"]))
    console().print(t)


@app.command(epilog="Example: imgclass robustness runs/photos/model test_photos/ --out runs/photos/robustness")
def robustness(
    model: Annotated[str, typer.Argument(metavar="MODEL", help=MODEL_HELP)],
    data: Annotated[str, typer.Argument(metavar="DATA", help=LABELLED_HELP)],
    corruptions: Annotated[str | None, typer.Option(help="Comma-separated subset (default: all 9).")] = None,
    severities: Annotated[str, typer.Option(help="Comma-separated severities, 1 to 5.")] = "1,2,3,4,5",
    max_images: Annotated[int | None, typer.Option(help="Use a seeded sample of at most this many images.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write robustness.json and robustness.png here.")] = None,
    jobs: JobsOpt = None,
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
        print_json(res.to_dict())
        return
    from rich.table import Table

    t = Table(title=f"accuracy under corruption ({res.n} images; clean {res.clean_accuracy:.4f})", title_justify="left")
    t.add_column("corruption")
    for v in res.severities:
        t.add_column(f"s{v}", justify="right")
    t.add_column("mean", justify="right")
    for name, accs in res.table.items():
        t.add_row(name, *[f"{a:.3f}" for a in accs], f"{sum(accs) / len(accs):.3f}")
    con = console()
    con.print(t)
    con.print(f"mean corruption accuracy {res.mean_corruption_accuracy:.4f} = {res.relative:.3f} of clean")
    if out is not None:
        con.print(f"plot: {Path(out) / 'robustness.png'}")
