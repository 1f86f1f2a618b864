"""The FastAPI app: ``create_app(model)`` → predictions, explanations, model metadata, metrics and a web page.

Endpoints (``/docs`` has the OpenAPI page):

- ``POST /v1/predict``: one image (multipart field ``file``, JSON ``{"image": base64, "top_k": 3}`` or a
  raw ``image/*`` body) → the prediction as ``imgclass predict --json`` prints it, plus the task's
  decision details (multi-label thresholds, the binary threshold).
- ``POST /v1/predict/batch``: several images (multipart ``files`` or JSON ``{"images": [...]}``) →
  ``results``, one per image, each a prediction or that image's own ``error``.
- ``POST /v1/explain``: one image → a PNG heatmap overlay (Grad-CAM for deep models, occlusion for
  classical pipelines); ``?target=CLASS&method=...``.
- ``GET /v1/model``, ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /`` (the page).

Every error is ``{"error": {"code": ..., "message": ...}}``. With ``api_key``, ``/v1/*`` and ``/metrics``
need it (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``); the page and ``/healthz`` stay open.

Concurrent predictions are micro-batched (``batching.MicroBatcher``); each upload is checked and decoded
in a thread pool first, so the model thread only ever sees valid RGB images.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..data.decode import DEFAULT_MAX_PIXELS
from ..errors import ConfigError, ImgclassError
from .batching import MicroBatcher, QueueFull
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .metrics import ServerMetrics
from .uploads import ApiError, decode_upload, item_error, read_body, too_many

log = logging.getLogger("imgclass.serve")

STATIC = Path(__file__).resolve().parent / "static"
STATIC_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

#: environment variable holding the JSON config of ``app_from_env`` (``imgclass serve --workers N``)
ENV_CONFIG = "IMGCLASS_SERVE_CONFIG"

DEFAULT_TOP_K = 3
SMALL_BODY = 64 * 1024  # any request that carries no image
MULTIPART_SLACK = 64 * 1024  # multipart headers and boundaries around the file(s)

#: paths reported under their own name in the metrics (anything else is "other")
KNOWN_PATHS = ("/", "/healthz", "/metrics", "/v1/model", "/v1/predict", "/v1/predict/batch", "/v1/explain",
               "/docs", "/openapi.json", "/static/app.js", "/static/style.css")


def _image_body(description: str, many: bool = False) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for endpoints that read the body themselves (multipart *or* JSON)."""
    field = "files" if many else "file"
    file_schema = {"type": "string", "format": "binary"}
    multipart = {"type": "object", "required": [field],
                 "properties": {field: {"type": "array", "items": file_schema} if many else file_schema,
                                "top_k": {"type": "integer", "minimum": 1}}}
    b64 = {"type": "string", "format": "byte", "description": "base64 of the image file's bytes (a data: URL works too)"}
    js = ({"type": "object", "required": ["images"], "properties": {"images": {"type": "array", "items": b64},
                                                                     "top_k": {"type": "integer", "minimum": 1}}}
          if many else {"type": "object", "required": ["image"],
                        "properties": {"image": b64, "top_k": {"type": "integer", "minimum": 1}}})
    content = {"multipart/form-data": {"schema": multipart}, "application/json": {"schema": js}}
    if not many:
        content["image/*"] = {"schema": file_schema}
    return {"requestBody": {"required": True, "description": description, "content": content}}


_ERRORS = {s: {"description": d, "content": {"application/json": {"example": {"error": {"code": c, "message": "..."}}}}}
           for s, d, c in [(400, "Malformed request", "bad_request"), (401, "Missing or wrong API key", "unauthorized"),
                           (413, "Upload over the size limit", "payload_too_large"),
                           (415, "Not an image (or empty)", "unsupported_media_type"),
                           (422, "Corrupt, truncated or too many pixels", "corrupt_image")]}


def _model_kind(model, source: str | None) -> str:
    if source is not None and not source.startswith("imagenet:"):
        from ..models import read_meta

        try:
            return str(read_meta(source).get("kind"))
        except ImgclassError:
            pass
    return str(getattr(model, "kind", "classical"))


