"""``distill``: train a small student on a teacher's soft predictions (Hinton et al. 2015), with the
``DistillLoss`` criterion plugged into the engine."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ...errors import ConfigError
from .finetune import finetune, finish
from .inputs import data_name, load_model_arg, method_name, split_data, targets_in
from .measure import measure, table_row
from .result import CompressResult, summarise
from .rundir import checkpoints, epoch_logger, run_dir, write_run


class DistillLoss:
    """``alpha * T^2 * KL(teacher || student at T) + (1 - alpha) * CE(student, label)`` on packed targets.

    The engine hands the criterion ``(logits, target)`` with ``target`` = ``TrainData.y`` rows (mixed
    by mixup/cutmix when on); here a row is ``[teacher probabilities at T (C) | one-hot label (C)]``.
    ``label_smoothing`` smooths the hard part as the engine's cross-entropy would.
    """

    def __init__(self, n_classes: int, temperature: float, alpha: float, label_smoothing: float = 0.0):
        self.n, self.t, self.alpha, self.smooth = n_classes, float(temperature), float(alpha), float(label_smoothing)

    def __call__(self, logits, target):
        import torch

        soft, hard = target[:, :self.n], target[:, self.n:]
        loss = logits.new_zeros(())
        if self.alpha > 0:
            log_student = torch.log_softmax(logits / self.t, dim=1)
            kl = (soft * (torch.log(soft.clamp_min(1e-12)) - log_student)).sum(1).mean()
            loss = loss + self.alpha * self.t ** 2 * kl
        if self.alpha < 1:
            if self.smooth:
                hard = hard * (1 - self.smooth) + self.smooth / self.n
            ce = -(hard * torch.log_softmax(logits, dim=1)).sum(1).mean()
            loss = loss + (1 - self.alpha) * ce
        return loss


def teacher_logits(teacher, sources: list, log: Callable[[str], Any] = lambda m: None) -> np.ndarray:
    """Logits of ``teacher`` for ``sources`` (NaN rows for unreadable images), with the teacher's own
    pre-processing: the network's outputs for a deep flat-softmax model (flip-averaged as it predicts),
    else the log of its probabilities (classical pipelines, hierarchical ``local`` models)."""
    from ...models.base import with_gaps

    deep_flat = (getattr(teacher, "kind", None) == "deep" and hasattr(teacher, "logits_from_tensor")
                 and not (teacher.task_ == "hierarchical" and getattr(teacher, "hierarchy", "flat") == "local"))
    if deep_flat:
        from ...features import decode_to_array

        x, ok, errors = decode_to_array(sources, teacher.preprocess, teacher.n_jobs, teacher.max_pixels,
                                        "teacher predictions")
        rows = teacher.logits_from_tensor(x) if len(x) else []
        return with_gaps(len(sources), ok, rows, len(teacher.classes_))
    P = teacher.predict_proba(sources)
    return np.log(np.clip(P, 1e-8, None))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - np.nanmax(z, axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def distill(teacher, data, *, student: str = "smallcnn", temperature: float = 4.0, alpha: float = 0.5,
            epochs: int | None = None, lr: float | None = None, batch_size: int | None = None,
            img_size: int | None = None, train_config: dict[str, Any] | None = None,
            out: str | os.PathLike | None = None, val_split: float = 0.2, seed: int = 0,
            split_file: str | os.PathLike | None = None, task: str | None = None, n_jobs: int | None = None,
            threads: int | None = None, log: Callable[[str], Any] = lambda m: None) -> CompressResult:
    """Distil ``teacher`` (a bundle path or model, deep or classical) into a new ``student`` trained on ``data``.

    ``student``: a deep method spec (``smallcnn``, ``mobilenetv3_small_100@scratch``, ``resnet18@scratch``,
    ``lite0``; offline ImageNet weights exist only for lite0-2, so other timm architectures need
    ``@scratch``). ``temperature`` (> 0) softens both distributions; ``alpha`` in [0, 1] weighs the
    distillation term against the cross-entropy with the labels (``alpha=0`` is plain training, the
    baseline). The teacher's probabilities are computed once on the training images from their files,
    with the teacher's own pre-processing. Training options: the student method's defaults
    (``imgclass train``), ``train_config``, then ``epochs``/``lr``/``batch_size``.

    Returns a ``CompressResult``: ``before`` = the teacher, ``after`` = the student, with the student's
    top-1 agreement with the teacher on validation. With ``out`` a run directory is written.
    """
    import torch

    spec = _student_spec(student, temperature, alpha)
    t_start = time.perf_counter()
    teacher, bundle = load_model_arg(teacher)
    if n_jobs is not None:
        teacher.n_jobs = n_jobs
    if threads:
        torch.set_num_threads(threads)
    if teacher.task_ == "multilabel":
        raise ConfigError("TEACHER is multi-label; distill handles single-label tasks (multiclass, binary, "
                          "hierarchical) whose probabilities sum to one")
    ds, idx, train_ds, val_ds, split_source = split_data(data, task, bundle,
                                                         (teacher.meta_ or {}).get("data_fingerprint"), val_split,
                                                         seed, split_file)
    if (ds.task or "multiclass") == "multilabel":
        raise ConfigError(f"{ds.name}: multi-label data; distill handles single-label tasks")
    targets_in(teacher.classes_, ds)  # the same classes (in any order) or a DataError
    order = [list(teacher.classes_).index(c) for c in ds.classes]  # teacher columns in the student's order

    # the student first: a bad spec or unavailable weights fail before the teacher runs
    model, net, cfg = _build_student(student, spec, ds, seed=seed, n_jobs=n_jobs if n_jobs is not None else teacher.n_jobs,
                                     img_size=img_size, train_config=train_config, threads=threads,
                                     overrides={"epochs": epochs, "lr": lr, "batch_size": batch_size})
    run = run_dir(out, f"distill-{spec.backbone}") if out is not None else None
    options = {"student": student, "temperature": temperature, "alpha": alpha, "epochs": cfg.epochs, "lr": lr,
               "batch_size": cfg.batch_size, "img_size": model.preprocess.size,
               "teacher_input": "logits" if getattr(teacher, "kind", None) == "deep" and
               getattr(teacher, "hierarchy", "flat") != "local" else "log probabilities"}
    if run is not None:
        write_run(run, ds, idx, val_split, seed, {
            "command": "distill", "teacher": str(bundle) if bundle else method_name(teacher), "data": data_name(data),
            "method": student, "task": ds.task, "val_split": val_split, "seed": seed, **options,
            "train": cfg.to_dict()})
        run.log(f"distill {method_name(teacher)} into {student} (T={temperature}, alpha={alpha})")
    log(f"distill {method_name(teacher)} into {student}: T = {temperature}, alpha = {alpha}, {len(train_ds)} training, "
        f"{len(val_ds)} validation images ({split_source} split)")

    # the teacher: validation metrics and speed, then soft targets on the training images (once)
    before = measure(teacher, list(val_ds.sources), targets_in(teacher.classes_, val_ds), teacher.classes_)
    rows = [table_row("teacher", teacher, bundle, before)]
    log(f"teacher {method_name(teacher)}: val {before['metric']} {before['accuracy']:.4f}, {before['img_per_s']:.0f} img/s")
    t0 = time.perf_counter()
    soft = _soft_targets(teacher, train_ds, order, len(ds.classes), temperature, alpha, log)
    teacher_s = time.perf_counter() - t0

    t_train = time.perf_counter()
    with checkpoints(run) as ckpt:
        crit = DistillLoss(len(model.classes_), temperature, alpha, cfg.label_smoothing)
        net, history, errtr, errva = finetune(model, net, train_ds, val_ds, train_ds.targets, val_ds.targets, cfg,
                                              ckpt_dir=ckpt, log=log, on_epoch=epoch_logger(run), soft=soft,
                                              criterion=crit, pretrained=model.pretrained is not None)
    train_s = time.perf_counter() - t_train
    model.model_ = net
    model.history_ = history
    model.meta_["train_skipped"], model.meta_["val_skipped"] = list(errtr), list(errva)
    model.meta_["data_fingerprint"] = ds.fingerprint()
    after = finish(model, val_ds, val_ds.targets, teacher.decision_ if teacher.task_ == model.task_ else None, log)
    agreement = _agreement(before["P"][:, order], after["P"])
    after["agreement"] = agreement
    summary = summarise("distill", model, bundle, data, ds, val_ds, split_source, options, run, rows, after, history,
                        {"teacher_s": teacher_s, "train_s": train_s, "total_s": time.perf_counter() - t_start},
                        label=f"student ({student})", extra={"agreement": agreement})
    log(f"student {student}: val {after['metric']} {after['accuracy']:.4f}, agreement with the teacher "
        f"{agreement if agreement is not None else float('nan'):.4f}")
    return CompressResult("distill", model, summary, run.path if run is not None else None)


def _student_spec(student: str, temperature: float, alpha: float):
    """The student's parsed method spec, after checking ``temperature`` and ``alpha``."""
    from ...models import parse_spec

    if not temperature > 0:
        raise ConfigError(f"--temperature {temperature}: give a positive number (e.g. 4; 1 = the raw probabilities)")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"--alpha {alpha}: give a weight between 0 (labels only) and 1 (teacher only), e.g. 0.5")
    try:
        spec = parse_spec(student)
    except ConfigError as exc:
        raise ConfigError(f"--student {student}: unknown student; give a deep backbone such as smallcnn, "
                          f"mobilenetv3_small_100@scratch or lite0 ({str(exc).split(': ', 1)[-1]})") from None
    if spec.kind != "deep":
        raise ConfigError(f"--student {student}: a feature pipeline cannot learn from soft targets; give a deep "
                          "backbone such as smallcnn, mobilenetv3_small_100@scratch or lite0")
    return spec


