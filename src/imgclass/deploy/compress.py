"""Compression of model bundles: magnitude pruning and knowledge distillation.

- ``prune``: zero the smallest weights of a deep bundle, fine-tune briefly with the training engine
  while the zeros are held by masks (``torch.nn.utils.prune``), make the masks permanent and save a
  normal bundle. *Unstructured* (default): one global L1 ranking over every convolution and linear
  weight, so layers lose what they can spare. *Structured*: per convolution, the output channels with
  the smallest L2 norm are zeroed whole. Either way the tensors keep their shapes: the saved file is
  as large as before and dense kernels run as fast as before; what shrinks is the compressed size
  (zeros compress) and the number of non-zero parameters. Removing zeroed channels for real needs a
  dependency graph of the network (torch-pruning), which is not a dependency.
- ``distill``: train a small student (``smallcnn``, ``mobilenetv3_small_100@scratch``, any deep spec)
  on the soft predictions of a teacher bundle (deep or classical). The teacher's probabilities are
  computed once, from the original images with the teacher's own pre-processing, so teacher and
  student may use different input sizes. Loss (Hinton et al. 2015)::

      alpha * T^2 * KL(p_teacher^T || softmax(z_student / T)) + (1 - alpha) * CE(z_student, label)

  where ``p_teacher^T = softmax(z_teacher / T)`` from the teacher's logits (deep) or
  ``softmax(log p_teacher / T)`` (classical). The soft targets are those of the un-augmented image
  (offline distillation), while the student sees the engine's augmented batches.

Both report size (bundle bytes, zlib-compressed bytes, non-zero parameters), speed (images/s of
``predict_proba`` on the validation images, decoding included, after a warm-up) and validation
metrics before and after, and with ``out`` write a run directory like ``imgclass train``:
``model/`` (the bundle), ``compress.json``, ``config.yaml``, ``split.json``, ``metrics.jsonl``,
``log.txt``.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write_json
from ..errors import ConfigError, DataError

COMPRESS_JSON = "compress.json"
#: images predicted once before timing (ONNX export and session start-up are not counted)
WARMUP_IMAGES = 8
#: timed passes over the validation images; the fastest counts
SPEED_REPEATS = 2


# --------------------------------------------------------------------------- result
@dataclass
class CompressResult:
    """What ``prune`` and ``distill`` return: the compressed ``model``, the ``summary`` written to
    ``compress.json`` (``before``/``after`` rows and options) and the ``run_dir`` when ``out`` was given."""

    kind: str
    model: Any
    summary: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None

    @property
    def bundle(self) -> Path | None:
        """The saved bundle folder (``run_dir/model``), or ``None`` without ``out``."""
        return self.run_dir / "model" if self.run_dir is not None else None

    @property
    def before(self) -> dict[str, Any]:
        return self.summary["before"]

    @property
    def after(self) -> dict[str, Any]:
        return self.summary["after"]

    def rows(self) -> list[dict[str, Any]]:
        """The table rows in order (before, intermediate rows, after)."""
        return list(self.summary["rows"])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.summary)


# --------------------------------------------------------------------------- shared helpers
def _load(model) -> tuple[Any, Path | None]:
    """A model object (kept) or the bundle at a path loaded; returns ``(model, bundle folder or None)``."""
    if isinstance(model, (str, os.PathLike)):
        from ..models import load_model

        folder = Path(model)
        return load_model(folder), (folder if folder.is_dir() else folder.parent)
    bundle = (model.meta_ or {}).get("bundle") if hasattr(model, "meta_") else None
    return model, Path(bundle) if bundle else None


def _method(model) -> str:
    return str(getattr(model, "method", None) or type(model).__name__)


def _split(data, task: str | None, bundle: Path | None, fingerprint: str | None, val_split: float, seed: int,
           split_file: str | os.PathLike | None):
    """``(dataset, indices, train, val, where the split came from)``. The run's own ``split.json`` next
    to the bundle is reused when ``data`` is the data the model was trained on (same fingerprint), so
    the validation images are ones the model never trained on; else a seeded split (the same one
    ``imgclass train`` makes with the same ``val_split`` and ``seed``)."""
    from ..data import ImageDataset, load_dataset

    ds = data if isinstance(data, ImageDataset) else load_dataset(data, task=task)
    if task and isinstance(data, ImageDataset):
        ds = ds.with_task(task)
    if not ds.is_labelled:
        raise DataError(f"{ds.name}: no labels; DATA must be labelled (a folder per class, a CSV or JSONL)")
    if not 0 < val_split < 1 and split_file is None:
        raise ConfigError(f"--val-split {val_split}: give a fraction in (0, 1), e.g. 0.2")
    source = "seeded"
    if split_file is None and bundle is not None and (bundle.parent / "split.json").exists() \
            and fingerprint is not None and fingerprint == ds.fingerprint():
        split_file, source = bundle.parent / "split.json", "run"
    if split_file is not None:
        idx = ds.load_split(split_file)
        source = source if source == "run" else str(split_file)
    else:
        idx = ds.plan_split(val=val_split, test=0.0, seed=seed)
    if "val" not in idx or not len(idx["val"]):
        raise DataError(f"{ds.name}: no validation images after splitting; raise --val-split or pass --split")
    train = ds.subset(idx["train"], f"{ds.name}:train")
    val = ds.subset(idx["val"], f"{ds.name}:val")
    return ds, idx, train, val, source


def _targets_in(classes: list[str], ds) -> np.ndarray:
    """``ds``'s targets re-indexed to ``classes`` (a model's class order); refuses other class sets."""
    if list(ds.classes) == list(classes):
        return ds.targets
    if set(ds.classes) != set(classes):
        extra = sorted(set(ds.classes) - set(classes))[:5]
        missing = sorted(set(classes) - set(ds.classes))[:5]
        raise DataError(f"{ds.name}: its classes differ from the model's (in DATA only: {extra or '-'}; in the "
                        f"model only: {missing or '-'}); pass the data the model was trained on")
    pos = np.array([list(classes).index(c) for c in ds.classes])
    t = ds.targets
    if t.ndim == 2:
        out = np.zeros_like(t)
        out[:, pos] = t
        return out
    return np.where(t >= 0, pos[np.clip(t, 0, None)], -1)


def _bundle_files(folder: Path) -> list[Path]:
    """The files that make up a bundle (an exported ``model.onnx`` is an optional extra: left out)."""
    return sorted(f for f in folder.iterdir() if f.is_file() and f.name != "model.onnx")


def _size(model, bundle: Path | None) -> dict[str, int]:
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


def _prunable(net) -> list[tuple[str, Any]]:
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
    for _, m in _prunable(net):
        w = m.weight.detach()
        w_total += w.numel()
        w_zero += int((w == 0).sum())
        if w.ndim == 4:
            ch_total += w.shape[0]
            ch_zero += int((w.flatten(1).abs().sum(1) == 0).sum())
    return {"params": total, "nonzero_params": nonzero, "sparsity": w_zero / max(w_total, 1),
            "zero_channels": ch_zero, "conv_channels": ch_total}


def _score(task: str, m: dict[str, Any]) -> tuple[str, float | None]:
    """The one number a row shows: accuracy (micro F1 for multi-label)."""
    key = "micro_f1" if task == "multilabel" else "accuracy"
    v = m.get(key)
    return key, (float(v) if v is not None else None)


def _measure(model, sources: list, targets: np.ndarray, classes: list[str], decision=None,
             repeats: int = SPEED_REPEATS) -> dict[str, Any]:
    """Validation metrics and images/s of ``predict_proba`` on ``sources`` (decoding included): the best
    of ``repeats`` passes after a warm-up on the first few images (ONNX export and session start-up
    are not counted)."""
    from ..models.classical import decision_of
    from ..tasks import headline, metrics

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
    key, value = _score(task, head)
    return {"P": P, "img_per_s": len(sources) / max(seconds, 1e-9), "predict_s": seconds, "metric": key,
            "accuracy": value, "val": head, "images": int(len(sources))}


def _row(name: str, model, bundle: Path | None, measured: dict[str, Any] | None, size: bool = True) -> dict[str, Any]:
    row: dict[str, Any] = {"name": name, "method": _method(model)}
    if size:
        row.update(_size(model, bundle))
    row.update(_weight_stats(model))
    if measured is not None:
        row.update({k: v for k, v in measured.items() if k != "P"})
    return row


def _finetune(model, net, train_ds, val_ds, y_train: np.ndarray, y_val: np.ndarray, cfg, *, ckpt_dir: Path,
              log: Callable[[str], Any], on_epoch=None, soft: np.ndarray | None = None,
              criterion=None, pretrained: bool = False):
    """Train ``net`` with the engine on the decoded images of ``train_ds`` (targets ``y_train`` in the
    model's class order; with ``soft``, rows of teacher probabilities packed next to one-hot labels for
    ``criterion``), score on ``val_ds`` (hard labels) and load the best epoch's weights.

    Returns ``(trained network, history, train errors, val errors)``."""
    import torch

    from ..features import decode_to_tensor
    from ..training.engine import TrainData, Trainer

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
        from ..tasks.hierarchy import Tree, sibling_groups
        from ..training.engine import NodeSoftmaxLoss

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


def _finish(model, val_ds, y_val: np.ndarray, rule, log: Callable[[str], Any]) -> dict[str, Any]:
    """Fit the temperature and tune the decision rule on validation, as ``imgclass train`` does (the old
    ones belong to other weights), keeping ``rule``'s options (positive class, objective, fallback).
    Returns the measurement of the final model (metrics and images/s)."""
    from ..tasks.calibration import calibrate
    from ..tasks.decision import tune_decision
    from ..training.fit import MIN_CALIBRATION_IMAGES

    model.meta_["calibration"] = None
    model.decision_ = None
    m = _measure(model, list(val_ds.sources), y_val, model.classes_)
    P = m["P"]
    ok = ~np.isnan(P).any(axis=1)
    if ok.sum() >= MIN_CALIBRATION_IMAGES:
        from ..tasks.calibration import apply_temperature

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
    from ..tasks import headline, metrics

    if ok.any():
        sel = ok if model.task_ == "multilabel" else ok & (y_val >= 0)
        m["val"] = headline(model.task_, metrics(model.task_, y_val[sel], P[sel], model.classes_,
                                                 decision=model.decision_))
        m["metric"], m["accuracy"] = _score(model.task_, m["val"])
        model.meta_["metrics"] = {"val": m["val"]}
    m["P"] = P
    return m


def _run_dir(out, hint: str):
    from ..training import RunDir

    return RunDir.create(out, hint=hint, remedy="choose another --out (or delete that folder)")


def _write_run(run, ds, idx, val_split: float, seed: int, config: dict[str, Any]) -> None:
    run.write_config(config)
    ds.save_split(run.split_file, idx, seed=seed, val=val_split, test=0.0)


def _on_epoch(run):
    if run is None:
        return None

    def on_epoch(rec):
        run.log_metrics({"split": "val" if any(k.startswith("val_") for k in rec) else "train", **rec})
        run.log(f"epoch {rec['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if isinstance(v, float)))
    return on_epoch


def _ckpt_dir(run) -> tuple[Path, Path | None]:
    """The engine's checkpoint folder: the run's, or a temporary one (returned second, to delete)."""
    if run is not None:
        return run.path / "checkpoints", None
    tmp = Path(tempfile.mkdtemp(prefix="imgclass-compress-"))
    return tmp, tmp


def _data_name(data) -> str:
    return os.path.abspath(data) if isinstance(data, (str, os.PathLike)) else getattr(data, "name", "data")


# --------------------------------------------------------------------------- pruning
def prune(model, data, *, amount: float = 0.5, structured: bool = False, epochs: int = 2, lr: float | None = None,
          batch_size: int | None = None, out: str | os.PathLike | None = None, val_split: float = 0.2,
          seed: int = 0, split_file: str | os.PathLike | None = None, task: str | None = None,
          n_jobs: int | None = None, threads: int | None = None,
          log: Callable[[str], Any] = lambda m: None) -> CompressResult:
    """Prune a deep bundle (path or model) by weight magnitude, fine-tune it on ``data`` and return it.

    ``amount``: the fraction of conv/linear weights set to zero (0 < amount < 1). Unstructured
    (default): ``torch.nn.utils.prune.global_unstructured`` with ``L1Unstructured`` across every
    ``Conv2d`` and ``Linear`` weight. ``structured=True``: ``ln_structured`` (L2 norm, ``dim=0``) on
    each ``Conv2d``, zeroing whole output channels (``amount`` of each layer's channels; the tensors
    keep their shape, so the file does not shrink). Then ``epochs`` of fine-tuning with the training
    engine (the bundle's own training options, a quarter of its learning rate unless ``lr``; every
    layer trains; 0 = none) with the masks in place, so pruned weights stay zero, ``prune.remove``
    makes them permanent, and the temperature and decision rule are fitted again on validation.

    The validation images are the model's own run split when ``data`` is the data it was trained on,
    else a seeded split (``val_split``, ``seed``) or ``split_file``. With ``out`` a run directory is
    written (``model/`` bundle, ``compress.json``, config, split, metrics, log).
    """
    import torch
    import torch.nn.utils.prune as tprune

    if not 0 < amount < 1:
        raise ConfigError(f"--amount {amount}: give the fraction of weights to zero, between 0 and 1 (e.g. 0.5)")
    if epochs < 0:
        raise ConfigError(f"--epochs {epochs}: give 0 (no fine-tuning) or more")
    t_start = time.perf_counter()
    model, bundle = _load(model)
    if getattr(model, "kind", None) != "deep":
        raise ConfigError(f"MODEL is a classical pipeline ({_method(model)}); prune works on deep bundles "
                          "(e.g. trained with --method lite0 or smallcnn); distill it into one with imgclass distill")
    model = copy.copy(model)  # a model object passed in is left as it was
    model.meta_ = dict(model.meta_ or {})
    ds, idx, train_ds, val_ds, split_source = _split(data, task, bundle,
                                                     (model.meta_ or {}).get("data_fingerprint"), val_split, seed,
                                                     split_file)
    y_train, y_val = _targets_in(model.classes_, train_ds), _targets_in(model.classes_, val_ds)
    if n_jobs is not None:
        model.n_jobs = n_jobs
    if threads:
        torch.set_num_threads(threads)
    log(f"prune {_method(model)}: {amount:.0%} of the weights "
        f"({'structured, conv output channels' if structured else 'global unstructured, conv + linear'}); "
        f"{len(train_ds)} training, {len(val_ds)} validation images ({split_source} split)")
    run = _run_dir(out, "pruned") if out is not None else None
    if run is not None:
        _write_run(run, ds, idx, val_split, seed, {
            "command": "prune", "model": str(bundle) if bundle else _method(model), "data": _data_name(data),
            "method": model.method, "task": ds.task, "val_split": val_split, "seed": seed,
            "amount": amount, "structured": structured, "epochs": epochs, "lr": lr, "batch_size": batch_size})
        run.log(f"prune {_method(model)} by {amount:.0%} ({'structured' if structured else 'unstructured'})")

    # before
    before = _measure(model, list(val_ds.sources), y_val, model.classes_)
    rows = [_row("original", model, bundle, before)]
    log(f"original: val {before['metric']} {before['accuracy']:.4f}, {before['img_per_s']:.0f} img/s")

    # prune (masks)
    rule = model.decision_
    net = copy.deepcopy(model.model_).eval()
    layers = _prunable(net)
    if structured:
        layers = [(n, m) for n, m in layers if isinstance(m, torch.nn.Conv2d) and m.out_channels > 1]
        for _, m in layers:
            tprune.ln_structured(m, "weight", amount=amount, n=2, dim=0)
    else:
        tprune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=tprune.L1Unstructured,
                                   amount=amount)
    if not layers:
        raise ConfigError(f"MODEL {_method(model)}: no convolution or linear layers to prune")

    original = model.model_

    def merged_copy(pruned):
        """A plain copy of the network with the masked weights (a pruned module's ``weight`` is computed
        from ``weight_orig * weight_mask`` and cannot be deep-copied)."""
        sd = pruned.state_dict()
        plain = {k[:-len("_orig")] if k.endswith("_orig") else k:
                 (v * sd[k[:-len("_orig")] + "_mask"] if k.endswith("_orig") else v)
                 for k, v in sd.items() if not k.endswith("_mask")}
        done = copy.deepcopy(original)
        done.load_state_dict(plain)
        return done.eval()

    # pruned, before fine-tuning (same temperature and rule as the original)
    model.model_ = merged_copy(net)
    mid = _measure(model, list(val_ds.sources), y_val, model.classes_)
    rows.append(_row("pruned, no fine-tuning", model, None, mid, size=False))
    log(f"pruned: val {mid['metric']} {mid['accuracy']:.4f}, sparsity {rows[-1]['sparsity']:.3f}")

    # fine-tune with the masks in place, then make them permanent
    history: list[dict] = []
    t_ft = time.perf_counter()
    if epochs > 0:
        from ..training.engine import TrainConfig

        cfg0 = TrainConfig.from_dict({**(model.train_config or {}), "seed": seed})
        cfg = TrainConfig.from_dict({
            **cfg0.to_dict(), "epochs": epochs, "lr": lr if lr is not None else cfg0.default_lr() / 4,
            "batch_size": batch_size or cfg0.batch_size, "head_epochs": 0, "unfreeze": None, "ema": 0.0,
            "early_stopping": None, "threads": threads or cfg0.threads})
        ckpt, tmp = _ckpt_dir(run)
        try:
            net, history, _, _ = _finetune(model, net, train_ds, val_ds, y_train, y_val, cfg, ckpt_dir=ckpt, log=log,
                                           on_epoch=_on_epoch(run))
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
        for h in history:
            h["phase"] = "prune-finetune"
    finetune_s = time.perf_counter() - t_ft
    for _, m in _prunable(net):  # make the zeros permanent: weight = weight_orig * mask, hooks gone
        if tprune.is_pruned(m) and hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")
    model.model_ = net.eval()
    model.history_ = history or list(getattr(model, "history_", []) or [])
    model.meta_.pop("bundle", None)
    after = _finish(model, val_ds, y_val, rule, log)
    options = {"amount": amount, "structured": structured, "epochs": epochs, "lr": lr, "batch_size": batch_size,
               "method": "ln_structured(n=2, dim=0) per Conv2d" if structured
               else "global_unstructured(L1Unstructured) over Conv2d + Linear weights",
               "layers": len(layers)}
    summary = _summary("prune", model, bundle, data, ds, val_ds, split_source, options, run, rows, after,
                       history, {"finetune_s": finetune_s, "total_s": time.perf_counter() - t_start},
                       label=f"pruned {amount:.0%} + {epochs} epoch{'s' if epochs != 1 else ''} fine-tuning")
    log(f"after: val {after['metric']} {after['accuracy']:.4f}, sparsity {summary['after']['sparsity']:.3f}")
    return CompressResult("prune", model, summary, run.path if run is not None else None)


def _summary(kind: str, model, source_bundle: Path | None, data, ds, val_ds, split_source: str,
             options: dict[str, Any], run, rows: list[dict], after: dict[str, Any], history: list[dict],
             timings: dict[str, float], label: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save the bundle (with ``out``), measure it and write ``compress.json``; returns the summary."""
    bundle = None
    if run is not None:
        bundle = run.model_dir
        model.save(bundle, metrics=model.meta_.get("metrics", {}), data_fingerprint=ds.fingerprint(),
                   extra={"compressed": {"kind": kind, "from": str(source_bundle) if source_bundle else _method(model),
                                         **{k: v for k, v in options.items() if v is not None}}})
        model.meta_["bundle"] = str(bundle)
        run.log(f"saved bundle to {bundle}")
    rows.append(_row(label, model, bundle, after))
    summary: dict[str, Any] = {
        "kind": kind, "model": str(source_bundle) if source_bundle else _method(model), "data": _data_name(data),
        "val_images": len(val_ds), "split": split_source, "options": options,
        "before": rows[0], "after": rows[-1], "rows": rows, "history": history, "timings": timings,
        "bundle": str(bundle) if bundle is not None else None, **(extra or {})}
    if kind == "distill":
        summary["teacher"], summary["student"] = rows[0], rows[-1]
    b, a = rows[0], rows[-1]
    summary["change"] = {
        "bytes": a["bytes"] / max(b["bytes"], 1), "gzip_bytes": a["gzip_bytes"] / max(b["gzip_bytes"], 1),
        "img_per_s": a["img_per_s"] / max(b["img_per_s"], 1e-9),
        "accuracy_points": (a["accuracy"] - b["accuracy"]) * 100 if None not in (a["accuracy"], b["accuracy"]) else None}
    if run is not None:
        atomic_write_json(run.path / COMPRESS_JSON, summary)
        run.log_metrics({"split": "val", "final": True, **(after.get("val") or {})})
    return summary


