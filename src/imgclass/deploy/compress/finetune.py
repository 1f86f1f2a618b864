"""Training a pruned network or a student with the engine on decoded images, then refitting the
temperature and decision rule on validation, as ``imgclass train`` does."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import DataError
from .measure import measure, score_of


def finetune(model, net, train_ds, val_ds, y_train: np.ndarray, y_val: np.ndarray, cfg, *, ckpt_dir: Path,
          log: Callable[[str], Any], on_epoch=None, soft: np.ndarray | None = None,
          criterion=None, pretrained: bool = False):
    """Train ``net`` with the engine on the decoded images of ``train_ds`` (targets ``y_train`` in the
    model's class order; with ``soft``, rows of teacher probabilities packed next to one-hot labels for
    ``criterion``), score on ``val_ds`` (hard labels) and load the best epoch's weights.

    Returns ``(trained network, history, train errors, val errors)``."""
    import torch

    from ...features import decode_to_tensor
    from ...training.engine import TrainData, Trainer

    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    lab = y_train >= 0 if y_train.ndim == 1 else np.ones(len(y_train), dtype=bool)
    if soft is not None:
        lab &= ~np.isnan(soft).any(axis=1)
    sources = [train_ds.sources[i] for i in np.flatnonzero(lab)]
    xtr, oktr, errtr = decode_to_tensor(sources, model.preprocess, n_jobs=model.n_jobs, max_pixels=model.max_pixels,
                                        description="decode (train)")
    if errtr:
        log(f"skipped {len(errtr)} unreadable training images")
    if len(xtr) < 2:
        raise DataError(f"{train_ds.name}: fewer than two readable training images")
    y = y_train[lab][oktr]
    n_classes = len(model.classes_)
    if soft is not None:  # [teacher probabilities at T | one-hot label]: mixup mixes both alike
        onehot = np.eye(n_classes, dtype=np.float32)[y]
        ty = torch.from_numpy(np.concatenate([soft[lab][oktr].astype(np.float32), onehot], axis=1))
    else:
        ty = torch.from_numpy(y.astype(np.float32 if y.ndim == 2 else np.int64))
    tr = TrainData(xtr, ty, errtr)
    xva, okva, errva = decode_to_tensor(val_ds.sources, model.preprocess, n_jobs=model.n_jobs,
                                        max_pixels=model.max_pixels, description="decode (val)")
    yv = y_val[okva]
    va = TrainData(xva, torch.from_numpy(yv.astype(np.float32 if yv.ndim == 2 else np.int64)), errva)
    node_loss = None
    if model.task_ == "hierarchical" and getattr(model, "hierarchy", "flat") == "local":
        from ...tasks.hierarchy import Tree, sibling_groups
        from ...training.engine import NodeSoftmaxLoss

        tree = Tree(model.taxonomy_, model.classes_)
        node_loss = NodeSoftmaxLoss(sibling_groups(tree), tree.ancestor_matrix)
    trainer = Trainer(net, tr, va if len(xva) else None, cfg, model.preprocess.mean, model.preprocess.std,
                      task=model.task_, ckpt_dir=ckpt_dir, pretrained=pretrained, log=log, on_epoch=on_epoch,
                      node_loss=node_loss, criterion=criterion, n_classes=n_classes if criterion is not None else None)
    trainer.fit()
    best = ckpt_dir / "best.pt"
    if len(xva) and best.exists():
        st = torch.load(str(best), map_location="cpu", weights_only=True)
        trainer.model.load_state_dict(st["model"])
        if trainer.ema is not None and st.get("ema") is not None:
            trainer.ema.model.load_state_dict(st["ema"])
    out = (trainer.ema.model if trainer.ema is not None else trainer.model).eval()
    return out.to(memory_format=torch.contiguous_format), trainer.history, errtr, errva


def finish(model, val_ds, y_val: np.ndarray, rule, log: Callable[[str], Any]) -> dict[str, Any]:
    """Fit the temperature and tune the decision rule on validation, as ``imgclass train`` does (the old
    ones belong to other weights), keeping ``rule``'s options (positive class, objective, fallback).
    Returns the measurement of the final model (metrics and images/s)."""
    from ...models.base import MIN_CALIBRATION_IMAGES
    from ...tasks.calibration import calibrate
    from ...tasks.decision import tune_decision

    model.meta_["calibration"] = None
    model.decision_ = None
    m = measure(model, list(val_ds.sources), y_val, model.classes_)
    P = m["P"]
    ok = ~np.isnan(P).any(axis=1)
    if ok.sum() >= MIN_CALIBRATION_IMAGES:
        from ...tasks.calibration import apply_temperature

        cal = calibrate(model.task_, y_val, P)
        model.meta_["calibration"] = cal
        P = apply_temperature(model.task_, P, cal["temperature"])
        log(f"temperature scaling: T = {cal['temperature']:.3f}")
    kw = {}
    if rule is not None:
        kw = {"positive": rule.positive if model.task_ == "binary" else None,
              "threshold_for": rule.objective if model.task_ == "binary" else None,
              "min_confidence": rule.min_confidence if model.task_ == "hierarchical" else None}
    model.decision_ = tune_decision(model.task_, list(model.classes_), y_val, P, taxonomy=model.taxonomy_,
                                    hierarchy=getattr(model, "hierarchy", "flat"), log=log, **kw)
    from ...tasks import headline, metrics

    if ok.any():
        sel = ok if model.task_ == "multilabel" else ok & (y_val >= 0)
        m["val"] = headline(model.task_, metrics(model.task_, y_val[sel], P[sel], model.classes_,
                                                 decision=model.decision_))
        m["metric"], m["accuracy"] = score_of(model.task_, m["val"])
        model.meta_["metrics"] = {"val": m["val"]}
    m["P"] = P
    return m
