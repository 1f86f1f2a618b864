"""``imgclass predict`` (labels for new images) and ``imgclass explain`` (what the model looked at)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import DEFAULT_MAX_PIXELS, MAX_PIXELS_HELP, MODEL_HELP, TTA_HELP, JobsOpt, MaxPixelsOpt
from ._output import console, err, print_json
from .app import app


@app.command(epilog="Example: imgclass predict runs/photos/model cat.jpg holiday/ --top-k 3")
def predict(
    model: Annotated[str, typer.Argument(metavar="MODEL", help=MODEL_HELP)],
    images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="Image files and/or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option("--top-k", "-k", help="How many classes to show per image.")] = 3,
    jobs: JobsOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    json_out: Annotated[bool, typer.Option("--json", help="Print a JSON list: per image, the decided label(s), the top-k and (hierarchical) the path.")] = False,
    tta: Annotated[str, typer.Option(help=TTA_HELP)] = "none",
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
        c = api.predict_to_csv(m, ds, out, top_k=top_k, tta=tta, log=err)
        if not api.is_main_process():  # under torchrun rank 0 reports
            return
        if json_out:
            print_json({"out": str(out), **c})
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
        print_json([{"path": p, **(r.to_dict() if r is not None else {"label": None, "error": errors.get(p, "unreadable")})}
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
        err(f"{len(errors)} of {len(names)} images could not be read")


def _prediction_line(r, task: str, top_k: int) -> str:
    """``cat 94.0%  fox 4.0%`` (single-label: the decision, then the other top-k classes); multi-label and
    hierarchical: the decision, then ``| top: ...`` when more than one class is asked for."""
    if task in ("multiclass", "binary"):
        others = [(lab, pr) for lab, pr in r.top if lab != r.label][:max(top_k - 1, 0)]
        return "  ".join([r.text()] + [f"{lab} {pr * 100:.1f}%" for lab, pr in others])
    if top_k <= 1:
        return r.text()
    return r.text() + "   | top: " + ", ".join(f"{lab} {pr * 100:.1f}%" for lab, pr in r.top)


@app.command(epilog="Example: imgclass explain runs/photos/model cat.jpg --method gradcam --out cat-gradcam.png")
def explain(
    model: Annotated[str, typer.Argument(metavar="MODEL", help=MODEL_HELP)],
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
        print_json([e.to_dict() for e in exps])
        return
    con = console()
    for e in exps:
        r, c = e.peak
        con.print(f"{e.target} {e.probability:.1%} · {e.method} · peak at row {r}, column {c} of "
                  f"{e.heatmap.shape[0]}x{e.heatmap.shape[1]} → {e.path}")