def _disable_embedding_cache(model) -> None:
    """Uploads are never written to the on-disk embedding cache (it would grow with every request)."""
    ex = getattr(model, "extractor", None)
    for part in getattr(ex, "parts", [ex]) if ex is not None else []:
        if getattr(part, "cacheable", False):
            part.cache = False


class ServeState:
    """The model, its batcher and executors, limits and metrics: everything the endpoints share."""

    def __init__(self, model, *, source: str | None, api_key: str | None, max_upload_bytes: int,
                 max_batch_bytes: int, max_pixels: int | None, max_batch: int, batch_wait_ms: float,
                 max_batch_images: int, max_queue: int, decode_threads: int | None, model_threads: int = 1):
        from ..models import decision_of

        self.model, self.source = model, source
        self.api_key = api_key or None
        self.max_upload_bytes, self.max_batch_bytes = int(max_upload_bytes), int(max_batch_bytes)
        self.max_pixels, self.max_batch_images = max_pixels, int(max_batch_images)
        self.decision = decision_of(model)
        size = getattr(getattr(model, "preprocess", None), "size", None)
        self.draft = max(size) if isinstance(size, (tuple, list)) else size  # the same JPEG draft as predict
        self.metrics = ServerMetrics()
        self.metrics.info.set(1, str(getattr(model, "method", "?")), str(model.task_))
        self.batcher = MicroBatcher(self._predict_batch, max_batch=max_batch, wait_s=batch_wait_ms / 1000.0,
                                    max_queue=max_queue, concurrency=model_threads, on_batch=self.metrics.batch)
        self.decoder = ThreadPoolExecutor(max_workers=decode_threads or min(8, (os.cpu_count() or 1) + 2),
                                          thread_name_prefix="imgclass-decode")
        self.explainer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgclass-explain")
        self.explain_kind = _model_kind(model, source)
        self.explain_methods = (["gradcam", "gradcam++", "integrated-gradients", "occlusion"]
                                if self.explain_kind == "deep" else ["occlusion"])
        self._explain_model = None
        self.explains_waiting = 0
        self.info = self._model_info()

    # ------------------------------------------------------------------ limits
    def body_limit(self, path: str) -> int:
        if path in ("/v1/predict", "/v1/explain"):
            return self.max_upload_bytes * 4 // 3 + MULTIPART_SLACK  # room for base64
        if path == "/v1/predict/batch":
            return self.max_batch_bytes * 4 // 3 + MULTIPART_SLACK
        return SMALL_BODY

    def check_key(self, headers) -> None:
        if self.api_key is None:
            return
        got = headers.get("x-api-key")
        if got is None:
            scheme, _, cred = headers.get("authorization", "").partition(" ")
            got = cred.strip() if scheme.lower() == "bearer" else None
        if not got or not hmac.compare_digest(got.encode("utf-8", "replace"), self.api_key.encode("utf-8")):
            raise ApiError(401, "unauthorized", "missing or wrong API key; send it as the X-API-Key header or "
                           "Authorization: Bearer KEY", headers={"WWW-Authenticate": "Bearer"})

    # ------------------------------------------------------------------ model
    def _predict_batch(self, images: list) -> np.ndarray:
        """Runs in the model thread: one ``predict_proba`` for the whole micro-batch."""
        P = np.asarray(self.model.predict_proba(images), dtype=np.float64)
        self.metrics.queue.set(self.batcher.depth)
        return P

    async def decode(self, data: bytes, draft: bool = True):
        """Check and decode an upload in the decode pool; JPEGs are drafted to the model's input size
        exactly as ``imgclass predict`` does (``draft=False``: full size)."""
        loop = asyncio.get_running_loop()
        size = self.draft if draft else None
        try:
            img = await loop.run_in_executor(self.decoder, lambda: decode_upload(
                data, max_bytes=self.max_upload_bytes, max_pixels=self.max_pixels, draft_size=size))
        except ApiError as exc:
            self.metrics.image(exc.code)
            raise
        return img

    async def probabilities(self, img) -> np.ndarray:
        try:
            row = await self.batcher.submit(img)
        except QueueFull as exc:
            self.metrics.image("overloaded")
            raise ApiError(503, "overloaded", f"the server is busy ({exc}); retry shortly",
                           headers={"Retry-After": "1"}) from None
        if np.isnan(row).any():  # decoded fine here, so the model's own reading failed
            self.metrics.image("model_error")
            errs = getattr(self.model, "errors_", None) or [("", "the model could not read the image")]
            raise ApiError(422, "corrupt_image", f"the model could not read the image: {errs[-1][1]}")
        self.metrics.image("ok")
        return row

    def prediction(self, row: np.ndarray, top_k: int, filename: str | None = None) -> dict[str, Any]:
        pred = self.decision.predict(row[None, :], top_k)[0]
        out: dict[str, Any] = {"filename": filename} if filename else {}
        out.update(pred.to_dict())
        out["task"] = self.info["task"]
        for k in ("thresholds", "threshold", "positive"):
            if k in self.info:
                out[k] = self.info[k]
        return out

    def explain_model(self):
        """The model explanations run on: for a bundle, a second copy loaded on first use, so gradients
        (deep models) and occlusion never share state with the serving model (which may be an ONNX
        Runtime one); for a model object, the object itself."""
        if self._explain_model is None:
            if self.source is not None:
                from ..models import load_model

                m = load_model(self.source)
                _disable_embedding_cache(m)
                m.n_jobs = 1
                self._explain_model = m
            else:
                self._explain_model = self.model
        return self._explain_model

    def explain_png(self, img, target: str | None, method: str) -> tuple[bytes, dict[str, str]]:
        from PIL import Image

        from ..evaluation.explain import explain

        exps = explain(self.explain_model(), img, target=target, method=method, max_pixels=None)
        e = exps[0]
        buf = io.BytesIO()
        Image.fromarray(e.overlay()).save(buf, "PNG")
        r, c = e.peak
        headers = {"X-Explain-Target": quote(e.target, safe=""), "X-Explain-Probability": f"{e.probability:.6f}",
                   "X-Explain-Method": e.method, "X-Explain-Peak": f"{r},{c}"}
        return buf.getvalue(), headers

    async def warmup(self) -> None:
        """One prediction before serving: ONNX sessions and exports are ready for the first request."""
        from PIL import Image

        await self.batcher.run([Image.new("RGB", (32, 32), (128, 128, 128))])

    def close(self) -> None:
        self.batcher.close()
        self.decoder.shutdown(wait=False, cancel_futures=True)
        self.explainer.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ metadata
    def _model_info(self) -> dict[str, Any]:
        from .. import __version__

        m, d = self.model, self.decision
        pre = getattr(m, "preprocess", None)
        info: dict[str, Any] = {
            "method": getattr(m, "method", None), "kind": getattr(m, "kind", None), "task": m.task_,
            "classes": list(m.classes_), "n_classes": len(m.classes_), "taxonomy": getattr(m, "taxonomy_", None),
            "input_size": getattr(pre, "size", None), "preprocessing": pre.to_dict() if pre is not None else None,
        }
        if m.task_ == "multilabel":
            th = d.thresholds if d.thresholds is not None else [0.5] * len(m.classes_)
            info["thresholds"] = {c: float(t) for c, t in zip(m.classes_, th)}
        elif m.task_ == "binary":
            info["positive"] = d.positive if d.positive is not None else (m.classes_[-1] if m.classes_ else None)
            info["threshold"] = float(d.threshold) if d.threshold is not None else 0.5
            if d.objective:
                info["threshold_objective"] = d.objective
        elif m.task_ == "hierarchical":
            info["hierarchy"] = d.hierarchy
            info["min_confidence"] = d.min_confidence
        info["metrics"] = (getattr(m, "meta_", None) or {}).get("metrics") or None
        info["explain"] = {"methods": self.explain_methods, "default": self.explain_methods[0]}
        info["version"] = __version__
        if self.source is not None and not self.source.startswith("imagenet:"):
            from ..models import read_meta

            try:
                meta = read_meta(self.source)
                info["trained_with"] = meta.get("versions")
                info["created"] = meta.get("created")
            except ImgclassError:
                pass
        info["limits"] = {"max_upload_bytes": self.max_upload_bytes, "max_batch_bytes": self.max_batch_bytes,
                          "max_pixels": self.max_pixels, "max_batch": self.batcher.max_batch,
                          "max_batch_images": self.max_batch_images, "batch_wait_ms": self.batcher.wait_s * 1000,
                          "model_threads": self.batcher.concurrency}
        info["auth_required"] = self.api_key is not None
        return info


