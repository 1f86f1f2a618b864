"""``ServeState``: the served model, its micro-batcher, decode pool, memory budgets, limits and metrics,
which every endpoint shares."""

from __future__ import annotations

import asyncio
import io
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import numpy as np

from ..errors import ImgclassError
from .batching import MicroBatcher, QueueFull
from .limits import (
    BODY_BUDGET_BYTES,
    BUDGET_WAIT_S,
    DECODE_BUDGET_BYTES,
    MemoryBudget,
    Overloaded,
    decoded_bytes,
    overloaded,
)
from .metrics import ServerMetrics
from .security import check_key
from .uploads import ApiError, decode_checked, inspect_upload

SMALL_BODY = 64 * 1024  # any request that carries no image
MULTIPART_SLACK = 64 * 1024  # multipart headers and boundaries around the file(s)
#: explanations waiting or running at once before more are shed
MAX_EXPLAINS = 8


def _model_kind(model, source: str | None) -> str:
    if source is not None and not source.startswith("imagenet:"):
        from ..models import read_meta

        try:
            return str(read_meta(source).get("kind"))
        except ImgclassError:
            pass
    return str(getattr(model, "kind", "classical"))


def disable_embedding_cache(model) -> None:
    """Uploads are never written to the on-disk embedding cache (it would grow with every request)."""
    ex = getattr(model, "extractor", None)
    for part in getattr(ex, "parts", [ex]) if ex is not None else []:
        if getattr(part, "cacheable", False):
            part.cache = False


class ServeState:
    """The model, its batcher and executors, limits and metrics: everything the endpoints share."""

    def __init__(self, model, *, source: str | None, api_key: str | None, max_upload_bytes: int,
                 max_batch_bytes: int, max_pixels: int | None, max_batch: int, batch_wait_ms: float,
                 max_batch_images: int, max_queue: int, decode_threads: int | None, model_threads: int = 1,
                 decode_memory_bytes: int = DECODE_BUDGET_BYTES, body_memory_bytes: int = BODY_BUDGET_BYTES,
                 budget_wait_s: float = BUDGET_WAIT_S):
        from ..models import decision_of

        self.model, self.source = model, source
        self.api_key = api_key or None
        self.max_upload_bytes, self.max_batch_bytes = int(max_upload_bytes), int(max_batch_bytes)
        self.max_pixels, self.max_batch_images = max_pixels, int(max_batch_images)
        self.decision = decision_of(model)
        size = getattr(getattr(model, "preprocess", None), "size", None)
        self.draft = max(size) if isinstance(size, (tuple, list)) else size  # the same JPEG draft as predict
        self.metrics = ServerMetrics()
        self.metrics.info.labels(str(getattr(model, "method", "?")), str(model.task_)).set(1)
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
        # decoded pixels and request bodies in flight are reserved from these before they are allocated
        self.decode_budget = MemoryBudget(decode_memory_bytes)
        self.body_budget = MemoryBudget(body_memory_bytes)
        self.budget_wait_s = float(budget_wait_s)
        self.info = self._model_info()

    # ------------------------------------------------------------------ limits
    def body_limit(self, path: str) -> int:
        if path in ("/v1/predict", "/v1/explain"):
            return self.max_upload_bytes * 4 // 3 + MULTIPART_SLACK  # room for base64
        if path == "/v1/predict/batch":
            return self.max_batch_bytes * 4 // 3 + MULTIPART_SLACK
        return SMALL_BODY

    def check_key(self, headers) -> None:
        check_key(self.api_key, headers)

    # ------------------------------------------------------------------ model
    def _predict_batch(self, images: list) -> np.ndarray:
        """Runs in the model thread: one ``predict_proba`` for the whole micro-batch."""
        P = np.asarray(self.model.predict_proba(images), dtype=np.float64)
        self.metrics.queue.set(self.batcher.depth)
        return P

    @asynccontextmanager
    async def image(self, data: bytes, draft: bool = True) -> AsyncIterator[Any]:
        """An upload checked from its header, then decoded in the decode pool once its decoded size is
        reserved from the memory budget (503 when that takes too long), and held until the caller is done.
        JPEGs are drafted to the model's input size exactly as ``imgclass predict`` does (``draft=False``:
        full size)."""
        loop = asyncio.get_running_loop()
        size = self.draft if draft else None
        try:
            head = await loop.run_in_executor(self.decoder, lambda: inspect_upload(
                data, max_bytes=self.max_upload_bytes, max_pixels=self.max_pixels, draft_size=size))
            try:
                charge = await self.decode_budget.acquire(decoded_bytes(*head.decoded), self.budget_wait_s)
            except Overloaded as exc:
                self.metrics.shed.labels("decode_memory").inc()
                raise overloaded(str(exc)) from None
        except ApiError as exc:
            self.metrics.image(exc.code)
            raise
        self.metrics.decode_bytes.inc(charge)
        try:
            try:
                img = await loop.run_in_executor(self.decoder, lambda: decode_checked(
                    data, head, max_pixels=self.max_pixels, draft_size=size))
            except ApiError as exc:
                self.metrics.image(exc.code)
                raise
            yield img
        finally:
            img = None  # noqa: F841 - the pixels go before the budget is given back
            self.decode_budget.release(charge)
            self.metrics.decode_bytes.dec(charge)

    async def probabilities(self, img) -> np.ndarray:
        try:
            row = await self.batcher.submit(img)
        except QueueFull as exc:
            self.metrics.image("overloaded")
            self.metrics.shed.labels("queue").inc()
            raise overloaded(str(exc)) from None
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
                disable_embedding_cache(m)
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
        self.metrics.close()

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
                          "model_threads": self.batcher.concurrency,
                          "decode_memory_bytes": self.decode_budget.total, "body_memory_bytes": self.body_budget.total}
        info["auth_required"] = self.api_key is not None
        return info


