"""Fit a model from a method spec: build the estimator, call its ``fit``, return it with its validation probabilities."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ImageDataset
from ..errors import DataError
from ..models import MethodSpec, TaskOptions, build_model, parse_spec
from .engine import TrainConfig


def fit_model(train: ImageDataset, method: str | MethodSpec, val: ImageDataset | None = None, *,
              options: TaskOptions | None = None, seed: int = 0, train_config: TrainConfig | dict | None = None,
              pretrained: str | None = None, log: Callable[[str], Any] = print, ckpt_dir: str | Path | None = None,
              resume: bool = False, on_epoch: Callable[[dict], Any] | None = None,
              unlabeled: ImageDataset | None = None, fit_classical: Callable | None = None,
              **build) -> tuple[Any, np.ndarray | None]:
    """Build the estimator for ``method`` (``build``: ``build_model``'s other keywords), fit it on ``train``
    and score it on ``val``; returns ``(model, calibrated val probabilities or None)``.

    ``options`` (``TaskOptions``, checked by the caller) become the estimator's hierarchy, balance,
    calibration and decision parameters. Deep methods get ``method_defaults`` under ``train_config`` and
    train with the engine (checkpoints in ``ckpt_dir``; ``resume`` continues from ``ckpt_dir/last.pt``;
    ``unlabeled`` adds FixMatch); feature pipelines fit ``unlabeled`` with ``fit_classical(model, train,
    unlabeled)`` (``imgclass.learning.semi``). Validation metrics land in ``model.meta_["metrics"]``.
    """
    if not train.is_labelled:
        raise DataError(f"{train.name}: no labels to train on; give a folder per class, a CSV or JSONL")
    options = options or TaskOptions()
    _check_class_counts(train, val, log)
    spec = parse_spec(method)
    if isinstance(train_config, TrainConfig) and options.balance is None:
        cfg = train_config
    else:
        given = train_config.to_dict() if isinstance(train_config, TrainConfig) else train_config or {}
        base = method_defaults(spec.backbone, pretrained or spec.pretrained) if spec.kind == "deep" else {}
        cfg = TrainConfig.from_dict({"seed": seed, **base, **given,
                                     **({"balance": options.balance} if options.balance is not None else {})})
    if options.balance is None:
        from dataclasses import replace

        options = replace(options, balance=cfg.balance)
    model = build_model(spec, seed=seed, pretrained=pretrained, train_config=cfg.to_dict(), options=options, **build)
    if spec.kind == "deep":
        model.fit(train, val, unlabeled, log=log, ckpt_dir=ckpt_dir, resume=resume, on_epoch=on_epoch)
    else:
        model.fit(train, val, unlabeled, semi=fit_classical, log=log)
    return model, model.val_proba_


def check_task_options(ds: ImageDataset, positive: str | None = None, threshold_for: str | None = None,
                       min_confidence: float | None = None, hierarchy: str = "flat", balance: str | None = None) -> None:
    """Refuse bad task options for ``ds`` up front (``TaskOptions.check``)."""
    TaskOptions(positive=positive, threshold_for=threshold_for, min_confidence=min_confidence, hierarchy=hierarchy,
                balance=balance).check(ds)


def _check_class_counts(train: ImageDataset, val: ImageDataset | None, log) -> None:
    """Warn about classes with fewer than 5 training images, and name classes absent from validation."""
    few = [f"{c} ({n})" for c, n in train.class_counts().items() if n < 5]
    if few:
        log(f"warning: {len(few)} classes have fewer than 5 training images: {', '.join(few[:8])}"
            f"{' …' if len(few) > 8 else ''}; add images or expect unreliable results for them")
    if val is not None and len(val):
        absent = [c for c, n in val.class_counts().items() if n == 0]
        if absent:
            log(f"note: {len(absent)} classes have no validation images after splitting: {', '.join(absent[:8])}"
                f"{' …' if len(absent) > 8 else ''}; their validation metrics are undefined (add images or "
                "raise --val-split)")


def method_defaults(backbone: str | None, pretrained: str | None) -> dict[str, Any]:
    """Training defaults per kind of deep method (the user's options override them).

    ``smallcnn``: 15 epochs of batch 128, a good model within minutes on a CPU.
    Pretrained backbones: one head-only epoch, then the last 3 blocks at 0.3x the head's LR, trained
    on cached activations of the frozen blocks, which beats full fine-tuning in the same time
    (docs/benchmarks.md); ``--unfreeze all`` fine-tunes everything.
    """
    if backbone == "smallcnn":
        return {"epochs": 15, "batch_size": 128}
    if pretrained is not None:
        return {"epochs": 8, "batch_size": 64, "lr": 2e-3, "head_epochs": 1, "backbone_lr_scale": 0.3, "unfreeze": 3}
    return {}
