"""``simulate``: replay the labelling loop on labelled data with hidden labels, per strategy and seed."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..._util import progress_bar
from ...data import ImageDataset
from ...errors import ConfigError, DataError
from .curves import SimulationResult
from .inputs import as_dataset, check_method, check_two_classes, feature_pipeline, one_thread
from .strategies import NEEDS_PROBA, check_strategy, geometry, select

INITS = ("stratified", "random")


def _initial_set(y: np.ndarray, n: int, init: str, seed: int) -> np.ndarray:
    """``n`` seeded row indices: equal numbers per class (``stratified``; uses the hidden labels, the way a
    person would label a few examples of each class) or uniformly at random (``random``)."""
    rng = np.random.default_rng(seed)
    if init == "random":
        return np.sort(rng.choice(len(y), n, replace=False))
    classes = np.unique(y)
    members = {c: rng.permutation(np.flatnonzero(y == c)) for c in classes}
    take = dict.fromkeys(classes, n // len(classes))
    for c in rng.permutation(classes)[: n % len(classes)]:
        take[c] += 1
    picked = [members[c][:take[c]] for c in classes]
    short = n - sum(len(p) for p in picked)
    if short > 0:  # small classes: fill from the rest at random
        rest = np.setdiff1d(np.arange(len(y)), np.concatenate(picked))
        picked.append(rng.choice(rest, short, replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _parse_strategies(strategies: str | Sequence[str]) -> list[str]:
    names = [s for s in (strategies.split(",") if isinstance(strategies, str) else strategies) if str(s).strip()]
    if not names:
        raise ConfigError("--strategies is empty; e.g. --strategies entropy,margin,coreset,random")
    out = []
    for s in names:
        key = check_strategy(str(s), "--strategies")
        if key not in out:
            out.append(key)
    if "random" not in out:
        out.append("random")  # the baseline every curve is compared with
    return out


def _split_for_simulation(ds: ImageDataset, val, task):
    """(train indices, val dataset or indices) — a separate validation set, a fraction, or DATA's own split."""
    if isinstance(val, (ImageDataset, str, os.PathLike)) and not _is_fraction(val):
        vds = as_dataset(val, task, "--val")
        missing = sorted(set(vds.classes) - set(ds.classes))
        if missing:
            raise DataError(f"--val {vds.name}: classes {missing[:5]} are not in DATA; use a validation set with "
                            "the same classes")
        return np.flatnonzero(ds.labelled_mask), vds
    frac = 0.2 if val is None else float(val)
    idx = ds.plan_split(val=frac, seed=0)
    if "val" not in idx or not len(idx["val"]):
        raise ConfigError(f"--val {val}: DATA {ds.name} has no validation split; give a fraction such as 0.2 or a "
                          "labelled folder")
    return idx["train"], ds.subset(idx["val"], f"{ds.name}:val")


def _is_fraction(v) -> bool:
    if isinstance(v, (int, float)):
        return True
    try:
        float(str(v))
        return not os.path.exists(str(v))
    except ValueError:
        return False


def simulate(data: ImageDataset | str | os.PathLike,
             strategies: str | Sequence[str] = ("entropy", "margin", "least-confidence", "coreset", "random"),
             rounds: int = 8, per_round: int = 50, initial: int = 100, init: str = "stratified",
             seeds: int | Sequence[int] = 3, method: str = "lite0+logreg",
             val: float | str | os.PathLike | ImageDataset | None = None, *, task: str | None = None,
             n_jobs: int | None = None, max_pixels: int | None = None, out: str | os.PathLike | None = None,
             log: Callable[[str], Any] = lambda m: None) -> SimulationResult:
    """Simulate pool-based active learning on labelled ``data`` and return accuracy-vs-labels curves.

    The labels of the training split are hidden. For every seed, an ``initial`` set (``init``:
    ``stratified`` = equal numbers per class, or ``random``) is labelled; then, for ``rounds`` rounds,
    the classifier is trained, ``per_round`` images are picked from the rest of the training split by
    each strategy and their labels revealed. Validation accuracy is recorded after every round, so each
    curve has ``rounds + 1`` points, from ``initial`` to ``initial + rounds * per_round`` labels.
    ``random`` is always included as the baseline. ``seeds``: a count (``3`` = seeds 0, 1, 2) or a list.

    ``val``: ``None`` uses DATA's validation split (pre-split folders or a split column) or else a
    seeded stratified 20% of it; a fraction carves that much out; a path or ``ImageDataset`` is a
    separate validation set (then all of DATA is the pool). Features of every image are extracted once
    (deep embeddings are also cached on disk); each round refits only the classifier. With ``out``,
    writes ``simulation.json``, ``curves.csv`` and ``simulation.png`` there.
    """
    names, seed_list = _check_schedule(strategies, rounds, per_round, initial, init, seeds)
    check_method(method)
    ds = as_dataset(data, task)
    train_idx, vds = _split_for_simulation(ds, val, task)
    train_idx = train_idx[ds.targets[train_idx] >= 0]
    check_two_classes(ds.targets[train_idx], ds.classes, f"DATA {ds.name}")
    need = initial + rounds * per_round
    if need > len(train_idx):
        raise ConfigError(f"--initial {initial} + --rounds {rounds} x --per-round {per_round} = {need} labels, but "
                          f"the training split of {ds.name} has only {len(train_idx)} images; lower them")

    t0 = time.perf_counter()
    model = feature_pipeline(method, seed_list[0], n_jobs, max_pixels)
    F, y, F_val, y_val, skipped = _features(model, ds, train_idx, vds)
    if need > len(F):
        raise ConfigError(f"only {len(F)} training images could be read, fewer than the {need} labels the schedule "
                          "needs; lower --initial, --rounds or --per-round")
    timings = {"features_s": time.perf_counter() - t0}
    spaces = geometry(F, names)
    model.classes_, model.task_, model.taxonomy_ = list(ds.classes), ds.task, ds.taxonomy
    if model.task_ == "hierarchical":
        model.task_ = "multiclass"  # flat over the leaves: the simulation scores leaf accuracy

    n_labels = [initial + r * per_round for r in range(rounds + 1)]
    curves: dict[str, list[list[float]]] = {s: [] for s in names}
    log(f"simulating {', '.join(names)} on {len(F)} pool images, {len(y_val)} validation images, "
        f"seeds {seed_list}: {n_labels[0]} -> {n_labels[-1]} labels")
    t1 = time.perf_counter()
    with progress_bar(len(seed_list) * len(names) * (rounds + 1), "active learning", unit="fit") as bar:
        for seed in seed_list:
            start = _initial_set(y, initial, init, seed)
            if len(np.unique(y[start])) < 2:
                raise DataError(f"--initial {initial}: the seed-{seed} initial set holds one class only; raise "
                                "--initial or use --init stratified")
            model.seed = seed
            for s in names:
                ts = time.perf_counter()
                curve = _curve(model, s, F, y, F_val, y_val, start, rounds, per_round, seed, spaces.get(s), bar)
                curves[s].append(curve)
                log(f"seed {seed} {s}: {curve[0]:.4f} -> {curve[-1]:.4f} at {n_labels[-1]} labels "
                    f"({time.perf_counter() - ts:.1f} s)")
    timings["loop_s"] = time.perf_counter() - t1
    res = SimulationResult(method=model.method, dataset=ds.name, n_labels=n_labels, seeds=seed_list, curves=curves,
                           initial=initial, per_round=per_round, rounds=rounds, init=init, n_pool=len(F),
                           n_val=len(y_val), timings=timings, skipped=skipped)
    if out is not None:
        res.write(out)
    return res


