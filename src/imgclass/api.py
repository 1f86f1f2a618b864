"""The public Python API. The CLI calls these functions and nothing else does more work than them."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .data import ImageDataset, from_paths, load_dataset
from .data.decode import DEFAULT_MAX_PIXELS, ImageSource
from .deploy.load import RUNTIMES, resolve_model
from .errors import ConfigError, DataError
from .evaluation import Evaluation
from .evaluation import evaluate as _evaluate
from .limits import SERVE_MAX_PIXELS
from .models import load_model
from .training import RunDir, check_task_options, fit_model
from .transforms import Preprocess

__all__ = ["DEFAULT_MAX_PIXELS", "RUNTIMES", "SERVE_MAX_PIXELS", "active", "active_simulate", "check_data", "cluster",
           "compare", "curate", "cv", "default_run_dir", "distill", "dumps", "evaluate", "explain", "export",
           "headline_metrics", "images_dataset", "is_main_process", "launch", "load_dataset", "load_model", "lr_find", "methods",
           "new_run_dir", "pack", "predict", "predict_proba", "predict_to_csv", "prepare_split", "pretrain", "prune",
           "resolve_model", "robustness", "run_dir_next_to", "serve", "shutdown", "split_methods", "train", "train_method", "tune"]


def _as_preprocess(pre: Preprocess | dict | None) -> Preprocess | None:
    if pre is None or isinstance(pre, Preprocess):
        return pre
    return Preprocess.from_dict(pre)


def _as_dataset(data: ImageDataset | str | os.PathLike, task: str | None = None, **kw) -> ImageDataset:
    if isinstance(data, ImageDataset):
        return data.with_task(task) if task else data
    return load_dataset(data, task=task, **kw)


def prepare_split(ds: ImageDataset, val_split: float = 0.2, seed: int = 0, split_file: str | None = None,
                  test_split: float = 0.0) -> tuple[dict[str, np.ndarray], ImageDataset, ImageDataset]:
    """Choose train/val indices: from ``split_file`` if given, else pre-split folders, else a seeded split."""
    idx = ds.load_split(split_file) if split_file else ds.plan_split(val=val_split, test=test_split, seed=seed)
    if "val" not in idx or not len(idx["val"]):
        idx["val"] = np.zeros(0, dtype=np.int64)
    return idx, ds.subset(idx["train"], f"{ds.name}:train"), ds.subset(idx["val"], f"{ds.name}:val")


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
    from .data.duplicates import check_policy, overlap, resolve_duplicates, resolve_overlap
    from .models import TaskOptions, parse_spec

    if resume is not None:
        return _resume(resume, log)
    if data is None:
        raise ConfigError("train: give DATA (or --resume RUN)")
    method, param_kw = _tuned_params(method, params)
    if "train_config" in param_kw:
        train_config = {**param_kw.pop("train_config"), **(train_config or {})}
    spec = parse_spec(method)  # a bad --method fails before anything is written
    check_policy(duplicates)
    dist = _init_distributed(spec.kind, train_config)
    if not dist.is_main:
        log = _quiet
    ds = _as_dataset(data, task, taxonomy=taxonomy) if taxonomy is not None else _as_dataset(data, task)
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
    preprocess = _as_preprocess(preprocess)
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
        from .training import distributed

        ckpt = Path(distributed.broadcast(None)) / "checkpoints"
    elif out is not None:
        run = RunDir.create(out, overwrite=overwrite, remedy=TRAIN_REMEDY)
        if dist.enabled:
            from .training import distributed

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


def _tuned_params(method: str | None, params) -> tuple[str, dict[str, Any]]:
    """The method and the ``fit_model`` keywords (or ``train_config`` entries) for ``params``."""
    if params is None:
        return method or "hog+svm", {}
    from .training.tuning import resolve_params, route_params

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

    from .learning.semi import check_semi, default_semi, fit_semi_classical

    semi = semi or default_semi(kind)
    check_semi(kind, semi, ds.task or "multiclass")
    un = _as_dataset(unlabeled)
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
    from .training import distributed

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
            from .evaluation import evaluate_probabilities

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
    from .models import TaskOptions, parse_spec

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
                               preprocess=_as_preprocess(cfg.get("preprocess")), train_config=cfg.get("train"),
                               img_size=cfg.get("img_size"), pretrained=cfg.get("pretrained"), resume=True, log=log,
                               options=TaskOptions(**(cfg.get("decision") or {})), **semi_kw)
    finally:
        if run is not None:
            run.release()


def lr_find(data: ImageDataset | str | os.PathLike, method: str, *, out: str | os.PathLike | None = None,
            task: str | None = None, val_split: float = 0.2, seed: int = 0, **kw):
    """Learning-rate range test for a deep method on the training split; with ``out`` writes the plot."""
    from .training.lr_find import lr_find as _lr_find

    ds = _as_dataset(data, task)
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
    from .training import tune as _tune

    return _tune(data, method, trials, timeout=timeout, out=out, seed=seed, val_split=val_split,
                 study_name=study_name, metric=metric, task=task, n_jobs=n_jobs, tune_features=tune_features,
                 epochs=epochs, train_config=train_config, img_size=img_size, log=log)


def predict_proba(model, images: Sequence[ImageSource] | ImageDataset, max_pixels: int | None = None,
                  tta: str | None = None) -> np.ndarray:
    """Class probabilities, one row per image (NaN rows for unreadable images); ``tta`` (``flip``,
    ``crops`` or ``flip+crops``) averages them over views of each image."""
    from .models.tta import predict_proba_tta

    m = resolve_model(model, max_pixels)
    sources = list(images.sources) if isinstance(images, ImageDataset) else list(images)
    return predict_proba_tta(m, sources, tta)


def predict(model, images: Sequence[ImageSource] | ImageDataset, top_k: int = 1, max_pixels: int | None = None,
            tta: str | None = None):
    """A ``Prediction`` per image (decided label(s) with probability, top-k classes, hierarchical path);
    ``None`` for unreadable images. ``tta`` as in ``predict_proba``."""
    from .models import predictions

    m = resolve_model(model, max_pixels)
    return predictions(m, predict_proba(m, images, tta=tta), top_k)


def evaluate(model, data: ImageDataset | str | os.PathLike, out: str | os.PathLike | None = None,
             task: str | None = None, max_pixels: int | None = None, n_jobs: int | None = None,
             group_by: str | None = None, tta: str | None = None) -> Evaluation:
    """Evaluate a model (object or bundle path) on labelled data; with ``out`` write the report files.
    ``group_by`` names a CSV/JSONL column whose values define slices, reported separately."""
    model = resolve_model(model, max_pixels, n_jobs)
    ds = _as_dataset(data, task, group_by=group_by) if group_by else _as_dataset(data, task)
    ev = _evaluate(model, ds, tta=tta)
    if out is not None:
        ev.write(out)
    return ev


def compare(data: ImageDataset | str | os.PathLike, methods: Sequence[str], *, val_split: float = 0.2,
            seed: int = 0, task: str | None = None, split_file: str | None = None, n_jobs: int | None = None,
            out: str | os.PathLike | None = None, preprocess: Preprocess | dict | None = None,
            overwrite: bool = False, log: Callable[[str], Any] = lambda m: None) -> list[dict[str, Any]]:
    """Train and score several methods on the same split; returns leaderboard rows, best first. ``out``
    must be new or empty unless ``overwrite`` (as in ``train``)."""
    from .evaluation import compare as _compare

    if not methods:
        raise ConfigError("--methods is empty; e.g. --methods hog+svm,lbp+rf,pixels+knn")
    ds = _as_dataset(data, task)
    if not ds.is_labelled:
        raise DataError(f"{ds.name}: has no labels; compare needs labelled data")
    idx, train_ds, val_ds = prepare_split(ds, val_split, seed, split_file)
    save_dir = None
    if out is not None:
        run = RunDir.create(out, overwrite=overwrite)
        ds.save_split(run.split_file, idx, seed=seed, val=val_split, test=0.0)
        save_dir = run.path / "models"
    rows = _compare(train_ds, val_ds, methods, seed=seed, n_jobs=n_jobs, save_dir=save_dir,
                    preprocess=_as_preprocess(preprocess), log=log)
    if out is not None:
        from ._util import atomic_write_json

        atomic_write_json(run.path / "leaderboard.json", rows)
    return rows


def cv(data: ImageDataset | str | os.PathLike, method: str, *, folds: int = 5, repeats: int = 1, seed: int = 0,
       out: str | os.PathLike | None = None, task: str | None = None, n_jobs: int | None = None,
       preprocess: Preprocess | dict | None = None, train_config: dict | None = None, img_size: int | None = None,
       pretrained: str | None = None, hierarchy: str = "flat", balance: str | None = None,
       log: Callable[[str], Any] = lambda m: None):
    """Stratified k-fold cross-validation of ``method``; returns a ``CVResult`` (per-fold metrics,
    ``summary`` mean/std, out-of-fold probabilities). With ``out``, folds are kept and a rerun with the
    same ``out`` resumes after the last finished fold; ``oof.csv`` and ``cv.json`` are written there."""
    from .evaluation import cross_validate

    ds = _as_dataset(data, task)
    check_task_options(ds, hierarchy=hierarchy, balance=balance)
    return cross_validate(ds, method, folds=folds, repeats=repeats, seed=seed, out=out, log=log, n_jobs=n_jobs,
                          preprocess=_as_preprocess(preprocess), train_config=train_config, img_size=img_size,
                          pretrained=pretrained, hierarchy=hierarchy, balance=balance)


def robustness(model, data: ImageDataset | str | os.PathLike, *, corruptions: Sequence[str] | None = None,
               severities: Sequence[int] = (1, 2, 3, 4, 5), max_images: int | None = None, seed: int = 0,
               out: str | os.PathLike | None = None, task: str | None = None, n_jobs: int | None = None):
    """Accuracy under ImageNet-C-style corruptions (``RobustnessResult``); with ``out`` writes
    ``robustness.json`` and the accuracy-vs-severity plot ``robustness.png``."""
    from .evaluation import robustness as _robustness

    m = resolve_model(model, n_jobs=n_jobs)
    res = _robustness(m, _as_dataset(data, task), corruptions=corruptions, severities=severities,
                      max_images=max_images, seed=seed)
    if out is not None:
        res.write(out, title=f"{m.method}")
    return res


def explain(model, image: ImageSource, target: str | Sequence[str] | None = None, method: str = "gradcam",
            out: str | os.PathLike | None = None, max_pixels: int | None = None):
    """Heatmaps (``Explanation`` list, one per target) of what made the model score ``target`` on
    ``image``: ``gradcam``, ``gradcam++``, ``integrated-gradients`` (deep models) or ``occlusion``
    (any model). By default the prediction is explained (each predicted label of a multi-label model).
    With ``out``, each is written as a PNG: ``out`` itself, or ``<stem>-<target>.png`` for several."""
    from .evaluation.explain import explain as _explain
    from .evaluation.explain import output_paths

    m = resolve_model(model, max_pixels)
    exps = _explain(m, image, target=target, method=method, max_pixels=m.max_pixels or DEFAULT_MAX_PIXELS)
    if out is not None:
        for e, path in zip(exps, output_paths(out, exps)):
            e.save(path)
            e.path = str(path)
    return exps


def images_dataset(paths: Sequence[str | os.PathLike]) -> ImageDataset:
    """Unlabelled dataset of image files and folders (for ``predict``)."""
    return from_paths(paths)


def prune(model, data: ImageDataset | str | os.PathLike, *, amount: float = 0.5, structured: bool = False,
          epochs: int = 2, out: str | os.PathLike | None = None, log: Callable[[str], Any] = lambda m: None, **kw):
    """Prune a deep model (bundle path or object) by weight magnitude and fine-tune it on ``data``; returns a
    ``CompressResult`` (``.model``, ``.summary`` with size/speed/accuracy before and after). With ``out``
    writes a run directory with the new bundle and ``compress.json``. See ``imgclass.deploy.compress.prune``."""
    from .deploy.compress import prune as _prune

    return _prune(model, data, amount=amount, structured=structured, epochs=epochs, out=out, log=log, **kw)


def distill(teacher, data: ImageDataset | str | os.PathLike, *, student: str = "smallcnn", temperature: float = 4.0,
            alpha: float = 0.5, epochs: int | None = None, out: str | os.PathLike | None = None,
            log: Callable[[str], Any] = lambda m: None, **kw):
    """Train ``student`` on ``data`` with the soft predictions of ``teacher`` (any bundle path or model);
    returns a ``CompressResult`` (teacher vs student). See ``imgclass.deploy.compress.distill``."""
    from .deploy.compress import distill as _distill

    return _distill(teacher, data, student=student, temperature=temperature, alpha=alpha, epochs=epochs, out=out,
                    log=log, **kw)


# --------------------------------------------------------------------------- run folders


def default_run_dir(data: str | os.PathLike, what: str) -> Path:
    """The first free ``runs/<data>-<what>`` (then ``-2``, ``-3``, …), created now so no other run takes it."""
    from .training import default_run_dir as run_name

    return RunDir.claim_name(run_name(data, what))


def run_dir_next_to(model: str | os.PathLike, suffix: str) -> Path:
    """The first free ``runs/NAME-<suffix>`` next to the bundle ``runs/NAME/model``, created now."""
    p = Path(model)
    run = p.parent if p.name == "model" else p
    return RunDir.claim_name(run.with_name(f"{run.name}-{suffix}"))


@contextmanager
def new_run_dir(data: str | os.PathLike, what: str, out: str | os.PathLike | None = None) -> Iterator[Path]:
    """``out`` when given, else ``default_run_dir`` for a run that may fail before it writes anything: the
    folders made for it are removed again when the body raises. Under torchrun only rank 0 claims a
    default folder; the others get its name."""
    import contextlib

    from .training import default_run_dir as run_name
    from .training.distributed import is_main

    if out is not None:
        yield Path(out)
        return
    out, claimed = run_name(data, what), []
    if is_main():
        made = [p for p in reversed(out.parents) if not p.exists()]
        out = RunDir.claim_name(out)
        claimed = [*made, out]
    try:
        yield out
    except BaseException:
        for d in reversed(claimed):  # nothing written yet: give the default name back (not if in use)
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise


def train_method(method: str | None = None, params: str | os.PathLike | dict | None = None) -> str:
    """The method ``train`` uses: ``method``, else the one recorded with the tuned ``params``, else ``hog+svm``."""
    return _tuned_params(method, params)[0] if params is not None else method or "hog+svm"


def is_main_process() -> bool:
    """False on the ranks other than 0 under torchrun (they neither write nor report)."""
    from .training.distributed import is_main

    return is_main()


def headline_metrics(task: str) -> tuple[str, ...]:
    """The metrics reported first for a task kind (accuracy first for single-label, micro-F1 for multi-label)."""
    from .tasks import HEADLINE

    return tuple(HEADLINE.get(task, HEADLINE["default"]))


def dumps(obj: Any) -> str:
    """``obj`` as indented JSON; numpy values and paths become plain JSON values."""
    from ._util import dumps as _dumps

    return _dumps(obj)


# --------------------------------------------------------------------------- data and methods


def methods() -> list[tuple[str, str]]:
    """Every method spec with a one-line description (``imgclass methods``)."""
    from .models import list_methods

    return list_methods()


def split_methods(text: str) -> list[str]:
    """A comma-separated list of method specs split into specs (commas inside a spec's features stay)."""
    from .models import split_methods as _split

    return _split(text)


def check_data(data: ImageDataset | str | os.PathLike, *, task: str | None = None,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, n_jobs: int | None = None) -> dict[str, Any]:
    """Inspect every image of ``data``: classes, sizes and modes, unreadable files, duplicates, imbalance."""
    from .data.check import check_dataset

    return check_dataset(_as_dataset(data, task), max_pixels=max_pixels, n_jobs=n_jobs)


def pack(data: ImageDataset | str | os.PathLike, out: str | os.PathLike, *, shard_size: str | int = "256MB",
         split_file: str | os.PathLike | None = None, val_split: float | None = None, test_split: float = 0.0,
         seed: int = 0, shuffle: bool = True, overwrite: bool = False, task: str | None = None,
         taxonomy: str | os.PathLike | None = None, group_by: str | None = None,
         log: Callable[[str], Any] = lambda m: None) -> dict[str, Any]:
    """Pack ``data`` into WebDataset-style tar shards plus ``index.json`` under ``out``; returns a summary."""
    from .data.shards import pack_shards

    ds = data if isinstance(data, ImageDataset) else load_dataset(data, task=task, taxonomy=taxonomy,
                                                                   group_by=group_by)
    return pack_shards(ds, out, shard_size, split_file=split_file, val_split=val_split, test_split=test_split,
                       seed=seed, shuffle=shuffle, overwrite=overwrite, log=log)


# --------------------------------------------------------------------------- learning from unlabelled images


def cluster(data: ImageDataset | str | os.PathLike | Sequence[str], *, features: str = "lite0", algo: str = "kmeans",
            k: int | str | None = None, reduce: str = "pca", dims: int | None = 50, whiten: bool = False,
            normalize: bool = True, seed: int = 0, k_range: tuple[int, int] = (2, 20),
            params: dict[str, Any] | None = None, preprocess: Preprocess | dict | None = None,
            n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            name_with: ImageDataset | str | os.PathLike | None = None, save_model: str | os.PathLike | None = None,
            out: str | os.PathLike | None = None, log: Callable[[str], Any] = lambda m: None):
    """Cluster the images of ``data`` (a ``ClusterResult``); ``name_with`` a few labelled images names the
    clusters, ``save_model`` then saves them as a classifier bundle, and ``out`` receives the report files."""
    from .learning.cluster import cluster as _cluster

    if save_model is not None and name_with is None:
        raise ConfigError("--save-model needs --name-clusters LABELLED.csv: clusters become a classifier only once "
                          "they have names")
    if isinstance(name_with, (str, os.PathLike)) and not Path(name_with).exists():
        raise DataError(f"--name-clusters {name_with}: no such file or folder; give a CSV (path,label), JSONL "
                        "or a folder per class of a few labelled images")
    res = _cluster(data, features=features, algo=algo, k=k, reduce=reduce, dims=dims, whiten=whiten,
                   normalize=normalize, seed=seed, k_range=k_range, params=params, preprocess=preprocess,
                   n_jobs=n_jobs, max_pixels=max_pixels, log=log)
    if name_with is not None:
        model = res.name(name_with)
        if save_model is not None:
            model.save(save_model, extra={"clustering": model.meta_["clustering"]})
    if out is not None:
        res.write(out)
    return res


def curate(data: ImageDataset | str | os.PathLike, *, model: str = "lite0+logreg", oof: str | os.PathLike | None = None,
           checks: Sequence[str] = ("quality", "duplicates", "outliers", "labels"), folds: int = 5,
           blur_z: float = 3.0, outlier_method: str = "auto", outlier_z: float | None = None, min_detail: float = 0.6,
           seed: int = 0, n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
           out: str | os.PathLike | None = None, export_clean: str | os.PathLike | None = None,
           exclude_types: Sequence[str] | None = None, suggest_labels: str | os.PathLike | None = None,
           log: Callable[[str], Any] = lambda m: None):
    """Find blurry, badly exposed, duplicate, leaked, outlier and mislabelled images; returns the
    ``CurationResult`` and the files written (``out``'s report and CSVs, ``export_clean``, ``suggest_labels``)."""
    from .curation import DEFAULT_EXCLUDE, EXCLUDE_CHOICES
    from .curation import curate as _curate
    from .curation.duplicates import DuplicateLimits
    from .curation.quality import QualityLimits

    if oof is not None and not Path(oof).exists():
        raise DataError(f"--oof {oof}: no such file; run 'imgclass cv DATA --method M --out cv/' and pass cv/oof.csv")
    if folds < 2:
        raise ConfigError(f"--folds {folds}: needs at least 2")
    if not 0 < min_detail <= 1:
        raise ConfigError(f"--min-detail {min_detail}: give a correlation between 0 and 1 (default 0.6)")
    types = tuple(exclude_types or DEFAULT_EXCLUDE)
    bad = [t for t in types if t not in EXCLUDE_CHOICES]
    if bad:  # checked before the (long) curation run, not after it
        raise ConfigError(f"--exclude-types {','.join(bad)}: choose from {', '.join(EXCLUDE_CHOICES)}")
    res = _curate(data, model=model, oof=oof, folds=folds, seed=seed, outlier_method=outlier_method,
                  outlier_z=outlier_z, quality=QualityLimits(blur_z=blur_z),
                  duplicates=DuplicateLimits(min_detail=min_detail), checks=tuple(checks), n_jobs=n_jobs,
                  max_pixels=max_pixels, log=log)
    files = {k: str(v) for k, v in res.write(out).items()} if out is not None else {}
    if export_clean is not None:
        kept, excluded = res.export_clean(export_clean, types)
        files["clean"], files["excluded"] = str(kept), str(excluded)
    if suggest_labels is not None:
        files["suggested_labels"] = str(res.suggest_labels(suggest_labels))
    return res, files


def active(data: ImageDataset | str | os.PathLike, pool: ImageDataset | str | os.PathLike | Sequence, budget: int, *,
           strategy: str = "entropy", method: str = "lite0+logreg", seed: int = 0, task: str | None = None,
           n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
           out: str | os.PathLike | None = None, log: Callable[[str], Any] = lambda m: None):
    """The ``budget`` images of ``pool`` most worth labelling next (``Suggestions``), ranked by ``strategy``
    with ``method`` trained on ``data``; ``out`` receives ``suggestions.csv`` and ``montage.png``."""
    from .learning.active import suggest

    return suggest(data, pool, budget, strategy=strategy, method=method, seed=seed, task=task, n_jobs=n_jobs,
                   max_pixels=max_pixels, out=out, log=log)


def active_simulate(data: ImageDataset | str | os.PathLike, *,
                    strategies: str | Sequence[str] = ("entropy", "margin", "least-confidence", "coreset", "random"),
                    rounds: int = 8, per_round: int = 50, initial: int = 100, init: str = "stratified",
                    seeds: int | Sequence[int] = 3, method: str = "lite0+logreg",
                    val: float | str | os.PathLike | ImageDataset | None = None, task: str | None = None,
                    n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                    out: str | os.PathLike | None = None, log: Callable[[str], Any] = lambda m: None):
    """Simulate active learning on labelled ``data``: validation accuracy against labels for each strategy
    and random (``SimulationResult``); ``out`` receives the curves and their plot."""
    from .learning.active import simulate

    return simulate(data, strategies=strategies, rounds=rounds, per_round=per_round, initial=initial, init=init,
                    seeds=seeds, method=method, val=val, task=task, n_jobs=n_jobs, max_pixels=max_pixels, out=out,
                    log=log)


def pretrain(data: ImageDataset | str | os.PathLike | None = None, *, method: str | None = None,
             backbone: str | None = None, epochs: int | None = None, batch_size: int | None = None,
             img_size: int | None = None, out: str | os.PathLike | None = None,
             resume: str | os.PathLike | None = None, overwrite: bool = False, seed: int | None = None,
             lr: float | None = None, temperature: float | None = None, view_size: int | None = None,
             hflip: bool | None = None, randaugment: int | None = None, clusters: int | None = None,
             neighbors: int | None = None, entropy_weight: float | None = None, confident: float | None = None,
             unfreeze: int | None = None, view_bank: int | None = None, n_jobs: int | None = None,
             max_pixels: int | None = None, log: Callable[[str], Any] = lambda m: None):
    """Self-supervised pretraining of ``backbone`` on the images of ``data`` (``PretrainResult``); the run
    folder then works as a backbone name. Unset options keep ``PretrainConfig``'s defaults."""
    from .learning.pretrain import pretrain as _pretrain

    options = {"lr": lr, "temperature": temperature, "view_size": view_size, "hflip": hflip,
               "randaugment": randaugment, "clusters": clusters, "neighbors": neighbors,
               "entropy_weight": entropy_weight, "confident": confident, "unfreeze": unfreeze, "view_bank": view_bank}
    return _pretrain(data, method=method, backbone=backbone, epochs=epochs, batch_size=batch_size, img_size=img_size,
                     out=out, resume=resume, seed=seed, n_jobs=n_jobs, max_pixels=max_pixels, log=log,
                     overwrite=overwrite, **options)


# --------------------------------------------------------------------------- deployment


def export(model: str | os.PathLike, *, format: str = "onnx", quantize: str | None = None, opset: int = 17,
           check: bool = False, calibration: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
           log: Callable[[str], Any] = lambda m: None) -> dict[str, Any]:
    """Export a bundle to ONNX with its pre-processing, labels, thresholds and calibration inside; returns a
    summary (file, size, opset, and with ``check`` the largest probability difference from the bundle)."""
    from .deploy import export as _export

    if format.lower() != "onnx":
        raise ConfigError(f"--format {format}: only onnx is supported")
    if not (Path(model) / "model.json").exists():
        raise DataError(f"{model}: not a model bundle (no model.json); pass runs/NAME/model")
    return _export(model, out=out, quantize_mode=quantize, opset=opset, check=check, calibration=calibration,
                   log=log)


def serve(model: str | os.PathLike, *, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          api_key: str | None = None, max_upload_mb: float = 20.0, max_pixels: int = SERVE_MAX_PIXELS,
          decode_memory_mb: float = 512.0, max_batch: int = 32, batch_wait_ms: float = 5.0,
          model_threads: int | None = None, runtime: str = "auto", log_level: str = "info", access_log: bool = True,
          say: Callable[[str], Any] = print, warn: Callable[[str], Any] = lambda m: None) -> None:
    """Serve ``model`` (a bundle folder or ``imagenet:NAME``) over HTTP with uvicorn until interrupted."""
    from .serve.run import run

    run(os.fspath(model), host=host, port=port, workers=workers, api_key=api_key, max_upload_mb=max_upload_mb,
        max_pixels=max_pixels, decode_memory_mb=decode_memory_mb, max_batch=max_batch, batch_wait_ms=batch_wait_ms,
        model_threads=model_threads, runtime=runtime, log_level=log_level, access_log=access_log, say=say, warn=warn)


def predict_to_csv(model, images: Sequence[ImageSource] | ImageDataset, out: str | os.PathLike, *, top_k: int = 3,
                   tta: str | None = None, log: Callable[[str], Any] = lambda m: None) -> dict[str, int]:
    """Predict ``images`` into the CSV ``out`` in chunks, skipping those already there (counts per outcome)."""
    from .deploy.batch import predict_to_csv as _predict_to_csv

    sources = list(images.sources) if isinstance(images, ImageDataset) else list(images)
    return _predict_to_csv(resolve_model(model), sources, out, top_k=top_k, tta=tta, log=log)


# --------------------------------------------------------------------------- several processes


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run the command line ``argv`` (its ``--nproc`` dropped) on ``nproc`` local processes with torchrun;
    returns the exit code."""
    from .training.distributed import launch as _launch
    from .training.distributed import strip_option

    return _launch(strip_option(argv, "--nproc"), nproc)


def shutdown() -> None:
    """Leave torchrun's process group at the end of a distributed command (nothing without one)."""
    from .training.distributed import shutdown as _shutdown

    _shutdown()
