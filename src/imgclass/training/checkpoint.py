"""Checkpoint files of a training run: written atomically, read as tensors and plain values only
(``torch.load(weights_only=True)``), with every random state needed to resume exactly."""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write_bytes
from ..errors import DataError


def write_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename), so a kill never leaves half a file."""
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(path), buf.getvalue())


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's state; ``DataError`` when it cannot be read."""
    import torch

    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: unreadable checkpoint ({exc}); start a new run instead of --resume") from None


def rng_state(generator) -> dict[str, Any]:
    """torch's global, ``generator``'s, numpy's and Python's random states, as tensors and plain values."""
    import torch

    st = np.random.get_state()
    numpy = {"keys": st[1].tolist(), "pos": int(st[2]), "has_gauss": int(st[3]), "gauss": float(st[4])}
    py = random.getstate()
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(), "numpy": numpy,
            "python": list(py[1]) + [py[2] or 0]}


def set_rng_state(state: dict[str, Any], generator) -> None:
    """Restore what ``rng_state`` recorded."""
    import torch

    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    d = state["numpy"]
    np.random.set_state(("MT19937", np.asarray(d["keys"], dtype=np.uint32), d["pos"], d["has_gauss"], d["gauss"]))
    py = state["python"]
    random.setstate((3, tuple(py[:-1]), py[-1] or None))
