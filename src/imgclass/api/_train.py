"""Training: ``train`` (with its run folder, resume and torchrun), ``lr_find`` and ``tune``."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ImageDataset, load_dataset
from ..data.decode import DEFAULT_MAX_PIXELS
from ..errors import ConfigError, DataError
from ..training import RunDir, fit_model
from ..transforms import Preprocess
from ._data import as_dataset, as_preprocess, prepare_split


def train(data: ImageDataset | str | os.PathLike | None = None, method: str | None = None,
          val: ImageDataset | None = None, *, val_split: float = 0.2, seed: int = 0,
          out: str | os.PathLike | None = None, task: str | None = None, split_file: str | None = None,
          n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
          preprocess: Preprocess | dict | None = None, train_config: dict | None = None,
          img_size: int | None = None, pretrained: str | None = None, resume: str | os.PathLike | None = None,
          taxonomy: str | os.PathLike | None = None, positive: str | None = None, threshold_for: str | None = None,
          min_confidence: float | None = None, hierarchy: str = "flat", balance: str | None = None,
          calibrate: bool = True, unlabeled: ImageDataset | str | os.PathLike | None = None,
          semi: str | None = None, pseudo_threshold: float | None = None,
          exclude: str | os.PathLike | None = None,
          params: dict[str, Any] | str | os.PathLike | None = None, overwrite: bool = False,
          duplicates: str = "drop", log: Callable[[str], Any] = lambda m: None):
    """Train ``method`` (default ``hog+svm``) on ``data``. With ``out`` the whole run directory is written.

    ``data`` is a dataset or a path. When ``val`` is not given, a seeded stratified split of ``data``
    (or its pre-split folders, or ``split_file``) provides it. Returns the fitted model; its
    ``run_dir`` attribute points at the run folder when ``out`` was given. ``preprocess`` (a
    ``Preprocess`` or its dict form) overrides the method's default pre-processing.

    Deep methods (``lite0``, ``smallcnn``, ``resnet18@scratch``) take ``train_config`` (see
    ``imgclass.training.TrainConfig``: epochs, batch_size, lr, optimizer, schedule, ...), ``img_size``
    and ``pretrained`` (a weights file). ``resume="runs/NAME"`` continues an interrupted deep run
    exactly from its last checkpoint, with the options stored in its ``config.yaml``.

    Task options: ``taxonomy`` (a JSON/YAML tree file making the task hierarchical), ``hierarchy``
    (``flat`` or ``local``), ``min_confidence`` (hierarchical fallback), ``positive`` and
    ``threshold_for`` (binary: ``f1``, ``youden``, ``precision=0.95``, ``recall=0.9``), ``balance``
    (``none``, ``weights``, ``sampler``). Thresholds are tuned on the validation split, after a
    temperature is fitted there (``calibrate``; stored in the bundle and used by ``predict``).

    Semi-supervised: ``unlabeled`` (a folder, CSV or dataset of images; labels, if any, only score
    the pseudo-labels) with ``semi`` = ``self-training``, ``balanced-self-training`` (an equal,
    growing share of the pool per class; ``pseudo_threshold`` is then the final share) or
    ``label-spreading`` (classical, default self-training) or ``fixmatch`` (deep, the default), and
    ``pseudo_threshold``. The pseudo-label
    counts and accuracy per round are in ``model.meta_["semi"]``.

    ``exclude``: a CSV with a ``path`` column (``excluded.csv`` from ``imgclass curate``); those items
    are left out before splitting.

    ``params``: tuned hyper-parameters, the ``best.json`` written by ``tune`` (its method is the default
    ``method``) or a dict like its ``"params"``. Deep ones go into ``train_config`` (explicit
    ``train_config`` values win), classical ones into the classifier and feature extractor; they are
    kept in ``config.yaml`` and the bundle.

    ``out`` must be a new or empty folder; one that already holds files is refused unless
    ``overwrite=True`` (which empties it; only imgclass run folders). A folder another run is writing
    to is refused either way. ``duplicates`` (``drop``, ``keep`` or ``error``) is the policy for an image
    listed more than once or in two splits; see ``imgclass.data.duplicates``.
    """
    from ..data.duplicates import check_policy, overlap, resolve_duplicates, resolve_overlap
    from ..models import TaskOptions, parse_spec

    if resume is not None:
        return _resume(resume, log)
    if data is None:
        raise ConfigError("train: give DATA (or --resume RUN)")
    method, param_kw = tuned_params(method, params)
    if "train_config" in param_kw:
        train_config = {**param_kw.pop("train_config"), **(train_config or {})}
    spec = parse_spec(method)  # a bad --method fails before anything is written
    check_policy(duplicates)
    dist = _init_distributed(spec.kind, train_config)
    if not dist.is_main:
        log = _quiet
    ds = as_dataset(data, task, taxonomy=taxonomy) if taxonomy is not None else as_dataset(data, task)
    if exclude is not None:
        ds, removed = ds.without(exclude)
        log(f"--exclude {exclude}: left out {removed} item{'s' if removed != 1 else ''}; {len(ds)} remain")
        if removed == 0:
            log(f"warning: none of the paths in {exclude} are in {ds.name}; check that it was written for this data")
    options = TaskOptions(positive=positive, threshold_for=threshold_for, min_confidence=min_confidence,
                          hierarchy=hierarchy, balance=balance, calibrate=calibrate)
    options.check(ds)
    semi_kw = _semi_options(spec.kind, ds, unlabeled, semi, pseudo_threshold, log)
    if semi_kw and spec.kind == "deep" and pseudo_threshold is not None:
        train_config = {**(train_config or {}), "pseudo_threshold": float(pseudo_threshold)}
    preprocess = as_preprocess(preprocess)
    ds = resolve_duplicates(ds, duplicates, log)
    if val is None:
        idx, train_ds, val_ds = prepare_split(ds, val_split, seed, split_file)
        kept = resolve_overlap(train_ds, val_ds, duplicates, log)
        if len(kept) != len(val_ds):
            idx["val"] = np.delete(idx["val"], overlap(train_ds.sources, val_ds.sources))
            val_ds = kept
    else:
        idx, train_ds, val_ds = None, ds, resolve_overlap(ds, val, duplicates, log)
    run = ckpt = None
    if out is not None and not dist.is_main:  # other ranks write nothing; they only read checkpoints on resume
        from ..training import distributed

        ckpt = Path(distributed.broadcast(None)) / "checkpoints"
    elif out is not None:
        run = RunDir.create(out, overwrite=overwrite, remedy=TRAIN_REMEDY)
        if dist.enabled:
            from ..training import distributed

            distributed.broadcast(str(run.path))
        run.write_config({"data": data.name if isinstance(data, ImageDataset) else str(data) if "://" in str(data)
                          else os.path.abspath(data),  # an fsspec URL (shards) stays a URL for --resume
                          "method": method, "params": param_kw or None,
                          "task": ds.task, "val_split": val_split, "seed": seed, "split_file": split_file,
                          "max_pixels": max_pixels, "n_jobs": n_jobs,
                          "preprocess": preprocess.to_dict() if preprocess else None,
                          "train": train_config, "img_size": img_size, "pretrained": pretrained,
                          "taxonomy": os.path.abspath(taxonomy) if taxonomy is not None else None,
                          "decision": options.to_dict(),
                          "exclude": os.path.abspath(exclude) if exclude is not None else None,
                          "duplicates": duplicates,
                          "semi": {"unlabeled": os.path.abspath(unlabeled) if isinstance(unlabeled, (str, os.PathLike))
                                   else None, "method": semi, "pseudo_threshold": pseudo_threshold}
                          if unlabeled is not None else None,
                          "platform": platform.platform()})
        if idx is not None:
            ds.save_split(run.split_file, idx, seed=seed, val=val_split, test=0.0)
        run.log(f"train {method} on {len(train_ds)} images, validate on {len(val_ds)}")
    try:
        return _fit_and_record(spec, ds, train_ds, val_ds, method, run, ckpt=ckpt, seed=seed, n_jobs=n_jobs,
                               max_pixels=max_pixels, preprocess=preprocess, train_config=train_config,
                               img_size=img_size, pretrained=pretrained, resume=False, log=log, options=options,
                               **semi_kw, **param_kw)
    finally:
        if run is not None:
            run.release()


TRAIN_REMEDY = ("pass --overwrite to replace it, --resume DIR to continue an interrupted deep run, or choose "
                "another --out")


def tuned_params(method: str | None, params) -> tuple[str, dict[str, Any]]:
    """The method and the ``fit_model`` keywords (or ``train_config`` entries) for ``params``."""
    if params is None:
        return method or "hog+svm", {}
    from ..training.tuning import resolve_params, route_params

    method, values = resolve_params(params, method)
    return method, route_params(method, values)


def _semi_options(kind: str, ds: ImageDataset, unlabeled, semi, pseudo_threshold, log) -> dict:
    """``fit_model`` keywords for semi-supervised training (empty without ``unlabeled``); bad options
    fail here, before anything is written."""
    if unlabeled is None:
        if semi is not None or pseudo_threshold is not None:
            raise ConfigError("--semi and --pseudo-threshold need --unlabeled DIR (the unlabelled images)")
        return {}
    from functools import partial

    from ..learning.semi import check_semi, default_semi, fit_semi_classical

    semi = semi or default_semi(kind)
    check_semi(kind, semi, ds.task or "multiclass")
    un = as_dataset(unlabeled)
    if not len(un):
        raise DataError(f"--unlabeled {un.name}: no images found; give a folder of images")
    if pseudo_threshold is not None and not 0 < pseudo_threshold <= 1:
        raise ConfigError(f"--pseudo-threshold {pseudo_threshold}: give a probability in (0, 1]")
    if kind == "deep":
        return {"unlabeled": un}
    return {"unlabeled": un, "fit_classical": partial(fit_semi_classical, semi=semi, threshold=pseudo_threshold, log=log)}


def _quiet(msg: str) -> None:
    """The log of ranks other than 0 under torchrun."""


def _init_distributed(kind: str, train_config: dict | None):
    """Join torchrun's process group when there is one; distributed training is for deep methods."""
    from ..training import distributed

    info = distributed.env_info()
    if not info.enabled:
        return info
    if kind != "deep":
        raise ConfigError("--nproc / torchrun: distributed training is for deep methods (lite0, smallcnn, ...); "
                          "feature pipelines train in one process with --jobs")
    return distributed.init(distributed.resolve_device((train_config or {}).get("device", "auto")))