# --------------------------------------------------------------------------- distillation
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
    from ..models.classical import with_gaps

    deep_flat = (getattr(teacher, "kind", None) == "deep" and hasattr(teacher, "logits_from_tensor")
                 and not (teacher.task_ == "hierarchical" and getattr(teacher, "hierarchy", "flat") == "local"))
    if deep_flat:
        from ..features import decode_to_array

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

    from ..models import build_model, parse_spec
    from ..training.engine import TrainConfig
    from ..training.fit import method_defaults

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
    t_start = time.perf_counter()
    teacher, bundle = _load(teacher)
    if n_jobs is not None:
        teacher.n_jobs = n_jobs
    if threads:
        torch.set_num_threads(threads)
    if teacher.task_ == "multilabel":
        raise ConfigError("TEACHER is multi-label; distill handles single-label tasks (multiclass, binary, "
                          "hierarchical) whose probabilities sum to one")
    ds, idx, train_ds, val_ds, split_source = _split(data, task, bundle,
                                                     (teacher.meta_ or {}).get("data_fingerprint"), val_split, seed,
                                                     split_file)
    if (ds.task or "multiclass") == "multilabel":
        raise ConfigError(f"{ds.name}: multi-label data; distill handles single-label tasks")
    _targets_in(teacher.classes_, ds)  # the same classes (in any order) or a DataError
    order = [list(teacher.classes_).index(c) for c in ds.classes]  # teacher columns in the student's order

    # the student first: a bad spec or unavailable weights fail before the teacher runs
    base = method_defaults(spec.backbone, spec.pretrained)
    overrides = {k: v for k, v in {"epochs": epochs, "lr": lr, "batch_size": batch_size}.items() if v is not None}
    cfg = TrainConfig.from_dict({"seed": seed, **base, **(train_config or {}), **overrides,
                                 **({"threads": threads} if threads else {})})
    model = build_model(student, seed=seed, n_jobs=n_jobs if n_jobs is not None else teacher.n_jobs,
                        img_size=img_size, train_config=cfg.to_dict())
    model.classes_, model.task_, model.taxonomy_ = list(ds.classes), ds.task or "multiclass", ds.taxonomy
    model.hierarchy = "flat"
    torch.manual_seed(cfg.seed)
    net = model.build_network(model.n_outputs, drop_rate=cfg.dropout)

    run = _run_dir(out, f"distill-{spec.backbone}") if out is not None else None
    options = {"student": student, "temperature": temperature, "alpha": alpha, "epochs": cfg.epochs, "lr": lr,
               "batch_size": cfg.batch_size, "img_size": model.preprocess.size,
               "teacher_input": "logits" if getattr(teacher, "kind", None) == "deep" and
               getattr(teacher, "hierarchy", "flat") != "local" else "log probabilities"}
    if run is not None:
        _write_run(run, ds, idx, val_split, seed, {
            "command": "distill", "teacher": str(bundle) if bundle else _method(teacher), "data": _data_name(data),
            "method": student, "task": ds.task, "val_split": val_split, "seed": seed, **options,
            "train": cfg.to_dict()})
        run.log(f"distill {_method(teacher)} into {student} (T={temperature}, alpha={alpha})")
    log(f"distill {_method(teacher)} into {student}: T = {temperature}, alpha = {alpha}, {len(train_ds)} training, "
        f"{len(val_ds)} validation images ({split_source} split)")

    # the teacher: validation metrics and speed, then soft targets on the training images (once)
    y_val_t = _targets_in(teacher.classes_, val_ds)
    before = _measure(teacher, list(val_ds.sources), y_val_t, teacher.classes_)
    rows = [_row("teacher", teacher, bundle, before)]
    log(f"teacher {_method(teacher)}: val {before['metric']} {before['accuracy']:.4f}, {before['img_per_s']:.0f} img/s")
    t0 = time.perf_counter()
    if alpha > 0:
        z = teacher_logits(teacher, list(train_ds.sources), log)[:, order]
        soft = _softmax(z / temperature)
        log(f"teacher probabilities for {int((~np.isnan(soft).any(axis=1)).sum())} training images in "
            f"{time.perf_counter() - t0:.0f} s")
    else:  # labels only (the baseline): the soft half of the targets is never read
        soft = np.full((len(train_ds), len(ds.classes)), 1.0 / len(ds.classes))
    teacher_s = time.perf_counter() - t0

    ckpt, tmp = _ckpt_dir(run)
    t_train = time.perf_counter()
    try:
        crit = DistillLoss(len(model.classes_), temperature, alpha, cfg.label_smoothing)
        net, history, errtr, errva = _finetune(model, net, train_ds, val_ds, train_ds.targets, val_ds.targets, cfg,
                                               ckpt_dir=ckpt, log=log, on_epoch=_on_epoch(run), soft=soft,
                                               criterion=crit, pretrained=model.pretrained is not None)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    train_s = time.perf_counter() - t_train
    model.model_ = net
    model.history_ = history
    model.meta_["train_skipped"], model.meta_["val_skipped"] = list(errtr), list(errva)
    model.meta_["data_fingerprint"] = ds.fingerprint()
    after = _finish(model, val_ds, val_ds.targets, teacher.decision_ if teacher.task_ == model.task_ else None, log)
    Pt = before["P"][:, order]
    Ps = after["P"]
    both = ~np.isnan(Pt).any(axis=1) & ~np.isnan(Ps).any(axis=1)
    agreement = float((Pt[both].argmax(1) == Ps[both].argmax(1)).mean()) if both.any() else None
    after["agreement"] = agreement
    summary = _summary("distill", model, bundle, data, ds, val_ds, split_source, options, run, rows, after, history,
                       {"teacher_s": teacher_s, "train_s": train_s, "total_s": time.perf_counter() - t_start},
                       label=f"student ({student})", extra={"agreement": agreement})
    log(f"student {student}: val {after['metric']} {after['accuracy']:.4f}, agreement with the teacher "
        f"{agreement if agreement is not None else float('nan'):.4f}")
    return CompressResult("distill", model, summary, run.path if run is not None else None)


__all__ = ["COMPRESS_JSON", "CompressResult", "DistillLoss", "distill", "prune", "teacher_logits"]
