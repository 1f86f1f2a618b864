"""Default limits on untrusted input, defined once: a leaf every layer (and the CLI's option defaults)
may import without pulling in numpy or Pillow."""

from __future__ import annotations

#: Same default as Pillow's own bomb guard (89,478,485 pixels = a 0.25 GB 24-bit image).
DEFAULT_MAX_PIXELS = 89_478_485

#: The server's default pixel limit: smaller than ``DEFAULT_MAX_PIXELS``, because a server decodes what
#: strangers send, many at once.
SERVE_MAX_PIXELS = 40_000_000

__all__ = ["DEFAULT_MAX_PIXELS", "SERVE_MAX_PIXELS"]