def _fit_and_record(spec, ds, train_ds, val_ds, method, run, *, resume, log, ckpt=None, **kw):
    """Fit and, with a run directory, save the bundle, metrics and report. ``ckpt``: the checkpoint folder of
    a rank other than 0 under torchrun (which gets no ``run`` and writes nothing)."""
    on_epoch = None
    if run is not None:
        def on_epoch(rec, run=run):
            run.log_metrics({"split": "val" if any(k.startswith("val_") for k in rec) else "train", **rec})
            run.log(f"epoch {rec['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in rec.items()
                                                          if isinstance(v, float)))
    model, P = fit_model(train_ds, spec, val=val_ds if len(val_ds) else None, log=log,
                         ckpt_dir=run.path / "checkpoints" if run is not None and spec.kind == "deep" else ckpt,
                         resume=resume, on_epoch=on_epoch, **kw)
    model.run_dir = run.path if run else None
    if run is not None:
        # the bundle first: whatever happens while reporting, the trained model is kept
        model.save(run.model_dir, metrics=model.meta_.get("metrics", {}), data_fingerprint=ds.fingerprint())
        run.log(f"saved bundle to {run.model_dir}")
        if P is not None and not np.isnan(P).all():
            from ..evaluation import evaluate_probabilities

            ev = evaluate_probabilities(model.task_, model.classes_, val_ds.targets, P,
                                        items=[val_ds.relpath(i) for i in range(len(val_ds))],
                                        skipped=model.meta_.get("train_skipped", []) + model.meta_.get("val_skipped", []),
                                        decision=model.decision_, title=f"{method} on {ds.name} (validation)",
                                        sources=list(val_ds.sources), groups=val_ds.groups)
            ev.history = getattr(model, "history_", None) or None
            ev.write(run.path)
            run.log_metrics({"split": "val", "final": True, **ev.headline, "n": ev.metrics["n"],
                             "skipped": len(ev.skipped)})
        run.log_metrics({"split": "train", "final": True, "n": len(train_ds),
                         "skipped": len(model.meta_.get("train_skipped", [])),
                         **{k: round(v, 3) for k, v in model.timings_.items()}})
    return model


