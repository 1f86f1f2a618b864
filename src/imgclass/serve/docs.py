"""The OpenAPI page and schema, served from the Swagger UI files shipped in the wheel (no CDN, so it
works offline) and behind the API key when one is set; ReDoc is not served.

Swagger UI is vendored from the npm package ``swagger-ui-dist`` (Apache-2.0, see
``static/swagger-ui/LICENSE`` and ``VERSION.txt``): no PyPI package ships its files without a web
framework of its own attached.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .uploads import ApiError

STATIC = Path(__file__).resolve().parent / "static"
SWAGGER_FILES = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
                 "LICENSE": "text/plain; charset=utf-8", "NOTICE": "text/plain; charset=utf-8"}
#: Swagger UI sets inline styles, so the docs page allows them; scripts still come only from the server
DOCS_CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
DOCS_HEADERS = {"Content-Security-Policy": DOCS_CSP, "Cache-Control": "no-cache", "Referrer-Policy": "no-referrer"}


def add_docs(app: FastAPI, protected: list) -> None:
    """Add ``/docs``, ``/openapi.json`` (both needing the key when one is set) and the Swagger UI files."""

    @app.get("/openapi.json", dependencies=protected, include_in_schema=False)
    async def openapi():
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=protected, include_in_schema=False)
    async def docs():
        return HTMLResponse((STATIC / "docs.html").read_text(encoding="utf-8"), headers=DOCS_HEADERS)

    @app.get("/static/swagger-ui/{name}", include_in_schema=False)
    async def swagger_file(name: str):
        if name not in SWAGGER_FILES:  # a fixed list: nothing else on disk is reachable
            raise ApiError(404, "not_found", f"/static/swagger-ui/{name} does not exist")
        return Response((STATIC / "swagger-ui" / name).read_bytes(), media_type=SWAGGER_FILES[name],
                        headers={"Cache-Control": "public, max-age=86400"})