def _check_schedule(strategies, rounds: int, per_round: int, initial: int, init: str,
                    seeds: int | Sequence[int]) -> tuple[list[str], list[int]]:
    """``(strategy names, seed list)`` after checking the schedule's options."""
    names = _parse_strategies(strategies)
    if init not in INITS:
        raise ConfigError(f"--init {init!r}: choose from {', '.join(INITS)}")
    for opt, v, low in (("--rounds", rounds, 1), ("--per-round", per_round, 1), ("--initial", initial, 2)):
        if int(v) < low:
            raise ConfigError(f"{opt} {v}: must be at least {low}")
    seed_list = list(range(int(seeds))) if isinstance(seeds, (int, np.integer)) else [int(s) for s in seeds]
    if not seed_list:
        raise ConfigError("--seeds: give at least one seed")
    return names, seed_list


def _features(model, ds: ImageDataset, train_idx: np.ndarray, vds: ImageDataset):
    """Features of the pool (the training split) and of the validation set, extracted once:
    ``(F, y, F_val, y_val, skipped)`` with validation targets in ``ds``'s class order."""
    tr_sources = [ds.sources[i] for i in train_idx]
    model.fit_extractor(tr_sources)
    feats = model.features(tr_sources + list(vds.sources), "features (train + val)")
    n_tr = len(tr_sources)
    pos = np.cumsum(feats.ok) - 1
    ok_tr, ok_va = feats.ok[:n_tr], feats.ok[n_tr:]
    F = feats.X[pos[:n_tr][ok_tr]]
    y = ds.targets[train_idx][ok_tr]
    index = {c: i for i, c in enumerate(ds.classes)}
    y_val_all = np.asarray([index[vds.classes[t]] if t >= 0 else -1 for t in vds.targets], dtype=np.int64)
    F_val, y_val = feats.X[pos[n_tr:][ok_va]], y_val_all[ok_va]
    F_val, y_val = F_val[y_val >= 0], y_val[y_val >= 0]
    if not len(y_val):
        raise DataError(f"--val: no readable labelled validation images in {vds.name}")
    return F, y, F_val, y_val, feats.errors


def _curve(model, strategy: str, F: np.ndarray, y: np.ndarray, F_val: np.ndarray, y_val: np.ndarray,
           start: np.ndarray, rounds: int, per_round: int, seed: int, Z: np.ndarray | None, bar) -> list[float]:
    """One strategy's curve for one seed: validation accuracy after each round, from the ``start`` set."""
    labelled = np.zeros(len(F), dtype=bool)
    labelled[start] = True
    curve = []
    for r in range(rounds + 1):
        with one_thread():
            lab = np.flatnonzero(labelled)
            model.fit_features(F[lab], y[lab])
            curve.append(float((model.predict_proba_features(F_val).argmax(axis=1) == y_val).mean()))
            bar.advance(1)
            if r == rounds:
                break
            rest = np.flatnonzero(~labelled)
            P = model.predict_proba_features(F[rest]) if strategy in NEEDS_PROBA else None
            picks, _ = select(strategy, per_round, proba=P, features=None if Z is None else Z[rest],
                              labelled_features=None if Z is None else Z[lab], n=len(rest),
                              seed=seed * 100_003 + r)
            labelled[rest[picks]] = True
    return curve
