"""``imgclass serve``: Typer command, thin over ``imgclass.serve`` and uvicorn."""

from __future__ import annotations

from typing import Annotated

import typer

from .app import MAX_PIXELS_HELP, _err, app


def _url(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def _check_port(host: str, port: int) -> None:
    """Fail with one line (exit 2) when the address is taken, instead of a uvicorn traceback."""
    import socket

    from ..errors import ConfigError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                              "choose another --port") from None


def _multiprocess_metrics_dir() -> str | None:
    """Turn on prometheus_client's multiprocess mode for ``--workers N``, so a scrape of any worker reports
    them all: a fresh folder of our own (returned, removed at exit), or the user's PROMETHEUS_MULTIPROC_DIR."""
    import os
    import tempfile

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    folder = tempfile.mkdtemp(prefix="imgclass-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    return folder


@app.command(epilog="Example: imgclass serve runs/photos/model --port 8000 --api-key \"$KEY\"   (then open the printed URL)")
def serve(
    model: Annotated[str, typer.Argument(metavar="MODEL", help="Model bundle folder (runs/NAME/model) or imagenet:lite0.")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every interface; then set --api-key).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(help="Server processes, each with its own copy of the model.")] = 1,
    api_key: Annotated[str | None, typer.Option(envvar="IMGCLASS_API_KEY", help="Require this key on /v1/* and /metrics (X-API-Key or Authorization: Bearer). Also read from IMGCLASS_API_KEY.")] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest image upload accepted, in MB (bigger: 413).")] = 20.0,
    max_pixels: Annotated[int, typer.Option(help=MAX_PIXELS_HELP + " Bigger: 422. Smaller than the CLI's 89,478,485: a server decodes what strangers send.")] = 40_000_000,
    decode_memory_mb: Annotated[float, typer.Option(help="Memory for decoded images in flight per worker, in MB; uploads beyond it wait, then get 503 + Retry-After.")] = 512.0,
    max_batch: Annotated[int, typer.Option(help="Most images in one model call (micro-batch).")] = 32,
    batch_wait_ms: Annotated[float, typer.Option(help="How long a micro-batch waits for more images, in ms.")] = 5.0,
    model_threads: Annotated[int | None, typer.Option(help="Micro-batches run at once per worker, each on one core (default: cores / workers).")] = None,
    runtime: Annotated[str, typer.Option(help="auto (ONNX Runtime when the bundle has an up-to-date model.onnx), torch or onnx.")] = "auto",
    log_level: Annotated[str, typer.Option(help="uvicorn log level: critical, error, warning, info, debug.")] = "info",
    access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request (uvicorn access log).")] = True,
):
    """Serve a model over HTTP: REST API (/v1/predict, /v1/predict/batch, /v1/explain, /v1/model), /metrics and a web page."""
    import json
    import os

    from ..errors import ConfigError

    if workers < 1:
        raise ConfigError(f"--workers {workers}: give at least 1")
    if not 0 < max_upload_mb <= 2048:
        raise ConfigError(f"--max-upload-mb {max_upload_mb}: give a size in MB between 0 and 2048")
    if max_pixels < 1:
        raise ConfigError(f"--max-pixels {max_pixels}: give a positive number of pixels")
    if not 16 <= decode_memory_mb <= 1_048_576:
        raise ConfigError(f"--decode-memory-mb {decode_memory_mb}: give a size in MB of at least 16")
    if not 1 <= port <= 65535:
        raise ConfigError(f"--port {port}: give a port between 1 and 65535")
    if log_level not in ("critical", "error", "warning", "info", "debug", "trace"):
        raise ConfigError(f"--log-level {log_level}: choose critical, error, warning, info or debug")
    cores = os.cpu_count() or 1
    model_threads = max(1, cores // workers) if model_threads is None else model_threads
    if model_threads < 1:
        raise ConfigError(f"--model-threads {model_threads}: give at least 1")
    cfg = {"api_key": api_key, "max_upload_bytes": int(max_upload_mb * 2**20), "max_pixels": max_pixels,
           "max_batch": max_batch, "batch_wait_ms": batch_wait_ms, "model_threads": model_threads, "runtime": runtime,
           "decode_memory_bytes": int(decode_memory_mb * 2**20)}
    if not model.startswith("imagenet:"):
        from ..models import read_meta

        meta = read_meta(model)  # a bad MODEL fails here, in one line
        model = os.path.abspath(model)
        what = f"{meta.get('method')} ({meta.get('task')}, {len(meta.get('classes') or [])} classes)"
    else:
        what = model
    _check_port(host, port)
    os.environ.setdefault("IMGCLASS_PROGRESS", "0")  # no progress bars per request
    # one ONNX Runtime thread per model call, --model-threads calls at once: the layout of offline
    # prediction (one single-threaded process per core), which also holds up best on a busy machine
    os.environ.setdefault("IMGCLASS_ORT_THREADS", "1")

    import uvicorn

    metrics_dir = None
    if workers == 1:
        from ..serve import create_app

        target = create_app(model, **cfg)  # loads the model now: errors end here with exit 2
        kw = {}
    else:
        metrics_dir = _multiprocess_metrics_dir()  # before prometheus_client is imported anywhere
        from ..serve import ENV_CONFIG

        os.environ[ENV_CONFIG] = json.dumps({"model": model, **cfg})
        target, kw = "imgclass.serve.app:app_from_env", {"factory": True, "workers": workers}
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        _err(f"warning: listening on {host} without --api-key: anyone who can reach this port can use the model")
    typer.echo(f"serving {what} at {_url(host, port)}  (API docs {_url(host, port)}docs; Ctrl-C stops)")
    try:
        uvicorn.run(target, host=host, port=port, log_level=log_level, access_log=access_log,
                    timeout_graceful_shutdown=10, **kw)
    finally:
        if metrics_dir is not None:
            import shutil

            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
