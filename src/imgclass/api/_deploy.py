"""Deployment: ONNX export, serving, pruning and distillation."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..data import ImageDataset
from ..errors import ConfigError, DataError
from ..limits import SERVE_MAX_PIXELS


def prune(model, data: ImageDataset | str | os.PathLike, *, amount: float = 0.5, structured: bool = False,
          epochs: int = 2, out: str | os.PathLike | None = None, log: Callable[[str], Any] = lambda m: None, **kw):
    """Prune a deep model (bundle path or object) by weight magnitude and fine-tune it on ``data``; returns a
    ``CompressResult`` (``.model``, ``.summary`` with size/speed/accuracy before and after). With ``out``
    writes a run directory with the new bundle and ``compress.json``. See ``imgclass.deploy.compress.prune``."""
    from ..deploy.compress import prune as _prune

    return _prune(model, data, amount=amount, structured=structured, epochs=epochs, out=out, log=log, **kw)


def distill(teacher, data: ImageDataset | str | os.PathLike, *, student: str = "smallcnn", temperature: float = 4.0,
            alpha: float = 0.5, epochs: int | None = None, out: str | os.PathLike | None = None,
            log: Callable[[str], Any] = lambda m: None, **kw):
    """Train ``student`` on ``data`` with the soft predictions of ``teacher`` (any bundle path or model);
    returns a ``CompressResult`` (teacher vs student). See ``imgclass.deploy.compress.distill``."""
    from ..deploy.compress import distill as _distill

    return _distill(teacher, data, student=student, temperature=temperature, alpha=alpha, epochs=epochs, out=out,
                    log=log, **kw)


def export(model: str | os.PathLike, *, format: str = "onnx", quantize: str | None = None, opset: int = 17,
           check: bool = False, calibration: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
           log: Callable[[str], Any] = lambda m: None) -> dict[str, Any]:
    """Export a bundle to ONNX with its pre-processing, labels, thresholds and calibration inside; returns a
    summary (file, size, opset, and with ``check`` the largest probability difference from the bundle)."""
    from ..deploy import export as _export

    if format.lower() != "onnx":
        raise ConfigError(f"--format {format}: only onnx is supported")
    if not (Path(model) / "model.json").exists():
        raise DataError(f"{model}: not a model bundle (no model.json); pass runs/NAME/model")
    return _export(model, out=out, quantize_mode=quantize, opset=opset, check=check, calibration=calibration,
                   log=log)


def serve(model: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          api_key: str | None = None, max_upload_mb: float = 20.0, max_pixels: int = SERVE_MAX_PIXELS,
          decode_memory_mb: float = 512.0, max_batch: int = 32, batch_wait_ms: float = 5.0,
          model_threads: int | None = None, runtime: str = "auto", log_level: str = "info", access_log: bool = True,
          say: Callable[[str], Any] = print, warn: Callable[[str], Any] = lambda m: None) -> None:
    """Serve ``model`` (a bundle folder or ``imagenet:NAME``) over HTTP with uvicorn until interrupted."""
    from ..serve.run import run

    run(os.fspath(model), host=host, port=port, workers=workers, api_key=api_key, max_upload_mb=max_upload_mb,
        max_pixels=max_pixels, decode_memory_mb=decode_memory_mb, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
        model_threads=model_threads, runtime=runtime, log_level=log_level, access_log=access_log, say=say, warn=warn)
