"""The optimiser and learning-rate schedule of a training phase, and which parameters train in it."""

from __future__ import annotations

import math

from .config import TrainConfig


def _blocks(model):
    """The sequence of trainable stages (timm's ``blocks`` or ``stages`` or ``layerN``)."""
    for attr in ("blocks", "stages"):
        if hasattr(model, attr):
            return list(getattr(model, attr))
    layers = [getattr(model, f"layer{i}") for i in range(1, 5) if hasattr(model, f"layer{i}")]
    return layers


def set_trainable(model, phase: str, unfreeze: int | None) -> None:
    """``phase="head"``: only the classifier trains; ``"all"``: everything, or the last ``unfreeze`` blocks
    plus the head layers after them."""
    head = model.get_classifier()
    for p in model.parameters():
        p.requires_grad = phase == "all" and unfreeze is None
    for p in head.parameters():
        p.requires_grad = True
    if phase == "all" and unfreeze is not None:
        blocks = _blocks(model)
        for blk in blocks[len(blocks) - unfreeze:] if unfreeze > 0 else []:
            for p in blk.parameters():
                p.requires_grad = True
        for name in ("conv_head", "bn2", "norm", "head", "fc_norm", "final_conv"):
            mod = getattr(model, name, None)
            if mod is not None and hasattr(mod, "parameters"):
                for p in mod.parameters():
                    p.requires_grad = True


def build_optimizer(model, cfg: TrainConfig, phase: str, pretrained: bool, steps_per_epoch: int):
    """``(optimiser, scheduler)`` for ``phase`` (``head`` or ``all``) over the parameters that train in it
    (``set_trainable`` first); a pretrained backbone gets ``backbone_lr_scale`` of the head's rate."""
    import torch

    set_trainable(model, phase, cfg.unfreeze)
    lr = cfg.default_lr()
    head_ids = {id(p) for p in model.get_classifier().parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    if pretrained and phase == "all":
        groups = [{"params": [p for p in params if id(p) in head_ids], "lr": lr},
                  {"params": [p for p in params if id(p) not in head_ids], "lr": lr * cfg.backbone_lr_scale}]
    else:
        groups = [{"params": params, "lr": lr}]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.default_weight_decay())
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=cfg.default_weight_decay())
    else:
        opt = torch.optim.RMSprop(groups, lr=lr, momentum=0.9, weight_decay=cfg.default_weight_decay())
    head_phase = pretrained and cfg.head_epochs > 0
    epochs = cfg.head_epochs if phase == "head" else cfg.epochs - (cfg.head_epochs if head_phase else 0)
    total = max(1, epochs * steps_per_epoch)
    max_lrs = [g["lr"] for g in groups]
    if cfg.schedule == "onecycle":
        pct = max(cfg.warmup, 1e-3)
        if pct * total == 1:  # OneCycleLR divides by (pct * total - 1): a one-step warmup needs a nudge
            pct = min(0.5, 1.5 / total)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lrs, total_steps=total, pct_start=pct,
                                                    anneal_strategy="cos")
    elif cfg.schedule == "cosine":
        warm = max(1, int(cfg.warmup * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return opt, sched
