"""``imgclass export``: Typer command, thin over ``imgclass.deploy``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import _console, _err, _print_json, app


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
    from ..deploy import export as _export
    from ..errors import ConfigError, DataError

    if format.lower() != "onnx":
        raise ConfigError(f"--format {format}: only onnx is supported")
    if not (model / "model.json").exists():
        raise DataError(f"{model}: not a model bundle (no model.json); pass runs/NAME/model")
    s = _export(model, out=out, quantize_mode=quantize, opset=opset, check=check, calibration=calibration, log=_err)
    if json_out:
        _print_json(s)
        return
    con = _console()
    size = s["bytes"] / 1e6
    con.print(f"exported {s['file']} ({size:.1f} MB" + (f", {s['quantize']} from {s['fp32_bytes'] / 1e6:.1f} MB fp32" if s.get("quantize") else "")
              + f", opset {s['opset']})")
    if "check" in s:
        c = s["check"]
        verdict = ("OK" if c["max_abs_diff"] <= 1e-4 else "differs") if c["fp32"] else f"top-1 agreement {c['top1_agreement']:.4f}"
        con.print(f"check on {c['images']} images: max abs probability difference {c['max_abs_diff']:.2e} ({verdict})")
    con.print(f"predict with it: imgclass predict {model} IMAGES... (--runtime onnx)")
