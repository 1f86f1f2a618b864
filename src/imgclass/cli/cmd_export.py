"""``imgclass export``: a model bundle to ONNX, optionally quantised and checked against the bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._output import console, err, print_json
from .app import app


@app.command(epilog="Example: imgclass export runs/cats/model --format onnx --quantize int8 --check")
def export(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Model bundle folder (runs/NAME/model).")],
    format: Annotated[str, typer.Option("--format", help="Export format: onnx.")] = "onnx",
    quantize: Annotated[str | None, typer.Option(help="int8 (static, calibrated on training images) or dynamic (weights only).")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset.")] = 17,
    check: Annotated[bool, typer.Option("--check", help="Compare ONNX Runtime with the model's own path (torch, or features + scikit-learn) on sample images (max abs probability difference; <= 1e-4 expected for fp32).")] = False,
    calibration: Annotated[str | None, typer.Option(help="Images for int8 calibration and --check (folder/CSV; default: the training data recorded in the run).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write the ONNX file here instead of MODEL/model.onnx.")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Export a model bundle to ONNX with its pre-processing, labels, thresholds and calibration inside.

    Deep models and feature pipelines on pixels or a deep backbone (pixels+logreg, lite0+logreg) export;
    HOG, LBP, colour-histogram and other scikit-image/OpenCV features have no ONNX form."""
    from .. import api

    s = api.export(model, format=format, quantize=quantize, opset=opset, check=check, calibration=calibration,
                   out=out, log=err)
    if json_out:
        print_json(s)
        return
    con = console()
    size = s["bytes"] / 1e6
    con.print(f"exported {s['file']} ({size:.1f} MB" + (f", {s['quantize']} from {s['fp32_bytes'] / 1e6:.1f} MB fp32" if s.get("quantize") else "")
              + f", opset {s['opset']})")
    if "check" in s:
        c = s["check"]
        verdict = ("OK" if c["max_abs_diff"] <= 1e-4 else "differs") if c["fp32"] else f"top-1 agreement {c['top1_agreement']:.4f}"
        con.print(f"check on {c['images']} images: max abs probability difference {c['max_abs_diff']:.2e} ({verdict})")
    con.print(f"predict with it: imgclass predict {model} IMAGES... (--runtime onnx)")
