"""Running the server: check the options, load the model once, and hand the app to uvicorn (one process,
or ``workers`` processes that each build their app from the configuration in the environment)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

from ..errors import ConfigError
from ..limits import SERVE_MAX_PIXELS

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


def url(host: str, port: int) -> str:
    """The address a local browser opens for ``host:port``."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/"


def check_port(host: str, port: int) -> None:
    """Fail with one line (exit 2) when the address is taken, instead of a uvicorn traceback."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there ({exc.strerror or exc}); "
                              "choose another --port") from None


def _multiprocess_metrics_dir() -> str | None:
    """Turn on prometheus_client's multiprocess mode for ``workers > 1``, so a scrape of any worker reports
    them all: a fresh folder of our own (returned, removed at exit), or the user's PROMETHEUS_MULTIPROC_DIR."""
    import tempfile

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return None
    folder = tempfile.mkdtemp(prefix="imgclass-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    return folder


def server_config(*, workers: int, api_key: str | None, max_upload_mb: float, max_pixels: int,
                  decode_memory_mb: float, max_batch: int, batch_wait_ms: float, model_threads: int | None,
                  runtime: str, port: int, log_level: str) -> dict[str, Any]:
    """The ``create_app`` options for these server settings; a bad setting is refused here in one line."""
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
    if log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level {log_level}: choose critical, error, warning, info or debug")
    cores = os.cpu_count() or 1
    model_threads = max(1, cores // workers) if model_threads is None else model_threads
    if model_threads < 1:
        raise ConfigError(f"--model-threads {model_threads}: give at least 1")
    return {"api_key": api_key, "max_upload_bytes": int(max_upload_mb * 2**20), "max_pixels": max_pixels,
            "max_batch": max_batch, "batch_wait_ms": batch_wait_ms, "model_threads": model_threads,
            "runtime": runtime, "decode_memory_bytes": int(decode_memory_mb * 2**20)}


def run(model: str, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1, api_key: str | None = None,
        max_upload_mb: float = 20.0, max_pixels: int = SERVE_MAX_PIXELS, decode_memory_mb: float = 512.0,
        max_batch: int = 32, batch_wait_ms: float = 5.0, model_threads: int | None = None, runtime: str = "auto",
        log_level: str = "info", access_log: bool = True, say: Callable[[str], Any] = print,
        warn: Callable[[str], Any] = lambda m: None) -> None:
    """Serve ``model`` (a bundle folder or ``imagenet:NAME``) with uvicorn until interrupted."""
    cfg = server_config(workers=workers, api_key=api_key, max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                        decode_memory_mb=decode_memory_mb, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                        model_threads=model_threads, runtime=runtime, port=port, log_level=log_level)
    if not model.startswith("imagenet:"):
        from ..models import read_meta

        meta = read_meta(model)  # a bad MODEL fails here, in one line
        model = os.path.abspath(model)
        what = f"{meta.get('method')} ({meta.get('task')}, {len(meta.get('classes') or [])} classes)"
    else:
        what = model
    check_port(host, port)
    os.environ.setdefault("IMGCLASS_PROGRESS", "0")  # no progress bars per request
    # one ONNX Runtime thread per model call, --model-threads calls at once: the layout of offline
    # prediction (one single-threaded process per core), which also holds up best on a busy machine
    os.environ.setdefault("IMGCLASS_ORT_THREADS", "1")

    import uvicorn

    metrics_dir = None
    if workers == 1:
        from .app import create_app

        target = create_app(model, **cfg)  # loads the model now: errors end here with exit 2
        kw: dict[str, Any] = {}
    else:
        metrics_dir = _multiprocess_metrics_dir()  # before prometheus_client is imported anywhere
        from .app import ENV_CONFIG

        os.environ[ENV_CONFIG] = json.dumps({"model": model, **cfg})
        target, kw = "imgclass.serve.app:app_from_env", {"factory": True, "workers": workers}
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        warn(f"warning: listening on {host} without --api-key: anyone who can reach this port can use the model")
    say(f"serving {what} at {url(host, port)}  (API docs {url(host, port)}docs; Ctrl-C stops)")
    try:
        uvicorn.run(target, host=host, port=port, log_level=log_level, access_log=access_log,
                    timeout_graceful_shutdown=10, **kw)
    finally:
        if metrics_dir is not None:
            import shutil

            os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
            shutil.rmtree(metrics_dir, ignore_errors=True)


__all__ = ["check_port", "run", "server_config", "url"]
