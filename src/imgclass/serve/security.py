"""The API key check: either credential (``X-API-Key`` or ``Authorization: Bearer``) that matches is enough,
and an empty header counts as absent, so a blank ``X-API-Key`` never hides a valid bearer token."""

from __future__ import annotations

import hmac
from collections.abc import Mapping

from .uploads import ApiError

UNAUTHORIZED = ("missing or wrong API key; send it as the X-API-Key header or Authorization: Bearer KEY")


def credentials(headers: Mapping[str, str]) -> list[str]:
    """Every non-empty key the request offers: the ``X-API-Key`` header, then a bearer token."""
    found = []
    key = (headers.get("x-api-key") or "").strip()
    if key:
        found.append(key)
    scheme, _, token = (headers.get("authorization") or "").strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        found.append(token.strip())
    return found


def _same(given: str, key: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "replace"), key.encode("utf-8", "replace"))


def check_key(api_key: str | None, headers: Mapping[str, str]) -> None:
    """Raise a 401 ``ApiError`` unless ``api_key`` is unset or one offered credential equals it."""
    if api_key is None:
        return
    offered = credentials(headers)
    # compare every credential (no early exit), so timing says nothing about which one matched
    ok = [_same(c, api_key) for c in offered]
    if not any(ok):
        raise ApiError(401, "unauthorized", UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})
