"""The FastAPI app: ``create_app(model)`` → predictions, explanations, model metadata, metrics and a web page.

Endpoints (``/docs`` has the OpenAPI page, served from files shipped with imgclass):

- ``POST /v1/predict``: one image (multipart field ``file``, JSON ``{"image": base64, "top_k": 3}`` or a
  raw ``image/*`` body) → the prediction as ``imgclass predict --json`` prints it, plus the task's
  decision details (multi-label thresholds, the binary threshold).
- ``POST /v1/predict/batch``: several images (multipart ``files`` or JSON ``{"images": [...]}``) →
  ``results``, one per image, each a prediction or that image's own ``error``.
- ``POST /v1/explain``: one image → a PNG heatmap overlay (Grad-CAM for deep models, occlusion for
  classical pipelines); ``?target=CLASS&method=...``.
- ``GET /v1/model``, ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /`` (the page).

Every error is ``{"error": {"code": ..., "message": ...}}``, and every error a client can cause is a 4xx;
a 503 with ``Retry-After`` means the server shed the request to stay within its memory budgets. With
``api_key``, ``/v1/*``, ``/metrics``, ``/docs`` and ``/openapi.json`` need it (``X-API-Key: KEY`` or
``Authorization: Bearer KEY``); the page and ``/healthz`` stay open.

Concurrent predictions are micro-batched (``batching.MicroBatcher``); each upload is checked from its
header, then decoded in a thread pool once its pixels fit the decode memory budget, so the model thread
only ever sees valid RGB images and memory stays bounded however many arrive.
"""

from __future__ import annotations

import json
import os
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.security import APIKeyHeader, HTTPBearer

from ..errors import ConfigError
from .docs import add_docs
from .guard import GuardMiddleware
from .handlers import install_error_handlers
from .limits import (
    BODY_BUDGET_BYTES,
    BUDGET_WAIT_S,
    DECODE_BUDGET_BYTES,
    SERVE_MAX_PIXELS,
    return_large_blocks_to_the_os,
)
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .routes import add_explain_route, add_predict_routes
from .state import ServeState, disable_embedding_cache
from .uploads import ApiError

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8",
                "docs.js": "text/javascript; charset=utf-8"}
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"}

#: environment variable holding the JSON config of ``app_from_env`` (``imgclass serve --workers N``)
ENV_CONFIG = "IMGCLASS_SERVE_CONFIG"


def _check_options(max_upload_bytes: int, max_batch: int, batch_wait_ms: float, model_threads: int,
                   max_pixels: int | None, decode_memory_bytes: int, body_memory_bytes: int) -> None:
    """Refuse impossible settings with the CLI option's name."""
    if max_upload_bytes < 1:
        raise ConfigError("--max-upload-mb must be positive")
    if max_batch < 1:
        raise ConfigError("--max-batch must be at least 1")
    if batch_wait_ms < 0:
        raise ConfigError("--batch-wait-ms cannot be negative")
    if model_threads < 1:
        raise ConfigError("--model-threads must be at least 1")
    if max_pixels is not None and max_pixels < 1:
        raise ConfigError("--max-pixels must be positive")
    if decode_memory_bytes < 1 or body_memory_bytes < 1:
        raise ConfigError("--decode-memory-mb and the body budget must be positive")


def _lifespan(state: ServeState, warmup: bool):
    @asynccontextmanager
    async def lifespan(app):
        await state.batcher.start()
        if warmup:
            await state.warmup()
        try:
            yield
        finally:
            await state.batcher.stop()
            state.close()

    return lifespan


def _auth(state: ServeState) -> list:
    """The dependency list of protected routes (the two security schemes also document the key in OpenAPI)."""
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The server's --api-key")
    bearer = HTTPBearer(auto_error=False, description="The server's --api-key as a bearer token")

    async def require_key(request: Request, _k: str | None = Depends(api_key_header), _b=Depends(bearer)):
        state.check_key(request.headers)

    return [Depends(require_key)]


def _add_ops_routes(app: FastAPI, state: ServeState, protected: list) -> None:
    """``/v1/model``, ``/healthz`` and ``/metrics``."""

    @app.get("/v1/model", dependencies=protected, tags=["model"])
    async def model_info():
        """What is served: method, task, classes, thresholds, taxonomy, input size, versions, limits."""
        return state.info

    @app.get("/healthz", tags=["ops"])
    async def healthz():
        """Liveness: 200 while the server answers (open without the API key)."""
        return {"status": "ok", "auth_required": state.api_key is not None}

    @app.get("/metrics", dependencies=protected, tags=["ops"], response_class=Response,
             responses={200: {"content": {"text/plain": {}}}})
    async def metrics():
        """Prometheus text format: requests by endpoint, method and status, latency and batch-size histograms."""
        state.metrics.queue.set(state.batcher.depth)
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