def _build_student(student: str, spec, ds, *, seed: int, n_jobs: int | None, img_size: int | None,
                   train_config: dict[str, Any] | None, threads: int | None, overrides: dict[str, Any]):
    """The untrained student on ``ds``'s classes: ``(model, network, TrainConfig)``; training options are
    the method's defaults, then ``train_config``, then the non-``None`` ``overrides``."""
    import torch

    from ...models import build_model
    from ...training.engine import TrainConfig
    from ...training.fit import method_defaults

    base = method_defaults(spec.backbone, spec.pretrained)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    cfg = TrainConfig.from_dict({"seed": seed, **base, **(train_config or {}), **overrides,
                                 **({"threads": threads} if threads else {})})
    model = build_model(student, seed=seed, n_jobs=n_jobs, img_size=img_size, train_config=cfg.to_dict())
    model.classes_, model.task_, model.taxonomy_ = list(ds.classes), ds.task or "multiclass", ds.taxonomy
    model.hierarchy = "flat"
    torch.manual_seed(cfg.seed)
    net = model.build_network(model.n_outputs, drop_rate=cfg.dropout)
    return model, net, cfg


def _soft_targets(teacher, train_ds, order: list[int], n_classes: int, temperature: float, alpha: float,
                  log: Callable[[str], Any]) -> np.ndarray:
    """The teacher's probabilities at ``temperature`` on the training images, in the student's class order
    (uniform placeholders when ``alpha`` is 0: labels only, the soft half is never read)."""
    if not alpha > 0:
        return np.full((len(train_ds), n_classes), 1.0 / n_classes)
    t0 = time.perf_counter()
    z = teacher_logits(teacher, list(train_ds.sources), log)[:, order]
    soft = _softmax(z / temperature)
    log(f"teacher probabilities for {int((~np.isnan(soft).any(axis=1)).sum())} training images in "
        f"{time.perf_counter() - t0:.0f} s")
    return soft


def _agreement(Pt: np.ndarray, Ps: np.ndarray) -> float | None:
    """Top-1 agreement of student and teacher on the images both could read."""
    both = ~np.isnan(Pt).any(axis=1) & ~np.isnan(Ps).any(axis=1)
    return float((Pt[both].argmax(1) == Ps[both].argmax(1)).mean()) if both.any() else None
