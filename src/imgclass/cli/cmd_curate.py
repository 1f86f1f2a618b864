"""``imgclass curate``: find the images that hurt a dataset (quality, duplicates, leakage, outliers, label issues)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import DEFAULT_MAX_PIXELS, JobsOpt, MaxPixelsOpt
from ._output import console, err, notes, print_json, warn_skipped
from .app import app

_PANEL = "Detectors"
_ACTIONS = "Actions (your files are never modified)"


def _types(text: str | None, option: str) -> tuple[str, ...] | None:
    if text is None:
        return None
    return tuple(t.strip().replace("-", "_") for t in text.split(",") if t.strip())


@app.command(epilog="Example: imgclass curate photos/ --out curation/ --export-clean clean.csv "
                    "(then: imgclass train photos/ --exclude excluded.csv)")
def curate(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Folder, CSV or JSONL (with or without labels).")],
    model: Annotated[str, typer.Option("--model", "-m", help="FEATURES+CLASSIFIER method spec: its features find near-duplicates and outliers, its classifier gives out-of-fold probabilities for label issues.")] = "lite0+logreg",
    oof: Annotated[Path | None, typer.Option(help="oof.csv from 'imgclass cv' (e.g. of a fine-tuned model): use these out-of-fold probabilities for label issues.")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write report.html, one CSV per issue type, stats.csv and summary.json here (default runs/<DATA>-curate).")] = None,
    checks: Annotated[str, typer.Option(help="Detector families to run, comma-separated: quality, duplicates, outliers, labels.", rich_help_panel=_PANEL)] = "quality,duplicates,outliers,labels",
    folds: Annotated[int, typer.Option(help="Folds for the out-of-fold probabilities.", rich_help_panel=_PANEL)] = 5,
    blur_z: Annotated[float, typer.Option(help="Blurry: blur score this many scaled MADs below the dataset's median.", rich_help_panel=_PANEL)] = 3.0,
    outlier_method: Annotated[str, typer.Option(help="auto (layers for EfficientNet-Lite features, else lof), layers (texture, mid-level activations and layout of several backbone layers, combined), lof or iforest (on the embeddings, overall and per class).", rich_help_panel=_PANEL)] = "auto",
    outlier_z: Annotated[float | None, typer.Option(help="Report images whose outlier score is above this (default: 3.25 for layers, 4 for lof and iforest).", rich_help_panel=_PANEL)] = None,
    min_detail: Annotated[float, typer.Option(help="Near-duplicates: fine-detail correlation a pair needs (0-1; lower finds more, with more false pairs).", rich_help_panel=_PANEL)] = 0.6,
    export_clean: Annotated[Path | None, typer.Option(help="Write the kept items to this CSV (path,label[,split]) and every excluded item with its reason to excluded.csv next to it.", rich_help_panel=_ACTIONS)] = None,
    exclude_types: Annotated[str | None, typer.Option(help="What --export-clean excludes, comma-separated (default blurry,duplicates,leakage,conflicting_labels,outliers,label_issues; also dark, bright, low_contrast, odd_size, grayscale).", rich_help_panel=_ACTIONS)] = None,
    suggest_labels: Annotated[Path | None, typer.Option(help="Write suggested labels for likely label errors to this CSV.", rich_help_panel=_ACTIONS)] = None,
    seed: Annotated[int, typer.Option(help="Seed for folds and outlier models.")] = 0,
    jobs: JobsOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    json_out: Annotated[bool, typer.Option("--json", help="Print the counts, timings and output files as JSON.")] = False,
):
    """Find blurry, badly exposed, duplicate, leaked, outlier and mislabelled images (report + CSVs)."""
    from .. import api

    types = _types(exclude_types, "--exclude-types")
    with api.new_run_dir(data, "curate", out) as out:
        res, files = api.curate(data, model=model, oof=oof, folds=folds, seed=seed, outlier_method=outlier_method,
                                outlier_z=outlier_z, blur_z=blur_z, min_detail=min_detail,
                                checks=_types(checks, "--checks") or (), n_jobs=jobs, max_pixels=max_pixels, out=out,
                                export_clean=export_clean, exclude_types=types, suggest_labels=suggest_labels,
                                log=err)
    warn_skipped(res.skipped)
    if json_out:
        print_json({**res.to_dict(), "files": files})
        return
    from rich.table import Table

    con = console()
    notes(res.notes)
    t = Table(title=f"curation of {res.dataset.name}: {len(res.dataset)} images", title_justify="left")
    t.add_column("issue")
    t.add_column("items", justify="right")
    t.add_column("worst example")
    for name, rows in res.issues().items():
        ex = ""
        if rows:
            r = rows[0]
            ex = r["path"] + (f" ≈ {r['duplicate']}" if "duplicate" in r else "") + \
                (f" (labelled {r['label']}, suggested {r['suggested']})" if "suggested" in r else "")
        t.add_row(name.replace("_", " "), str(len(rows)), ex)
    con.print(t)
    if export_clean is not None:
        n_ex = len(res.excluded(types) if types else res.excluded())
        con.print(f"kept {len(res.dataset) - n_ex - len(res.stats.errors)} items in {files['clean']}; excluded {n_ex} "
                  f"(+{len(res.stats.errors)} unreadable) listed with reasons in {files['excluded']}")
        con.print(f"train without them: imgclass train {data} --exclude {files['excluded']}")
    con.print(f"report: {files['report']}   CSVs: {out}/   ({res.timings.get('total_s', 0):.0f} s)")
