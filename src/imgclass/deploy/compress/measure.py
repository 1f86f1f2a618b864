"""Measurements of a model before and after compression: bundle size (raw and zlib-compressed),
parameter counts and sparsity, validation metrics and images/s of ``predict_proba``."""

from __future__ import annotations

import shutil
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .inputs import method_name

#: images predicted once before timing (ONNX export and session start-up are not counted)
WARMUP_IMAGES = 8
#: timed passes over the validation images; the fastest counts
SPEED_REPEATS = 2


def _bundle_files(folder: Path) -> list[Path]:
    """The files that make up a bundle (an exported ``model.onnx`` is an optional extra: left out)."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.name != "model.onnx")


def bundle_size(model, bundle: Path | None) -> dict[str, int]:
    """Bytes of the bundle on disk and compressed with zlib (level 6, i.e. what gzip would give); a
    model without a bundle is saved to a temporary folder to be measured."""
    tmp = None
    try:
        if bundle is None or not (bundle / "model.json").exists():
            tmp = Path(tempfile.mkdtemp(prefix="imgclass-size-"))
            bundle = tmp / "model"
            model.save(bundle)
        raw = packed = 0
        for f in _bundle_files(bundle):
            data = f.read_bytes()
            raw += len(data)
            packed += len(zlib.compress(data, 6))
        return {"bytes": raw, "gzip_bytes": packed}
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def prunable(net) -> list[tuple[str, Any]]:
    """``(name, module)`` of every convolution and linear layer (the tensors pruning works on)."""
    import torch

    return [(n, m) for n, m in net.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


def _weight_stats(model) -> dict[str, Any]:
    """Parameter counts of a deep model: all, non-zero, and the sparsity of the conv/linear weights
    (the fraction that is exactly zero) with the conv output channels that are zero throughout."""
    net = getattr(model, "model_", None)
    if net is None:
        return {}
    total = int(sum(p.numel() for p in net.parameters()))
    nonzero = int(sum(int((p != 0).sum()) for p in net.parameters()))
    w_total = w_zero = ch_total = ch_zero = 0
    for _, m in prunable(net):
        w = m.weight.detach()
        w_total += w.numel()
        w_zero += int((w == 0).sum())
        if w.ndim == 4:
            ch_total += w.shape[0]
            ch_zero += int((w.flatten(1).abs().sum(1) == 0).sum())
    return {"params": total, "nonzero_params": nonzero, "sparsity": w_zero / max(w_total, 1),
            "zero_channels": ch_zero, "conv_channels": ch_total}


def score_of(task: str, m: dict[str, Any]) -> tuple[str, float | None]:
    """The one number a row shows: accuracy (micro F1 for multi-label)."""
    key = "micro_f1" if task == "multilabel" else "accuracy"
    v = m.get(key)
    return key, (float(v) if v is not None else None)


def measure(model, sources: list, targets: np.ndarray, classes: list[str], decision=None,
            repeats: int = SPEED_REPEATS) -> dict[str, Any]:
    """Validation metrics and images/s of ``predict_proba`` on ``sources`` (decoding included): the best
    of ``repeats`` passes after a warm-up on the first few images (ONNX export and session start-up
    are not counted)."""
    from ...models import decision_of
    from ...tasks import headline, metrics

    model.predict_proba(sources[:WARMUP_IMAGES])
    seconds = float("inf")
    for _ in range(max(1, repeats)):  # the best pass: other processes on the machine only slow a pass down
        t0 = time.perf_counter()
        P = model.predict_proba(sources)
        seconds = min(seconds, time.perf_counter() - t0)
    ok = ~np.isnan(P).any(axis=1)
    task = model.task_
    if task != "multilabel":
        ok &= targets >= 0
    head: dict[str, Any] = {}
    if ok.any():
        head = headline(task, metrics(task, targets[ok], P[ok], classes, decision=decision or decision_of(model)))
    key, value = score_of(task, head)
    return {"P": P, "img_per_s": len(sources) / max(seconds, 1e-9), "predict_s": seconds, "metric": key,
            "accuracy": value, "val": head, "images": int(len(sources))}


def table_row(name: str, model, bundle: Path | None, measured: dict[str, Any] | None, size: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "method": method_name(model)}
    if size:
        row.update(bundle_size(model, bundle))
    row.update(_weight_stats(model))
    if measured is not None:
        row.update({k: v for k, v in measured.items() if k != "P"})
    return row
