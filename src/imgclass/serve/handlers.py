"""Exception handlers that turn every error a client can cause into a JSON 4xx
(``{"error": {"code", "message"}}``), so only a real server fault, or deliberate shedding (503), is a 5xx."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .uploads import ApiError

HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
              413: "payload_too_large", 415: "unsupported_media_type", 422: "bad_request"}


def error_response(exc: ApiError) -> JSONResponse:
    """The JSON answer of an ``ApiError``."""
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:10]:
        loc = ".".join(str(p) for p in e.get("loc", ()))
        parts.append(f"{loc}: {e.get('msg')}"[:300])
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``: API errors, Starlette's HTTP errors, validation errors, and the
    parser failures that hostile input provokes (deep nesting, numbers too large to convert, bad text)."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        status = exc.status_code
        return error_response(ApiError(status, HTTP_CODES.get(status, "bad_request"), str(exc.detail)[:500],
                                       getattr(exc, "headers", None)))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return error_response(ApiError(400, "bad_request", _validation_message(exc)))

    @app.exception_handler(RecursionError)
    async def _too_deep(request: Request, exc: RecursionError):
        return error_response(ApiError(400, "bad_request", "the request is nested too deeply"))

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError):
        return error_response(ApiError(400, "bad_request", "a number in the request is out of range"))

    @app.exception_handler(UnicodeError)
    async def _bad_text(request: Request, exc: UnicodeError):
        return error_response(ApiError(400, "bad_request", "the request has text that is not valid UTF-8"))