def _add_page_routes(app: FastAPI) -> None:
    """The web page and its two files; nothing else on disk is reachable."""

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC_FILES:
            raise ApiError(404, "not_found", f"/static/{name[:200]} does not exist")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name], headers=PAGE_HEADERS)


def create_app(model, api_key: str | None = None, max_upload_bytes: int = 20 * 2**20, *,
               max_pixels: int | None = SERVE_MAX_PIXELS, max_batch: int = 32, batch_wait_ms: float = 5.0,
               max_batch_bytes: int | None = None, max_batch_images: int = 64, max_queue: int = 1024,
               decode_threads: int | None = None, model_threads: int = 1, runtime: str = "auto",
               decode_memory_bytes: int = DECODE_BUDGET_BYTES, body_memory_bytes: int = BODY_BUDGET_BYTES,
               budget_wait_s: float = BUDGET_WAIT_S, warmup: bool = True):
    """A FastAPI app serving ``model``: a bundle folder (``runs/NAME/model``), ``imagenet:lite0`` or a
    fitted model object.

    ``api_key`` protects ``/v1/*``, ``/metrics`` and the API docs. ``max_upload_bytes`` bounds one image,
    ``max_batch_bytes`` (default 4 × ``max_upload_bytes``) a whole batch request of at most
    ``max_batch_images`` images; ``max_pixels`` (default 40 MP, less than the CLI's) refuses decompression
    bombs from the header. ``decode_memory_bytes`` bounds the decoded images in flight and
    ``body_memory_bytes`` the request bodies being received; a request that cannot get its share within
    ``budget_wait_s`` gets 503 + ``Retry-After``. Up to ``max_batch`` images that arrive within
    ``batch_wait_ms`` share one model call; ``model_threads`` such calls may run at once (``imgclass
    serve`` uses one per core, each with one ONNX Runtime thread). ``runtime`` as in
    ``imgclass.deploy.load.resolve_model``. A bundle path is loaded here, so a bad one fails at once.

    The served model is set to predict in this process (``n_jobs=1``) without the on-disk embedding
    cache; a model object passed in is changed that way too.
    """
    from .. import __version__
    from ..deploy.load import resolve_model

    _check_options(max_upload_bytes, max_batch, batch_wait_ms, model_threads, max_pixels, decode_memory_bytes,
                   body_memory_bytes)
    return_large_blocks_to_the_os()  # freed pixels go back to the OS, so the budget bounds RSS too
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    m = resolve_model(model, n_jobs=1, runtime=runtime)
    disable_embedding_cache(m)
    state = ServeState(m, source=source, api_key=api_key, max_upload_bytes=max_upload_bytes,
                       max_batch_bytes=max_batch_bytes or 4 * max_upload_bytes, max_pixels=max_pixels,
                       max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_batch_images=max_batch_images,
                       max_queue=max_queue, decode_threads=decode_threads, model_threads=model_threads,
                       decode_memory_bytes=decode_memory_bytes, body_memory_bytes=body_memory_bytes,
                       budget_wait_s=budget_wait_s)
    app = FastAPI(title="imgclass", version=__version__, lifespan=_lifespan(state, warmup),
                  docs_url=None, redoc_url=None, openapi_url=None,
                  description=f"Image classification with `{state.info['method']}` ({state.info['task']}, "
                              f"{state.info['n_classes']} classes). Every error is "
                              '`{"error": {"code": ..., "message": ...}}`.')
    app.state.serve = state
    install_error_handlers(app)
    protected = _auth(state)
    add_predict_routes(app, state, protected)
    add_explain_route(app, state, protected)
    _add_ops_routes(app, state, protected)
    add_docs(app, protected)
    _add_page_routes(app)
    # outside FastAPI's exception handlers, inside Starlette's last-resort error middleware
    app.add_middleware(GuardMiddleware, state=state)
    return app


def app_from_env():
    """The uvicorn factory for ``imgclass serve --workers N``: every worker process builds its app from
    the JSON in ``IMGCLASS_SERVE_CONFIG`` (set by the CLI)."""
    raw = os.environ.get(ENV_CONFIG)
    if not raw:
        raise ConfigError(f"{ENV_CONFIG} is not set; start the server with imgclass serve MODEL")
    cfg = json.loads(raw)
    model = cfg.pop("model")
    return create_app(model, **cfg)


__all__ = ["ENV_CONFIG", "GuardMiddleware", "ServeState", "app_from_env", "create_app"]
