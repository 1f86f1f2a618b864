"""The image endpoints: ``/v1/predict``, ``/v1/predict/batch`` and ``/v1/explain``, each reading its
body through ``uploads.read_body`` and holding every decoded image within the decode memory budget."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from ..errors import ConfigError
from .limits import overloaded
from .state import MAX_EXPLAINS, ServeState
from .uploads import ApiError, item_error, read_body, too_many

DEFAULT_TOP_K = 3


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
                           (422, "Corrupt, truncated or too many pixels", "corrupt_image"),
                           (503, "Busy: retry after the Retry-After seconds", "overloaded")]}



def _top_k(opts: dict, query: int | None) -> int:
    return int(opts.get("top_k") or query or DEFAULT_TOP_K)


def add_predict_routes(app: FastAPI, state: ServeState, protected: list) -> None:
    """``POST /v1/predict`` and ``POST /v1/predict/batch``."""

    @app.post("/v1/predict", dependencies=protected, tags=["predict"], responses=_ERRORS,
              openapi_extra=_image_body("The image: multipart field `file`, JSON `{\"image\": base64}` or raw bytes"))
    async def predict(request: Request, top_k: int | None = Query(None, ge=1, le=10_000)):
        """Classify one image: the decided label(s), the top-k classes and (hierarchical) the path."""
        body = await read_body(request, many=False, max_bytes=state.max_upload_bytes, max_items=1,
                               options=("top_k",))
        up = body.uploads[0]
        async with state.image(up.data) as img:
            row = await state.probabilities(img)
        return state.prediction(row, _top_k(body.options, top_k), up.filename)

    @app.post("/v1/predict/batch", dependencies=protected, tags=["predict"], responses=_ERRORS,
              openapi_extra=_image_body("Several images: multipart fields `files`, or JSON `{\"images\": [base64, ...]}`",
                                        many=True))
    async def predict_batch(request: Request, top_k: int | None = Query(None, ge=1, le=10_000)):
        """Classify several images; a bad image gets its own `error` in `results` instead of failing the batch."""
        body = await read_body(request, many=True, max_bytes=state.max_upload_bytes,
                               max_items=state.max_batch_images, options=("top_k",))
        if len(body.uploads) > state.max_batch_images:
            raise too_many(len(body.uploads), state.max_batch_images)
        k = _top_k(body.options, top_k)
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
                async with state.image(up.data) as img:
                    row = await state.probabilities(img)
                out.update(state.prediction(row, k))
            except ApiError as exc:
                out["error"] = {"code": exc.code, "message": exc.message, "status": exc.status}
            return out

        results = await asyncio.gather(*(one(i, u) for i, u in enumerate(body.uploads)))
        n_err = sum("error" in r for r in results)
        return {"task": state.info["task"], "count": len(results), "errors": n_err, "results": results}


def _check_target(state: ServeState, target: str | None) -> None:
    if target is None:
        return
    known = state.info["classes"]
    if state.info["task"] == "hierarchical":
        from ..tasks.hierarchy import Tree

        known = list(Tree(state.model.taxonomy_ or {c: None for c in known}, known).nodes)
    if target not in known:
        raise ApiError(400, "bad_target", f"target {target[:200]!r} is not a class of this model")


def add_explain_route(app: FastAPI, state: ServeState, protected: list) -> None:
    """``POST /v1/explain``: a PNG heatmap, at most ``MAX_EXPLAINS`` at once (more are shed with 503)."""

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
            raise ApiError(400, "explain_unsupported", f"method {method[:100]!r} is not available for "
                           f"{state.info['method']}; choose {', '.join(state.explain_methods)}")
        _check_target(state, target)
        if state.explains_waiting >= MAX_EXPLAINS:
            state.metrics.shed.labels("explain").inc()
            raise overloaded("too many explanations are being computed", retry_after=2)
        state.explains_waiting += 1
        try:
            # decoded as imgclass explain does: JPEG draft for deep models, full size for occlusion's view
            async with state.image(body.uploads[0].data, draft=state.explain_kind == "deep") as img:
                png, headers = await asyncio.get_running_loop().run_in_executor(
                    state.explainer, state.explain_png, img, target, method)
        except ConfigError as exc:
            raise ApiError(400, "explain_unsupported", str(exc)) from None
        finally:
            state.explains_waiting -= 1
        return Response(png, media_type="image/png", headers=headers)
