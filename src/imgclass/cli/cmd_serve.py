"""``imgclass serve``: a model over HTTP (REST API, metrics, a web page) with uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from ._options import SERVE_MAX_PIXELS, ServeMaxPixelsOpt
from ._output import err
from .app import app


@app.command(epilog="Example: imgclass serve runs/photos/model --port 8000 --api-key \"$KEY\"   (then open the printed URL)")
def serve(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model bundle folder (runs/NAME/model) or imagenet:lite0.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface; then set --api-key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes, each with its own copy of the model.")] = 1,
    api_key: Annotated[str | None, typer.Option(envvar="IMGCLASS_API_KEY", help="Require this key on /v1/* and /metrics (X-API-Key or Authorization: Bearer). Also read from IMGCLASS_API_KEY.")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest image upload accepted, in MB (bigger: 413).")] = 20.0,
    max_pixels: ServeMaxPixelsOpt = SERVE_MAX_PIXELS,
    decode_memory_mb: Annotated[float, typer.Option(help="Memory for decoded images in flight per worker, in MB; uploads beyond it wait, then get 503 + Retry-After.")] = 512.0,
    max_batch: Annotated[int, typer.Option(help="Most images in one model call (micro-batch).")] = 32,
    batch_wait_ms: Annotated[float, typer.Option(help="How long a micro-batch waits for more images, in ms.")] = 5.0,
    model_threads: Annotated[int | None, typer.Option(help="Micro-batches run at once per worker, each on one core (default: cores / workers).")] = None,
    runtime: Annotated[str, typer.Option(help="auto (ONNX Runtime when the bundle has an up-to-date model.onnx), torch or onnx.")] = "auto",
    log_level: Annotated[str, typer.Option(help="uvicorn log level: critical, error, warning, info, debug.")] = "info",
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request (uvicorn access log).")] = True,
):
    """Serve a model over HTTP: REST API (/v1/predict, /v1/predict/batch, /v1/explain, /v1/model), /metrics and a web page."""
    from .. import api

    api.serve(model, host=host, port=port, workers=workers, api_key=api_key, max_upload_mb=max_upload_mb,
              max_pixels=max_pixels, decode_memory_mb=decode_memory_mb, max_batch=max_batch,
              batch_wait_ms=batch_wait_ms, model_threads=model_threads, runtime=runtime, log_level=log_level,
              access_log=access_log, say=typer.echo, warn=err)
