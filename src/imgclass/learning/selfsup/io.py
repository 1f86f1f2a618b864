"""Backbone files: the network a run starts from, and the ``backbone.safetensors`` + ``backbone.json`` it writes."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..._util import atomic_write_bytes, atomic_write_json
from ...errors import ConfigError


def _check_backbone(name: str):
    """``(base, source, pretrained folder or None)`` of a ``--backbone`` value, or a ``ConfigError``."""
    from ...features.backbones import backbone_config, is_known_arch, pretrained_dir

    base, _, source = name.partition("@")
    run = pretrained_dir(base)
    if source not in ("", "scratch", "imagenet", "hub") or (run is not None and source):
        raise ConfigError(f"--backbone {name}: give NAME, NAME@imagenet or a pretrained folder (runs/NAME)")
    if not is_known_arch(base):
        backbone_config(base)  # raises the precise error (unknown name, missing or unfinished folder)
    return base, source, run


def init_backbone(name: str, seed: int = 0):
    """The network to pretrain and its description: ``NAME`` (random init, seeded), ``NAME@imagenet``
    (continue from pretrained weights) or a pretrained folder (continue from its weights).
    Returns ``(net, arch, BackboneConfig)``; the same ``seed`` gives the same initial weights."""
    import torch

    from ...features.backbones import backbone_config, create_backbone, read_pretrained_dir, resolve_arch

    base, source, run = _check_backbone(name)
    cfg = backbone_config(base)
    arch = read_pretrained_dir(run)["arch"] if run is not None else resolve_arch(base)
    torch.manual_seed(seed)
    pretrained = "imagenet" if run is not None else (source if source in ("imagenet", "hub") else None)
    return create_backbone(base, pretrained=pretrained, num_classes=0), arch, cfg


def save_backbone(folder: str | os.PathLike, net, arch: str, input_size: int, mean, std,
                  interpolation: str = "bilinear", **info: Any) -> Path:
    """Write ``backbone.safetensors`` and ``backbone.json`` (atomically) into ``folder``, which then works
    as a backbone name; ``info`` (method, epochs, data, ...) is recorded in the JSON."""
    import hashlib

    import torch
    from safetensors.torch import save

    from ... import __version__
    from ...features.backbones import BACKBONE_FORMAT_VERSION, BACKBONE_JSON, BACKBONE_WEIGHTS

    folder = Path(folder)
    blob = save({k: v.detach().contiguous() for k, v in net.state_dict().items()})
    atomic_write_bytes(folder / BACKBONE_WEIGHTS, blob)
    meta = {"format": "imgclass-backbone", "format_version": BACKBONE_FORMAT_VERSION, "arch": arch,
            "input_size": int(input_size), "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "interpolation": interpolation, "num_features": int(getattr(net, "num_features", 0)),
            "weights": BACKBONE_WEIGHTS, "weights_sha256": hashlib.sha256(blob).hexdigest(), **info,
            "versions": {"imgclass": __version__, "torch": torch.__version__}}
    atomic_write_json(folder / BACKBONE_JSON, meta)
    return folder

def read_backbone_info(folder: str | os.PathLike) -> dict[str, Any]:
    """``backbone.json`` of a pretrained folder (architecture, input size, mean/std, method, epochs, ...)."""
    from ...features.backbones import read_pretrained_dir

    info = read_pretrained_dir(folder)
    return json.loads(json.dumps(info))  # tuples → lists: plain JSON data
