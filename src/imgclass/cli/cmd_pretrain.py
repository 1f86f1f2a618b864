"""``imgclass pretrain``: Typer command(s), thin over ``imgclass.learning``."""

from __future__ import annotations

from .app import app  # noqa: F401
