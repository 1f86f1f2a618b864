"""Learning from unlabelled images: clustering, curation, active learning and self-supervised pretraining."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data import ImageDataset
from ..data.decode import DEFAULT_MAX_PIXELS
from ..errors import ConfigError, DataError
from ..transforms import Preprocess


def cluster(data: ImageDataset | str | os.PathLike | Sequence[str], *, features: str = "lite0", algo: str = "kmeans",
            k: int | str | None = None, reduce: str = "pca", dims: int | None = 50, whiten: bool = False,
            normalize: bool = True, seed: int = 0, k_range: tuple[int, int] = (2, 20),
            params: dict[str, Any] | None = None, preprocess: Preprocess | dict | None = None,
            n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            name_with: ImageDataset | str | os.PathLike | None = None, save_model: str | os.PathLike | None = None,
            out: str | os.PathLike | None = None, log: Callable[[str], Any] = lambda m: None):
    """Cluster the images of ``data`` (a ``ClusterResult``); ``name_with`` a few labelled images names the
    clusters, ``save_model`` then saves them as a classifier bundle, and ``out`` receives the report files."""
    from ..learning.cluster import cluster as _cluster

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
    from ..curation import DEFAULT_EXCLUDE, EXCLUDE_CHOICES
    from ..curation import curate as _curate
    from ..curation.duplicates import DuplicateLimits
    from ..curation.quality import QualityLimits

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
    from ..learning.active import suggest

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
    from ..learning.active import simulate

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
    from ..learning.pretrain import pretrain as _pretrain

    options = {"lr": lr, "temperature": temperature, "view_size": view_size, "hflip": hflip,
               "randaugment": randaugment, "clusters": clusters, "neighbors": neighbors,
               "entropy_weight": entropy_weight, "confident": confident, "unfreeze": unfreeze, "view_bank": view_bank}
    return _pretrain(data, method=method, backbone=backbone, epochs=epochs, batch_size=batch_size, img_size=img_size,
                     out=out, resume=resume, seed=seed, n_jobs=n_jobs, max_pixels=max_pixels, log=log,
                     overwrite=overwrite, **options)
