"""``prune``: zero the smallest weights of a deep bundle, fine-tune with the masks held, and make the
zeros permanent."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from typing import Any

from ...errors import ConfigError
from .finetune import finetune, finish
from .inputs import data_name, load_model_arg, method_name, split_data, targets_in
from .measure import measure, prunable, table_row
from .result import CompressResult, summarise
from .rundir import checkpoints, epoch_logger, run_dir, write_run


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

    if not 0 < amount < 1:
        raise ConfigError(f"--amount {amount}: give the fraction of weights to zero, between 0 and 1 (e.g. 0.5)")
    if epochs < 0:
        raise ConfigError(f"--epochs {epochs}: give 0 (no fine-tuning) or more")
    t_start = time.perf_counter()
    model, bundle = load_model_arg(model)
    if getattr(model, "kind", None) != "deep":
        raise ConfigError(f"MODEL is a classical pipeline ({method_name(model)}); prune works on deep bundles "
                          "(e.g. trained with --method lite0 or smallcnn); distill it into one with imgclass distill")
    model = copy.copy(model)  # a model object passed in is left as it was
    model.meta_ = dict(model.meta_ or {})
    ds, idx, train_ds, val_ds, split_source = split_data(data, task, bundle, (model.meta_ or {}).get("data_fingerprint"),
                                                         val_split, seed, split_file)
    y_train, y_val = targets_in(model.classes_, train_ds), targets_in(model.classes_, val_ds)
    if n_jobs is not None:
        model.n_jobs = n_jobs
    if threads:
        torch.set_num_threads(threads)
    log(f"prune {method_name(model)}: {amount:.0%} of the weights "
        f"({'structured, conv output channels' if structured else 'global unstructured, conv + linear'}); "
        f"{len(train_ds)} training, {len(val_ds)} validation images ({split_source} split)")
    run = run_dir(out, "pruned") if out is not None else None
    if run is not None:
        write_run(run, ds, idx, val_split, seed, {
            "command": "prune", "model": str(bundle) if bundle else method_name(model), "data": data_name(data),
            "method": model.method, "task": ds.task, "val_split": val_split, "seed": seed,
            "amount": amount, "structured": structured, "epochs": epochs, "lr": lr, "batch_size": batch_size})
        run.log(f"prune {method_name(model)} by {amount:.0%} ({'structured' if structured else 'unstructured'})")

    before = measure(model, list(val_ds.sources), y_val, model.classes_)
    rows = [table_row("original", model, bundle, before)]
    log(f"original: val {before['metric']} {before['accuracy']:.4f}, {before['img_per_s']:.0f} img/s")

    rule = model.decision_
    net = copy.deepcopy(model.model_).eval()
    layers = _mask(net, amount, structured, method_name(model))
    # pruned, before fine-tuning (same temperature and rule as the original)
    model.model_ = _merged_copy(net, model.model_)
    mid = measure(model, list(val_ds.sources), y_val, model.classes_)
    rows.append(table_row("pruned, no fine-tuning", model, None, mid, size=False))
    log(f"pruned: val {mid['metric']} {mid['accuracy']:.4f}, sparsity {rows[-1]['sparsity']:.3f}")

    t_ft = time.perf_counter()
    net, history = _finetune_masked(model, net, train_ds, val_ds, y_train, y_val, run, seed=seed, epochs=epochs,
                                    lr=lr, batch_size=batch_size, threads=threads, log=log)
    finetune_s = time.perf_counter() - t_ft
    _make_permanent(net)
    model.model_ = net.eval()
    model.history_ = history or list(getattr(model, "history_", []) or [])
    model.meta_.pop("bundle", None)
    after = finish(model, val_ds, y_val, rule, log)
    options = {"amount": amount, "structured": structured, "epochs": epochs, "lr": lr, "batch_size": batch_size,
               "method": "ln_structured(n=2, dim=0) per Conv2d" if structured
               else "global_unstructured(L1Unstructured) over Conv2d + Linear weights",
               "layers": len(layers)}
    summary = summarise("prune", model, bundle, data, ds, val_ds, split_source, options, run, rows, after,
                        history, {"finetune_s": finetune_s, "total_s": time.perf_counter() - t_start},
                        label=f"pruned {amount:.0%} + {epochs} epoch{'s' if epochs != 1 else ''} fine-tuning")
    log(f"after: val {after['metric']} {after['accuracy']:.4f}, sparsity {summary['after']['sparsity']:.3f}")
    return CompressResult("prune", model, summary, run.path if run is not None else None)


def _mask(net, amount: float, structured: bool, name: str) -> list[tuple[str, Any]]:
    """Put ``torch.nn.utils.prune`` masks on ``net`` (globally over conv + linear weights, or per conv
    output channel with ``structured``); returns the masked layers."""
    import torch
    import torch.nn.utils.prune as tprune

    layers = prunable(net)
    if structured:
        layers = [(n, m) for n, m in layers if isinstance(m, torch.nn.Conv2d) and m.out_channels > 1]
        for _, m in layers:
            tprune.ln_structured(m, "weight", amount=amount, n=2, dim=0)
    else:
        tprune.global_unstructured([(m, "weight") for _, m in layers], pruning_method=tprune.L1Unstructured,
                                   amount=amount)
    if not layers:
        raise ConfigError(f"MODEL {name}: no convolution or linear layers to prune")
    return layers


def _merged_copy(pruned, original):
    """A plain copy of ``original`` with ``pruned``'s masked weights (a pruned module's ``weight`` is
    computed from ``weight_orig * weight_mask`` and cannot be deep-copied)."""
    sd = pruned.state_dict()
    plain = {k[:-len("_orig")] if k.endswith("_orig") else k:
             (v * sd[k[:-len("_orig")] + "_mask"] if k.endswith("_orig") else v)
             for k, v in sd.items() if not k.endswith("_mask")}
    done = copy.deepcopy(original)
    done.load_state_dict(plain)
    return done.eval()


def _finetune_masked(model, net, train_ds, val_ds, y_train, y_val, run, *, seed: int, epochs: int,
                     lr: float | None, batch_size: int | None, threads: int | None,
                     log: Callable[[str], Any]) -> tuple[Any, list[dict]]:
    """``epochs`` of fine-tuning with the masks in place (the bundle's training options, a quarter of
    its learning rate unless ``lr``, every layer trainable); returns ``(network, history)``."""
    if epochs <= 0:
        return net, []
    from ...training.engine import TrainConfig

    cfg0 = TrainConfig.from_dict({**(model.train_config or {}), "seed": seed})
    cfg = TrainConfig.from_dict({
        **cfg0.to_dict(), "epochs": epochs, "lr": lr if lr is not None else cfg0.default_lr() / 4,
        "batch_size": batch_size or cfg0.batch_size, "head_epochs": 0, "unfreeze": None, "ema": 0.0,
        "early_stopping": None, "threads": threads or cfg0.threads})
    with checkpoints(run) as ckpt:
        net, history, _, _ = finetune(model, net, train_ds, val_ds, y_train, y_val, cfg, ckpt_dir=ckpt, log=log,
                                      on_epoch=epoch_logger(run))
    for h in history:
        h["phase"] = "prune-finetune"
    return net, history


def _make_permanent(net) -> None:
    """Fold the masks into the weights (``weight = weight_orig * mask``) and drop the pruning hooks."""
    import torch.nn.utils.prune as tprune

    for _, m in prunable(net):
        if tprune.is_pruned(m) and hasattr(m, "weight_mask"):
            tprune.remove(m, "weight")