def _resume(run_path: str | os.PathLike, log):
    import yaml

    cfg_file = Path(run_path) / "config.yaml"
    if not cfg_file.exists():
        raise ConfigError(f"--resume {run_path}: no config.yaml there; pass a run directory of 'imgclass train'")
    run = RunDir(run_path)
    cfg = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
    from ..models import TaskOptions, parse_spec

    spec = parse_spec(cfg["method"])
    if spec.kind != "deep":
        raise ConfigError(f"--resume {run_path}: only deep runs have checkpoints to resume; retrain {cfg['method']}")
    dist = _init_distributed(spec.kind, cfg.get("train"))
    if dist.is_main:
        run = RunDir.open(run_path)  # refused while another process writes the run
    ds = load_dataset(cfg["data"], task=cfg.get("task"), taxonomy=cfg.get("taxonomy"))
    if cfg.get("exclude"):
        ds, _ = ds.without(cfg["exclude"])
    idx = ds.load_split(run.split_file)
    train_ds = ds.subset(idx["train"], f"{ds.name}:train")
    val_ds = ds.subset(idx.get("val", np.zeros(0, np.int64)), f"{ds.name}:val")
    ckpt = None
    if not dist.is_main:
        log, ckpt, run = _quiet, run.path / "checkpoints", None
    else:
        run.log(f"resume {cfg['method']}")
    semi_cfg = cfg.get("semi") or {}
    semi_kw = (_semi_options(spec.kind, ds, semi_cfg["unlabeled"], semi_cfg.get("method"), None, log)
               if semi_cfg.get("unlabeled") else {})
    try:
        return _fit_and_record(spec, ds, train_ds, val_ds, cfg["method"], run, ckpt=ckpt,
                               seed=cfg.get("seed", 0), n_jobs=cfg.get("n_jobs"), max_pixels=cfg.get("max_pixels"),
                               preprocess=as_preprocess(cfg.get("preprocess")), train_config=cfg.get("train"),
                               img_size=cfg.get("img_size"), pretrained=cfg.get("pretrained"), resume=True, log=log,
                               options=TaskOptions(**(cfg.get("decision") or {})), **semi_kw)
    finally:
        if run is not None:
            run.release()


