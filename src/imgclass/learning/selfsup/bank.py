"""The view bank of ``--unfreeze``: augmented views run once through the frozen trunk, kept and reused by key."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..._util import atomic_path
from ...errors import ConfigError
from ...features.backbones import pretrain_view_size
from ...transforms.augment import ViewAugment
from .config import CLUSTER_METHODS, PretrainConfig

#: a run's view bank (``--unfreeze``), in its ``checkpoints/``; reused by ``--resume`` and by runs started from it
BANK_FILE = "view_bank.safetensors"


def _view_bank(net, x, cfg: PretrainConfig, bcfg, log, keep: Path | None = None, reuse: list[Path] = ()):
    """``--unfreeze N``: ``(bank, tail)``. The frozen trunk (all but the last N blocks) of a pretrained
    backbone computes the same function every epoch and is the costly, high-resolution part, so it runs
    once over ``view_bank`` augmented views of each image (ONNX Runtime, float16 kept; the engine's
    ``training.frozen`` split). Each step then pairs two different cached views of each image and trains
    only the last blocks and the projection head: domain adaptation of an ImageNet backbone on a CPU.
    The bank is drawn from a generator seeded with ``seed``, so a resumed run gets
    the same views. The trunk never runs while training, so it gets no gradient and the optimiser leaves
    it exactly as it was.

    The bank is kept in ``keep`` (the run's ``checkpoints/``) under a key of the trunk's weights, the
    decoded images and the view options (``_bank_key``). A folder of ``reuse`` holding a bank with the
    same key supplies it instead of the trunk: ``--resume`` (its own folder) and a run started from this
    one with the same ``--unfreeze`` and views, e.g. the next SCAN round, whose trunk is still this
    run's since only the tail trained: reading a kept bank costs far less than running the trunk."""
    import time

    import torch

    from ...training.frozen import ActivationCache, split_network

    split = split_network(net, cfg.unfreeze)
    if split is None:
        raise ConfigError(f"--unfreeze {cfg.unfreeze}: cannot train only the last {cfg.unfreeze} blocks of "
                          f"{cfg.backbone} (fewer blocks, or an architecture without named blocks); lower "
                          "--unfreeze or drop it to train the whole backbone")
    trunk, tail = split
    # SCAN and self-labelling also see (and mine their neighbours or pick their confident images on) the
    # images as they are, and mirrored unless --no-hflip
    plain = (1 + cfg.hflip) * (cfg.method in CLUSTER_METHODS)
    slots = cfg.view_bank + plain
    key = _bank_key(trunk, x, cfg, slots)
    for folder in reuse:
        bank = _load_bank(folder / BANK_FILE, key)
        if bank is not None:  # the key covers the image count and the slots
            log(f"view bank: {slots} views of {len(x)} images reused from {folder / BANK_FILE} (same frozen "
                "trunk, images and view options)")
            if keep is not None and folder != keep:
                _link_bank(folder / BANK_FILE, keep / BANK_FILE, bank, key)
            return bank, tail
    aug = ViewAugment(torch.Generator().manual_seed(cfg.seed + 1), pretrain_view_size(cfg.to_dict(), x.shape[-1]),
                      cfg.crop_scale, cfg.jitter, cfg.p_jitter, cfg.p_gray, cfg.hflip, cfg.randaugment)
    t0, bank = time.perf_counter(), None
    for v in range(cfg.view_bank):
        views = torch.cat([aug(x[i:i + 1024]).round_().to(torch.uint8) for i in range(0, len(x), 1024)])
        acts = ActivationCache.compute(trunk, views, bcfg.mean, bcfg.std, f"view bank {v + 1}/{slots}",
                                       mirrored=False).plain
        if bank is None:
            bank = torch.empty((len(x), slots, *acts.shape[1:]), dtype=acts.dtype)
        bank[:, v] = acts
    if plain:
        cache = ActivationCache.compute(trunk, x, bcfg.mean, bcfg.std, "view bank: the images as they are",
                                        mirrored=cfg.hflip)
        bank[:, cfg.view_bank] = cache.plain
        if cfg.hflip:
            bank[:, cfg.view_bank + 1] = cache.mirrored
    log(f"view bank: {slots} views of {len(x)} images through the frozen trunk "
        f"({bank.numel() * bank.element_size() / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    if keep is not None:
        _save_bank(keep / BANK_FILE, bank, key)
    return bank, tail


def _bank_key(trunk, x, cfg: PretrainConfig, slots: int) -> str:
    """What a view bank is a function of: the frozen trunk's weights and buffers, the decoded images
    (``x``, uint8) and the options that draw the
    views. Equal keys mean the trunk would compute the same bank again."""
    import hashlib

    h = hashlib.sha256(b"imgclass-view-bank-1")
    for name, t in sorted(trunk.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(str(tuple(x.shape)).encode())
    h.update(memoryview(x.contiguous().numpy()).cast("B"))
    views = {k: getattr(cfg, k) for k in ("view_bank", "view_size", "crop_scale", "jitter", "p_jitter", "p_gray",
                                         "hflip", "seed")}
    if cfg.randaugment:  # only when on, so the banks kept before the option existed keep their keys
        views["randaugment"] = cfg.randaugment
    h.update(json.dumps({**views, "slots": slots}, sort_keys=True).encode())
    return h.hexdigest()


def _load_bank(path: Path, key: str):
    """The bank kept at ``path`` when its key is ``key``; ``None`` when there is none, it was drawn
    differently or the file is damaged (the trunk then computes it again)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return f.get_tensor("bank")
    except Exception:  # safetensors raises its own error type for a truncated or foreign file
        return None


def _save_bank(path: Path, bank, key: str) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({"bank": bank.contiguous()}, str(tmp), metadata={"format": "imgclass-view-bank", "key": key})


def _link_bank(src: Path, dst: Path, bank, key: str) -> None:
    """Keep a reused bank in the new run as a hard link (no second copy on disk) or, across file
    systems, as a copy, so the new run resumes and seeds later rounds on its own."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)
        _save_bank(dst, bank, key)
