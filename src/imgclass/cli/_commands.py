"""Registers the commands defined outside ``app.py`` (each module adds its commands to ``app`` and
imports heavy libraries inside the commands)."""

from __future__ import annotations

from . import (  # noqa: F401
    cmd_active,
    cmd_cluster,
    cmd_compress,
    cmd_curate,
    cmd_export,
    cmd_pretrain,
    cmd_serve,
    cmd_shards,
    cmd_tune,
)
