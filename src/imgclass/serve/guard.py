"""The outermost ASGI layer: bounds every request body before it is read, sheds bodies beyond the memory
budget, turns unexpected exceptions into a JSON 500 without a traceback, and counts the request.

Hand-written because Starlette and FastAPI only gained a ``max_body_size`` in 2025 releases, newer
than the versions imgclass supports, and neither has a budget shared by all requests in flight.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from starlette.requests import ClientDisconnect

from .limits import Overloaded

if TYPE_CHECKING:
    from .state import ServeState

log = logging.getLogger("imgclass.serve")

#: the status recorded for a request whose client went away before an answer (nginx's convention)
CLIENT_CLOSED = 499


class _BodyTooLarge(Exception):
    """The body grew past this endpoint's limit while it arrived."""


class _BodyShed(Exception):
    """The body grew past what the server may hold for all requests at once."""


def error_bytes(code: str, message: str) -> bytes:
    """The JSON error body every error answer has."""
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def declared_length(scope) -> int | None:
    """The request's ``Content-Length`` as a number, or ``None`` when absent or not a plain number."""
    for name, value in scope.get("headers") or ():
        if name == b"content-length":
            return int(value) if value.isdigit() and len(value) < 19 else None
    return None


class GuardMiddleware:
    """Bounds, budgets and counts each HTTP request; everything else passes through."""

    def __init__(self, app, state: ServeState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        path = scope.get("path", "")
        status = {"code": 500, "started": False, "reserved": 0}
        try:
            await self._handle(scope, receive, send, path, status)
        finally:
            if status["reserved"]:
                self.state.body_budget.release(status["reserved"])
            self.state.metrics.request(path, scope.get("method", ""), status["code"], time.perf_counter() - t0)

    async def _handle(self, scope, receive, send, path: str, status: dict) -> None:
        """Answer one request; the body bytes it reserves are kept in ``status["reserved"]`` for the caller."""
        state = self.state
        limit = state.body_limit(path)
        received = 0
        failed: Exception | None = None

        async def respond(code: int, err: str, message: str, headers: Sequence[tuple[bytes, bytes]] = ()):
            body = error_bytes(err, message)
            status.update(code=code, started=True)
            await send({"type": "http.response.start", "status": code,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                    (b"x-content-type-options", b"nosniff"), *headers]})
            await send({"type": "http.response.body", "body": body})

        async def guarded_receive():
            nonlocal received, failed
            msg = await receive()
            if msg["type"] == "http.request":
                n = len(msg.get("body", b""))
                received += n
                if received > limit:
                    failed = _BodyTooLarge()
                    raise failed
                if received > status["reserved"]:  # a body without Content-Length is reserved as it arrives
                    extra = received - status["reserved"]
                    if not state.body_budget.try_acquire(extra):
                        failed = _BodyShed()
                        raise failed
                    status["reserved"] += state.body_budget.charge(extra)
            return msg

        async def guarded_send(msg):
            if failed is not None:  # the answer below replaces whatever the app makes of the cut body
                return
            if msg["type"] == "http.response.start":
                status.update(code=msg["status"], started=True)
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-content-type-options", b"nosniff")]}
            await send(msg)

        too_big = f"the request body is over this endpoint's limit of {limit:,} bytes"
        declared = declared_length(scope)
        if declared is not None and declared > limit:
            await respond(413, "payload_too_large", f"{too_big} (Content-Length {declared:,}); this server "
                          f"accepts images up to {state.max_upload_bytes:,} bytes")
            return
        if declared:
            try:
                status["reserved"] = await state.body_budget.acquire(declared, state.budget_wait_s)
            except Overloaded:
                state.metrics.shed.labels("body_memory").inc()
                await respond(503, "overloaded", "the server is receiving too much at once; retry shortly",
                              [(b"retry-after", b"1")])
                return
        try:
            await self.app(scope, guarded_receive, guarded_send)
        except (_BodyTooLarge, _BodyShed):
            pass
        except ClientDisconnect:
            status.update(code=CLIENT_CLOSED)
            return
        except Exception:
            if failed is None and status["started"]:
                log.exception("error after the response started: %s %s", scope.get("method"), path)
                return
            if failed is None:
                log.exception("unexpected error in %s %s", scope.get("method"), path)
                await respond(500, "internal_error", "the server failed on this request; it is logged there")
                return
        if isinstance(failed, _BodyTooLarge) and not status["started"]:
            await respond(413, "payload_too_large", too_big)
        elif isinstance(failed, _BodyShed) and not status["started"]:
            state.metrics.shed.labels("body_memory").inc()
            await respond(503, "overloaded", "the server is receiving too much at once; retry shortly",
                          [(b"retry-after", b"1")])
