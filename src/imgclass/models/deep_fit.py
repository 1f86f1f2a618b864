"""Training a ``DeepClassifier``: decode the data, build the network and run the engine's ``Trainer``.

The engine (``imgclass.training.engine``, with its streaming and distributed helpers) is a generic
torch loop that imports nothing from ``models``; it is imported inside ``train_network`` so that
loading a model or predicting with it never imports the training code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ImageDataset
from ..errors import DataError


@dataclass
class Trained:
    """What ``train_network`` returns to the model: the trained network (CPU, eval mode) and its record."""

    net: Any
    history: list[dict]
    train_skipped: list
    val_x: Any = None
    val_ok: np.ndarray | None = None
    val_skipped: list = field(default_factory=list)
    semi: dict | None = None
    is_main: bool = True


def targets(ds: ImageDataset, ok: np.ndarray):
    """``ds``'s targets at the readable positions ``ok`` as a torch tensor (float for multi-label)."""
    import torch

    t = ds.targets[ok]
    return torch.from_numpy(t.astype(np.float32)) if t.ndim == 2 else torch.from_numpy(t.astype(np.int64))


def decode_images(model, ds: ImageDataset, description: str):
    """Decode ``ds`` at the model's pre-processing into one uint8 tensor: ``(x, ok, errors)``."""
    from ..features import decode_to_tensor

    return decode_to_tensor(ds.sources, model.preprocess, n_jobs=model.n_jobs, max_pixels=model.max_pixels,
                            description=description)


def _stream(cfg, model, ds: ImageDataset) -> bool:
    """Stream the training images (``--stream on``, or ``auto`` when decoding them would not fit in memory)?"""
    if cfg.stream != "auto":
        return cfg.stream == "on"
    from ..features import MAX_IN_MEMORY_BYTES

    size = model.preprocess.size
    h, w = (size, size) if isinstance(size, int) else size or (0, 0)
    return len(ds) * h * w * 3 > MAX_IN_MEMORY_BYTES


def _unlabeled_data(model, train: ImageDataset, unlabeled: ImageDataset, cfg, n_labelled: int, log):
    """FixMatch's unlabelled images; their own labels, when they have any, only score the pseudo-labels."""
    import torch

    from ..training.engine import TrainData

    xun, okun, errun = decode_images(model, unlabeled, "decode (unlabelled)")
    if not len(xun):
        raise DataError(f"{unlabeled.name}: no readable unlabelled images; give a folder of images with --unlabeled")
    index = {c: i for i, c in enumerate(train.classes)}
    truth = np.full(len(unlabeled), -1, dtype=np.int64)
    if unlabeled.is_labelled and unlabeled.targets.ndim == 1:
        truth = np.array([index.get(unlabeled.classes[t], -1) if t >= 0 else -1 for t in unlabeled.targets])
    log(f"fixmatch: {n_labelled} labelled + {len(xun)} unlabelled images, pseudo-label threshold "
        f"{cfg.pseudo_threshold}")
    return TrainData(xun, torch.from_numpy(truth[okun]), errun)


def train_network(model, train: ImageDataset, val: ImageDataset | None, cfg, *, unlabeled: ImageDataset | None = None,
                  ckpt_dir=None, resume: bool = False, log=print, on_epoch=None) -> Trained:
    """Decode the data once into memory (or stream it), build ``model``'s network and run the engine
    (``resume`` continues from ``ckpt_dir/last.pt``); with ``val``, the best checkpoint is kept."""
    import torch

    from ..training.engine import TrainData, Trainer

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    labelled = train.subset(np.flatnonzero(train.labelled_mask))
    streaming = None
    if _stream(cfg, model, labelled):
        from ..features import default_jobs
        from ..training.streaming import StreamingImages

        xtr = StreamingImages(labelled.sources, model.preprocess, max_pixels=model.max_pixels,
                              workers=cfg.workers if cfg.workers is not None else max(1, default_jobs() // 2),
                              shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed)
        errtr = []
        how = (f"tar shards read in order through a shuffle buffer of {cfg.shuffle_buffer}" if xtr.sequential
               else "decoded per batch")
        streaming = f"streaming {len(xtr)} training images ({how}, {xtr.workers} decoding workers)"
        tr = TrainData(xtr, targets(labelled, np.ones(len(labelled), dtype=bool)), errtr)
    else:
        xtr, oktr, errtr = decode_images(model, labelled, "decode (train)")
        if errtr:
            log(f"skipped {len(errtr)} unreadable training images (listed in the report)")
        tr = TrainData(xtr, targets(labelled, oktr), errtr)
    va = okva = None
    if val is not None and len(val):
        xva, okva, errva = decode_images(model, val, "decode (val)")
        if errva:
            log(f"skipped {len(errva)} unreadable validation images (listed in the report)")
        va = TrainData(xva, targets(val, okva), errva)
    if len(xtr) < 2:
        raise DataError("fewer than two readable training images")
    un = _unlabeled_data(model, train, unlabeled, cfg, len(xtr), log) if unlabeled is not None else None
    node_loss = None
    if model.task_ == "hierarchical" and model.hierarchy == "local":
        from ..tasks.hierarchy import Tree, sibling_groups
        from ..training.engine import NodeSoftmaxLoss

        tree = Tree(model.taxonomy_, model.classes_)
        node_loss = NodeSoftmaxLoss(sibling_groups(tree), tree.ancestor_matrix)
    net = model.build_network(model.n_outputs, drop_rate=cfg.dropout)
    trainer = Trainer(net, tr, va, cfg, model.preprocess.mean, model.preprocess.std, task=model.task_,
                      ckpt_dir=ckpt_dir, pretrained=model.pretrained is not None, log=log, on_epoch=on_epoch,
                      node_loss=node_loss, unlabeled=un)
    if streaming:
        log(streaming)
    last = Path(ckpt_dir) / "last.pt" if ckpt_dir else None
    if resume and last is not None and last.exists():
        trainer.load_checkpoint(last)
        log(f"resumed from {last} after epoch {trainer.epoch}")
    trainer.fit()
    if streaming:  # the unreadable images met while training
        errtr = xtr.errors
        if errtr:
            log(f"skipped {len(errtr)} unreadable training images (listed in the report)")
    best = Path(ckpt_dir) / "best.pt" if ckpt_dir else None
    if va is not None and best is not None and best.exists():
        st = torch.load(str(best), map_location="cpu", weights_only=True)
        trainer.model.load_state_dict(st["model"])
        if trainer.ema is not None and st.get("ema") is not None:
            trainer.ema.model.load_state_dict(st["ema"])
    net = (trainer.ema.model if trainer.ema is not None else trainer.model).eval()
    net = net.to("cpu", memory_format=torch.contiguous_format)  # bundles and predict: CPU
    semi = None
    if un is not None:
        rounds = [{"round": h["epoch"], "added": h.get("pseudo_labels", 0), "accuracy": h.get("pseudo_accuracy")}
                  for h in trainer.history]
        semi = {"method": "fixmatch", "threshold": cfg.pseudo_threshold, "labelled": int(len(xtr)),
                "unlabeled": int(len(un.x)), "rounds": rounds}
    return Trained(net, trainer.history, list(errtr), va.x if va is not None else None, okva,
                   list(va.skipped) if va is not None else [], semi, trainer.dist.is_main)
