"""Serving a trained model over HTTP: a FastAPI app (``create_app``) with micro-batched prediction,
explanations, model metadata, Prometheus metrics and a small web page (``static/``).

``imgclass serve MODEL`` runs it with uvicorn. Depends on ``imgclass.models`` and below, never the reverse.
"""

from __future__ import annotations

from .app import ENV_CONFIG, app_from_env, create_app

__all__ = ["ENV_CONFIG", "app_from_env", "create_app"]
