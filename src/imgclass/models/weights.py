"""Reading a bundle's ``weights.safetensors`` as untrusted input: header checked against the file, values finite.

safetensors never runs code, but a truncated or forged file, NaN/inf values or tensors of the wrong
shape would otherwise surface later as a crash or as every image failing; here each is a one-line
``ModelFormatError`` at load time.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from .validate import refuse

#: the largest weights file a bundle may hold (a ViT-B is ~350 MB)
MAX_WEIGHTS_BYTES = 1024 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024 * 1024
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "U16": 2, "U32": 4, "U64": 8}


def read_header(path: Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of a safetensors file whose header agrees with the file's length."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if n < 2 or n > MAX_HEADER_BYTES or 8 + n > size:
                raise refuse(path, "truncated or not a safetensors file")
            raw = f.read(n)
    except OSError as exc:
        raise refuse(path, f"unreadable ({exc.strerror or exc})") from None
    if size > MAX_WEIGHTS_BYTES:
        raise refuse(path, f"larger than {MAX_WEIGHTS_BYTES // 1024**2} MB")
    try:
        header = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise refuse(path, "safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise refuse(path, "safetensors header is not an object")
    data_len, spans, out = size - 8 - n, [], {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
            ok = (dtype in _ITEMSIZE and isinstance(shape, list) and len(shape) <= 8
                  and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
                  and all(isinstance(x, int) for x in (begin, end)) and 0 <= begin <= end <= data_len
                  and end - begin == int(np.prod(shape, dtype=object)) * _ITEMSIZE[dtype])
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise refuse(path, f"tensor {name!r} is described wrongly or lies beyond the end of the file (truncated?)")
        spans.append((begin, end))
        out[name] = (dtype, tuple(shape))
    spans.sort()
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        raise refuse(path, "tensors overlap")
    return out


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Every tensor of a checked safetensors file as numpy (bfloat16 as float32), refusing NaN or inf."""
    read_header(path)
    try:
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
    except Exception:  # noqa: BLE001 - e.g. bfloat16, which numpy lacks: read through torch
        try:
            from safetensors.torch import load_file as load_torch

            arrays = {k: (v.float() if v.is_floating_point() else v).numpy() for k, v in load_torch(str(path)).items()}
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise refuse(path, f"not a readable safetensors file ({exc})") from None
    for name, a in arrays.items():
        if a.dtype.kind in "fc" and not np.isfinite(a).all():
            raise refuse(path, f"tensor {name!r} holds NaN or infinite values")
    return arrays


__all__ = ["MAX_WEIGHTS_BYTES", "load_arrays", "read_header"]