# ---------------------------------------------------------------------------------------------------- ASGI
class _BodyTooLarge(Exception):
    pass


def _error_bytes(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


class GuardMiddleware:
    """Outermost layer: bounds every request body (declared ``Content-Length`` first, then counting the
    bytes as they arrive), turns unexpected exceptions into a JSON 500 without a traceback, and records
    the request in the metrics.

    Hand-written because Starlette and FastAPI only gained a ``max_body_size`` in 2025 releases, newer
    than the versions imgclass supports."""

    def __init__(self, app, state: ServeState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = scope.get("path", "")
        endpoint = path if path in KNOWN_PATHS else "other"
        limit = self.state.body_limit(path)
        status = {"code": 500, "started": False}
        received = 0
        exceeded = False

        async def respond(code: int, err: str, message: str, headers: Sequence[tuple[bytes, bytes]] = ()):
            body = _error_bytes(err, message)
            status.update(code=code, started=True)
            await send({"type": "http.response.start", "status": code,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"x-content-type-options", b"nosniff"), *headers]})
            await send({"type": "http.response.body", "body": body})

        async def guarded_receive():
            nonlocal received, exceeded
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise _BodyTooLarge()
            return msg

        async def guarded_send(msg):
            if exceeded:  # the 413 below replaces whatever the app makes of the interrupted body
                return
            if msg["type"] == "http.response.start":
                status.update(code=msg["status"], started=True)
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-content-type-options", b"nosniff")]}
            await send(msg)

        too_big = f"the request body is over this endpoint's limit of {limit:,} bytes"
        try:
            declared = dict(scope.get("headers") or []).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await respond(413, "payload_too_large", f"{too_big} (Content-Length {int(declared):,}); this server "
                              f"accepts images up to {self.state.max_upload_bytes:,} bytes")
                return
            try:
                await self.app(scope, guarded_receive, guarded_send)
            except _BodyTooLarge:
                pass
            except Exception:
                if exceeded:
                    pass
                elif status["started"]:
                    log.exception("error after the response started: %s %s", scope.get("method"), path)
                    return
                else:
                    log.exception("unexpected error in %s %s", scope.get("method"), path)
                    await respond(500, "internal_error", "the server failed on this request; it is logged there")
                    return
            if exceeded and not status["started"]:
                await respond(413, "payload_too_large", too_big)
        finally:
            self.state.metrics.request(endpoint, scope.get("method", ""), status["code"], time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------------------- the app
def create_app(model, api_key: str | None = None, max_upload_bytes: int = 20 * 2**20, *,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, max_batch: int = 32, batch_wait_ms: float = 5.0,
               max_batch_bytes: int | None = None, max_batch_images: int = 64, max_queue: int = 1024,
               decode_threads: int | None = None, model_threads: int = 1, runtime: str = "auto",
               warmup: bool = True):
    """A FastAPI app serving ``model``: a bundle folder (``runs/NAME/model``), ``imagenet:lite0`` or a
    fitted model object.

    ``api_key`` protects ``/v1/*`` and ``/metrics``. ``max_upload_bytes`` bounds one image,
    ``max_batch_bytes`` (default 4 × ``max_upload_bytes``) a whole batch request of at most
    ``max_batch_images`` images; ``max_pixels`` refuses decompression bombs. Up to ``max_batch`` images
    that arrive within ``batch_wait_ms`` share one model call; ``model_threads`` such calls may run at
    once (``imgclass serve`` uses one per core, each with one ONNX Runtime thread: the layout of offline
    prediction's worker processes). ``runtime`` as in ``imgclass.api.resolve_model``. A bundle path is
    loaded here, so a bad one fails at once.

    The served model is set to predict in this process (``n_jobs=1``) without the on-disk embedding
    cache; a model object passed in is changed that way too.
    """
    from .. import __version__
    from ..api import resolve_model

    if max_upload_bytes < 1:
        raise ConfigError("--max-upload-mb must be positive")
    if max_batch < 1:
        raise ConfigError("--max-batch must be at least 1")
    if batch_wait_ms < 0:
        raise ConfigError("--batch-wait-ms cannot be negative")
    if model_threads < 1:
        raise ConfigError("--model-threads must be at least 1")
    source = os.fspath(model) if isinstance(model, (str, os.PathLike)) else None
    m = resolve_model(model, n_jobs=1, runtime=runtime)
    _disable_embedding_cache(m)
    state = ServeState(m, source=source, api_key=api_key, max_upload_bytes=max_upload_bytes,
                       max_batch_bytes=max_batch_bytes or 4 * max_upload_bytes, max_pixels=max_pixels,
                       max_batch=max_batch, batch_wait_ms=batch_wait_ms, max_batch_images=max_batch_images,
                       max_queue=max_queue, decode_threads=decode_threads, model_threads=model_threads)

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

    app = FastAPI(title="imgclass", version=__version__, lifespan=lifespan,
                  description=f"Image classification with `{state.info['method']}` ({state.info['task']}, "
                              f"{state.info['n_classes']} classes). Every error is "
                              '`{"error": {"code": ..., "message": ...}}`.')
    app.state.serve = state

    # -------------------------------------------------------------- errors
    def error_response(exc: ApiError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        codes = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
        return error_response(ApiError(exc.status_code, codes.get(exc.status_code, "bad_request"), str(exc.detail),
                                       getattr(exc, "headers", None)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        msg = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors())
        return error_response(ApiError(400, "bad_request", msg or "invalid request"))

    # -------------------------------------------------------------- auth
    api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="The server's --api-key")
    bearer = HTTPBearer(auto_error=False, description="The server's --api-key as a bearer token")

    async def require_key(request: Request, _k: str | None = Depends(api_key_header), _b=Depends(bearer)):
        state.check_key(request.headers)

    protected = [Depends(require_key)]

    def top_k_of(opts: dict, query: int | None) -> int:
        return int(opts.get("top_k") or query or DEFAULT_TOP_K)

    # -------------------------------------------------------------- endpoints
    @app.post("/v1/predict", dependencies=protected, tags=["predict"], responses=_ERRORS,
              openapi_extra=_image_body("The image: multipart field `file`, JSON `{\"image\": base64}` or raw bytes"))
    async def predict(request: Request, top_k: int | None = Query(None, ge=1, le=10_000)):
        """Classify one image: the decided label(s), the top-k classes and (hierarchical) the path."""
        body = await read_body(request, many=False, max_bytes=state.max_upload_bytes, max_items=1,
                               options=("top_k",))
        up = body.uploads[0]
        img = await state.decode(up.data)
        row = await state.probabilities(img)
        return state.prediction(row, top_k_of(body.options, top_k), up.filename)

    @app.post("/v1/predict/batch", dependencies=protected, tags=["predict"], responses=_ERRORS,
              openapi_extra=_image_body("Several images: multipart fields `files`, or JSON `{\"images\": [base64, ...]}`",
                                        many=True))
    async def predict_batch(request: Request, top_k: int | None = Query(None, ge=1, le=10_000)):
        """Classify several images; a bad image gets its own `error` in `results` instead of failing the batch."""
        body = await read_body(request, many=True, max_bytes=state.max_upload_bytes,
                               max_items=state.max_batch_images, options=("top_k",))
        if len(body.uploads) > state.max_batch_images:
            raise too_many(len(body.uploads), state.max_batch_images)
        k = top_k_of(body.options, top_k)
        total = sum(len(u.data) for u in body.uploads)
        if total > state.max_batch_bytes:
            raise ApiError(413, "payload_too_large", f"the batch holds {total:,} bytes of images; this server "
                           f"accepts up to {state.max_batch_bytes:,} per batch request")

        async def one(i: int, up):
            out: dict[str, Any] = {"index": i}
            if up.filename:
                out["filename"] = up.filename
            try:
                err = item_error(up)
                if err is not None:
                    state.metrics.image(err.code)
                    raise err
                row = await state.probabilities(await state.decode(up.data))
                out.update(state.prediction(row, k))
            except ApiError as exc:
                out["error"] = {"code": exc.code, "message": exc.message, "status": exc.status}
            return out

        results = await asyncio.gather(*(one(i, u) for i, u in enumerate(body.uploads)))
        n_err = sum("error" in r for r in results)
        return {"task": state.info["task"], "count": len(results), "errors": n_err, "results": results}

    @app.post("/v1/explain", dependencies=protected, tags=["explain"],
              responses={200: {"content": {"image/png": {}}, "description": "The heatmap over the image the model saw"},
                         **_ERRORS},
              openapi_extra=_image_body("The image: multipart field `file`, JSON `{\"image\": base64}` or raw bytes"))
    async def explain(request: Request, target: str | None = Query(None, description="Class (or taxonomy node) to explain; default: the prediction"),
                      method: str | None = Query(None, description="gradcam, gradcam++, integrated-gradients (deep models) or occlusion")):
        """A PNG heatmap overlay of where the model looked (Grad-CAM for deep models, occlusion for classical ones)."""
        body = await read_body(request, many=False, max_bytes=state.max_upload_bytes, max_items=1,
                               options=("target", "method"))
        target = body.options.get("target") or target
        method = body.options.get("method") or method or state.explain_methods[0]
        if method not in state.explain_methods:
            raise ApiError(400, "explain_unsupported", f"method {method!r} is not available for "
                           f"{state.info['method']}; choose {', '.join(state.explain_methods)}")
        if target is not None:
            known = state.info["classes"]
            if state.info["task"] == "hierarchical":
                from ..tasks.hierarchy import Tree

                known = list(Tree(state.model.taxonomy_ or {c: None for c in known}, known).nodes)
            if target not in known:
                raise ApiError(400, "bad_target", f"target {target!r} is not a class of this model")
        # decoded as imgclass explain does: JPEG draft for deep models, full size for occlusion's view
        img = await state.decode(body.uploads[0].data, draft=state.explain_kind == "deep")
        if state.explains_waiting >= 8:
            raise ApiError(503, "overloaded", "too many explanations are being computed; retry shortly",
                           headers={"Retry-After": "2"})
        state.explains_waiting += 1
        try:
            png, headers = await asyncio.get_running_loop().run_in_executor(
                state.explainer, state.explain_png, img, target, method)
        except ConfigError as exc:
            raise ApiError(400, "explain_unsupported", str(exc)) from None
        finally:
            state.explains_waiting -= 1
        return Response(png, media_type="image/png", headers=headers)

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
        """Prometheus text format: requests by endpoint and status, latency and batch-size histograms."""
        state.metrics.queue.set(state.batcher.depth)
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    page_headers = {"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"}

    @app.get("/", include_in_schema=False)
    async def page():
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"), headers=page_headers)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in STATIC_FILES:  # a fixed list: nothing else on disk is reachable
            raise ApiError(404, "not_found", f"/static/{name} does not exist")
        return Response((STATIC / name).read_bytes(), media_type=STATIC_FILES[name], headers=page_headers)

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
