"""The run directory of a compression (like ``imgclass train``'s): config, split, per-epoch metrics,
and the engine's checkpoint folder (the run's, or a temporary one)."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def run_dir(out, hint: str):
    """Claim the run folder ``out`` (refused when another run holds it or it already has files)."""
    from ...training import RunDir

    return RunDir.create(out, hint=hint, remedy="choose another --out (or delete that folder)")


def write_run(run, ds, idx, val_split: float, seed: int, config: dict[str, Any]) -> None:
    """Write the run's ``config.yaml`` and ``split.json``."""
    run.write_config(config)
    ds.save_split(run.split_file, idx, seed=seed, val=val_split, test=0.0)


def epoch_logger(run):
    """An ``on_epoch`` callback that appends each epoch to the run's metrics and log (``None`` without a run)."""
    if run is None:
        return None

    def on_epoch(rec):
        run.log_metrics({"split": "val" if any(k.startswith("val_") for k in rec) else "train", **rec})
        run.log(f"epoch {rec['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if isinstance(v, float)))
    return on_epoch


@contextlib.contextmanager
def checkpoints(run) -> Iterator[Path]:
    """The engine's checkpoint folder: the run's, or a temporary one deleted afterwards."""
    if run is not None:
        yield run.path / "checkpoints"
        return
    tmp = Path(tempfile.mkdtemp(prefix="imgclass-compress-"))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