def lr_find(data: ImageDataset | str | os.PathLike, method: str, *, out: str | os.PathLike | None = None,
            task: str | None = None, val_split: float = 0.2, seed: int = 0, **kw):
    """Learning-rate range test for a deep method on the training split; with ``out`` writes the plot."""
    from ..training.lr_find import lr_find as _lr_find

    ds = as_dataset(data, task)
    _, train_ds, _ = prepare_split(ds, val_split, seed)
    res = _lr_find(train_ds, method, seed=seed, **kw)
    if out is not None:
        res.plot(out, title=f"lr-find: {method} on {ds.name}")
    return res


def tune(data: ImageDataset | str | os.PathLike, method: str, trials: int = 20, *, timeout: float | None = None,
         out: str | os.PathLike | None = None, seed: int = 0, val_split: float = 0.2, study_name: str | None = None,
         metric: str | None = None, task: str | None = None, n_jobs: int | None = None, tune_features: bool = True,
         epochs: int | None = None, train_config: dict | None = None, img_size: int | None = None,
         log: Callable[[str], Any] = lambda m: None):
    """Hyper-parameter search for ``method`` with Optuna on one seeded split of ``data``; returns a
    ``TuneResult`` (best ``params`` and ``value`` next to the defaults' ``default_value``).

    ``trials`` counts the study's finished trials, trial 0 being the method's defaults; the study lives
    in ``out/study.db`` (default ``runs/<data>-<method>-tune``) and a rerun with the same ``out`` resumes.
    ``out/best.json`` feeds ``train(data, params="out/best.json")``. Deep methods train ``epochs`` per
    trial with the ``train_config`` options fixed and are pruned by the median rule. The search space
    is documented in ``imgclass.training.tuning``.
    """
    from ..training import tune as _tune

    return _tune(data, method, trials, timeout=timeout, out=out, seed=seed, val_split=val_split,
                 study_name=study_name, metric=metric, task=task, n_jobs=n_jobs, tune_features=tune_features,
                 epochs=epochs, train_config=train_config, img_size=img_size, log=log)
