"""Fit a model from a method spec, scoring it on a validation set when one is given."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ImageDataset
from ..errors import ConfigError, DataError
from ..models import build_model
from ..models.classical import with_gaps
from ..tasks import headline, metrics
from .engine import TrainConfig, TrainData, Trainer


def fit_model(train: ImageDataset, method: str, val: ImageDataset | None = None, seed: int = 0,
              n_jobs: int | None = None, max_pixels: int | None = None, preprocess=None, log=print,
              train_config: TrainConfig | dict | None = None, img_size: int | None = None,
              pretrained: str | None = None, ckpt_dir: str | Path | None = None, resume: bool = False,
              on_epoch: Callable[[dict], Any] | None = None, positive: str | None = None,
              threshold_for: str | None = None, min_confidence: float | None = None, hierarchy: str = "flat",
              balance: str | None = None, calibrate: bool = True, unlabeled: ImageDataset | None = None,
              fit_classical: Callable | None = None, classifier_params: dict[str, Any] | None = None,
              feature_params: dict[str, dict[str, Any]] | None = None):
    """Build the estimator for ``method``, fit it on ``train`` and score it on ``val``.

    Feature pipelines take ``classifier_params`` (scikit-learn keyword arguments overriding the
    classifier's defaults) and ``feature_params`` (per extractor name), e.g. from ``imgclass tune``.

    ``unlabeled`` (semi-supervised): deep models train with FixMatch on it (``train_config``'s
    ``pseudo_threshold``, ``unlabeled_ratio``, ``unlabeled_weight``); classical pipelines are fitted
    by ``fit_classical(model, train, unlabeled)`` (``imgclass.learning.semi``).

    Deep methods train with the engine (``train_config``; checkpoints in ``ckpt_dir``; ``resume``
    continues from ``ckpt_dir/last.pt``). The decision rule (binary threshold for ``threshold_for`` on
    the ``positive`` class, multi-label per-class thresholds, hierarchical ``min_confidence``) is tuned
    on ``val`` and kept in ``model.decision_``. ``balance``: ``weights`` (class-weighted loss, or
    ``class_weight="balanced"`` for classical classifiers) or ``sampler`` (deep: balanced batches).
    With ``calibrate`` a temperature is fitted on ``val`` first (``model.meta_["calibration"]``), and
    the returned probabilities, the tuned thresholds and every later ``predict_proba`` use it.
    Returns ``(model, val_probabilities or None)``; validation metrics land in ``model.meta_["metrics"]``.
    """
    if not train.is_labelled:
        raise DataError(f"{train.name}: no labels to train on; give a folder per class, a CSV or JSONL")
    from ..models import parse_spec
    from ..tasks.decision import tune_decision

    check_task_options(train, positive=positive, threshold_for=threshold_for, min_confidence=min_confidence,
                       hierarchy=hierarchy, balance=balance)
    _check_class_counts(train, val, log)
    if balance is not None:
        train_config = {**(train_config.to_dict() if isinstance(train_config, TrainConfig) else train_config or {}),
                        "balance": balance}

    spec = parse_spec(method)
    if isinstance(train_config, TrainConfig):
        cfg = train_config
    else:
        base = method_defaults(spec.backbone, pretrained or spec.pretrained) if spec.kind == "deep" else {}
        cfg = TrainConfig.from_dict({"seed": seed, **base, **(train_config or {})})
    model = build_model(method, seed=seed, n_jobs=n_jobs, preprocess=preprocess, max_pixels=max_pixels,
                        img_size=img_size, pretrained=pretrained, train_config=cfg.to_dict(),
                        classifier_params=classifier_params, feature_params=feature_params)
    model.hierarchy = hierarchy
    if model.kind != "deep":
        model.balance = cfg.balance if balance is None else balance
    if model.kind == "deep":
        P = fit_deep(model, train, val, cfg, ckpt_dir=ckpt_dir, resume=resume, log=log, on_epoch=on_epoch,
                     unlabeled=unlabeled)
    else:
        if unlabeled is not None and fit_classical is not None:
            fit_classical(model, train, unlabeled)
        else:
            model.fit(train)
        if model.errors_:
            log(f"skipped {len(model.errors_)} unreadable training images (listed in the report)")
        model.meta_["train_skipped"] = list(model.errors_)
        P = None
        if val is not None and len(val):
            P = model.predict_proba(val)
            model.meta_["val_skipped"] = list(model.errors_)
            if model.errors_:
                log(f"skipped {len(model.errors_)} unreadable validation images (listed in the report)")
    model.meta_["data_fingerprint"] = train.fingerprint()
    if calibrate and P is not None and (~np.isnan(P).any(axis=1)).sum() >= MIN_CALIBRATION_IMAGES:
        from ..tasks.calibration import apply_temperature
        from ..tasks.calibration import calibrate as fit_calibration

        cal = fit_calibration(model.task_, val.targets, P)
        model.meta_["calibration"] = cal
        P = apply_temperature(model.task_, P, cal["temperature"])
        log(f"temperature scaling: T = {cal['temperature']:.3f}, validation ECE {cal['ece_before']:.4f} -> "
            f"{cal['ece_after']:.4f}")
    model.decision_ = tune_decision(model.task_, list(model.classes_), val.targets if P is not None else None, P,
                                    taxonomy=model.taxonomy_, positive=positive, threshold_for=threshold_for,
                                    min_confidence=min_confidence, hierarchy=hierarchy, log=log)
    if P is not None:
        ok = ~np.isnan(P).any(axis=1)
        if ok.any():
            m = metrics(model.task_, val.targets[ok], P[ok], model.classes_, decision=model.decision_)
            model.meta_["metrics"] = {"val": headline(model.task_, m)}
    return model, P


def check_task_options(ds: ImageDataset, positive: str | None = None, threshold_for: str | None = None,
                       min_confidence: float | None = None, hierarchy: str = "flat", balance: str | None = None) -> None:
    """Refuse bad task options for ``ds`` up front (before a run directory or a model is made)."""
    from ..tasks.decision import tune_decision

    task = ds.task or "multiclass"
    if hierarchy not in ("flat", "local"):
        raise ConfigError(f"--hierarchy {hierarchy!r}: choose flat or local")
    if hierarchy == "local" and task != "hierarchical":
        raise ConfigError(f"--hierarchy local needs hierarchical data (nested folders or --taxonomy); this is {task}")
    if balance is not None and balance not in ("none", "weights", "sampler"):
        raise ConfigError(f"--balance {balance!r}: choose none, weights or sampler")
    tune_decision(task, list(ds.classes), None, None, taxonomy=ds.taxonomy, positive=positive,
                  threshold_for=threshold_for, min_confidence=min_confidence)


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


#: fewer validation images than this and no temperature is fitted (it would be noise)
MIN_CALIBRATION_IMAGES = 20


def method_defaults(backbone: str | None, pretrained: str | None) -> dict[str, Any]:
    """Training defaults per kind of deep method (the user's options override them).

    ``smallcnn``: 15 epochs of batch 128 reach 0.80+ on CIFAR-10 12k in about 8 minutes on 2 cores.
    Pretrained backbones: one head-only epoch, then the last 3 blocks at 0.3x the head's LR, trained
    on cached activations of the frozen blocks. On CIFAR-10 12k at 160 px that reached 0.903 where
    full fine-tuning at 128 px reached 0.863 in the same time (bench/cifar_deep.py); ``--unfreeze all``
    fine-tunes everything.
    """
    if backbone == "smallcnn":
        return {"epochs": 15, "batch_size": 128}
    if pretrained is not None:
        return {"epochs": 8, "batch_size": 64, "lr": 2e-3, "head_epochs": 1, "backbone_lr_scale": 0.3, "unfreeze": 3}
    return {}


def _targets(ds: ImageDataset, ok: np.ndarray):
    import torch

    t = ds.targets[ok]
    return torch.from_numpy(t.astype(np.float32)) if t.ndim == 2 else torch.from_numpy(t.astype(np.int64))


def fit_deep(model, train: ImageDataset, val: ImageDataset | None, cfg: TrainConfig, ckpt_dir=None,
             resume: bool = False, log=print, on_epoch=None, unlabeled: ImageDataset | None = None) -> np.ndarray | None:
    """Decode the data once into memory, build the network and run the engine; returns val probabilities.
    With ``unlabeled`` the engine adds FixMatch's pseudo-label loss (the unlabelled images' own labels,
    when they have any, only score the pseudo-labels)."""
    import torch

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    labelled = train.subset(np.flatnonzero(train.labelled_mask))
    model.classes_, model.task_, model.taxonomy_ = list(train.classes), train.task or "multiclass", train.taxonomy
    streaming = None
    if _stream(cfg, model, labelled):
        from ..features import default_jobs
        from .streaming import StreamingImages

        xtr = StreamingImages(labelled.sources, model.preprocess, max_pixels=model.max_pixels,
                              workers=cfg.workers if cfg.workers is not None else max(1, default_jobs() // 2),
                              shuffle_buffer=cfg.shuffle_buffer, seed=cfg.seed)
        errtr = []
        how = (f"tar shards read in order through a shuffle buffer of {cfg.shuffle_buffer}" if xtr.sequential
               else "decoded per batch")
        streaming = f"streaming {len(xtr)} training images ({how}, {xtr.workers} decoding workers)"
        tr = TrainData(xtr, _targets(labelled, np.ones(len(labelled), dtype=bool)), errtr)
    else:
        xtr, oktr, errtr = decode_images(model, labelled, "decode (train)")
        if errtr:
            log(f"skipped {len(errtr)} unreadable training images (listed in the report)")
        tr = TrainData(xtr, _targets(labelled, oktr), errtr)
    va = None
    if val is not None and len(val):
        xva, okva, errva = decode_images(model, val, "decode (val)")
        if errva:
            log(f"skipped {len(errva)} unreadable validation images (listed in the report)")
        va = TrainData(xva, _targets(val, okva), errva)
    if len(xtr) < 2:
        raise DataError("fewer than two readable training images")
    un = None
    if unlabeled is not None:
        xun, okun, errun = decode_images(model, unlabeled, "decode (unlabelled)")
        if not len(xun):
            raise DataError(f"{unlabeled.name}: no readable unlabelled images; give a folder of images with --unlabeled")
        index = {c: i for i, c in enumerate(train.classes)}
        truth = np.full(len(unlabeled), -1, dtype=np.int64)
        if unlabeled.is_labelled and unlabeled.targets.ndim == 1:  # used only to score the pseudo-labels
            truth = np.array([index.get(unlabeled.classes[t], -1) if t >= 0 else -1 for t in unlabeled.targets])
        un = TrainData(xun, torch.from_numpy(truth[okun]), errun)
        log(f"fixmatch: {len(xtr)} labelled + {len(xun)} unlabelled images, pseudo-label threshold "
            f"{cfg.pseudo_threshold}")
    node_loss = None
    if model.task_ == "hierarchical" and model.hierarchy == "local":
        from ..tasks.hierarchy import Tree, sibling_groups
        from .engine import NodeSoftmaxLoss

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
    model.model_ = (trainer.ema.model if trainer.ema is not None else trainer.model).eval()
    model.model_ = model.model_.to("cpu", memory_format=torch.contiguous_format)  # bundles and predict: CPU
    model.history_ = trainer.history
    if un is not None:
        rounds = [{"round": h["epoch"], "added": h.get("pseudo_labels", 0), "accuracy": h.get("pseudo_accuracy")}
                  for h in trainer.history]
        model.meta_["semi"] = {"method": "fixmatch", "threshold": cfg.pseudo_threshold, "labelled": int(len(xtr)),
                               "unlabeled": int(len(un.x)), "rounds": rounds}
    model.meta_["train_skipped"] = list(errtr)
    model.meta_["val_skipped"] = list(va.skipped) if va is not None else []
    model.errors_ = list(errtr)
    if va is None or not trainer.dist.is_main:  # under DDP rank 0 alone calibrates, tunes and reports
        return None
    rows = model.proba_from_logits(model.logits_from_tensor(va.x)) if len(va.x) else []
    return with_gaps(len(val), okva, rows, len(model.classes_))


def _stream(cfg: TrainConfig, model, ds: ImageDataset) -> bool:
    """Stream the training images (``--stream on``, or ``auto`` when decoding them would not fit in memory)?"""
    if cfg.stream != "auto":
        return cfg.stream == "on"
    from ..features import MAX_IN_MEMORY_BYTES

    size = model.preprocess.size
    h, w = (size, size) if isinstance(size, int) else size or (0, 0)
    return len(ds) * h * w * 3 > MAX_IN_MEMORY_BYTES


def decode_images(model, ds: ImageDataset, description: str):
    from ..features import decode_to_tensor

    return decode_to_tensor(ds.sources, model.preprocess, n_jobs=model.n_jobs, max_pixels=model.max_pixels,
                            description=description)
