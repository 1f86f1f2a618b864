"""``cross_validate``: k-fold (optionally repeated) cross-validation for every method, resumable.

Folds are stratified (scikit-learn's ``RepeatedStratifiedKFold``; iterative stratification from
``iterstrat`` for multi-label data). Each finished fold is written atomically to
``OUT/folds/r{repeat}-f{fold}.json`` with its metrics and out-of-fold probabilities, so a killed run
started again with the same ``out`` skips the finished folds; a deep fold that was interrupted
continues from its own last checkpoint. Every fold is scored with the task's default decision rule
(arg-max, 0.5 per label): thresholds and temperatures tuned on a test fold would leak it. The
out-of-fold probabilities (``oof.csv``) are what threshold tuning, calibration studies and the
curation tools should use.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write_json, atomic_write_text, progress_bar
from ..data import ImageDataset
from ..errors import ConfigError, DataError
from ..tasks import headline, metrics


@dataclass
class CVResult:
    """Per-fold metrics, their mean and standard deviation, and out-of-fold probabilities."""

    method: str
    task: str
    classes: list[str]
    folds: list[dict[str, Any]] = field(default_factory=list)  # {repeat, fold, n_train, n_val, metrics, fit_s}
    oof: np.ndarray | None = None  # (n, n_classes) mean over repeats; NaN where never predicted
    items: list[str] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, dict[str, float]]:
        """``{metric: {"mean": m, "std": s}}`` over folds, for the task's headline metrics."""
        keys = list(self.folds[0]["metrics"]) if self.folds else []
        out = {}
        for k in keys:
            vals = np.array([f["metrics"][k] for f in self.folds if isinstance(f["metrics"].get(k), (int, float))],
                            dtype=float)
            if len(vals):
                out[k] = {"mean": float(np.nanmean(vals)), "std": float(np.nanstd(vals, ddof=1)) if len(vals) > 1 else 0.0}
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "task": self.task, "classes": self.classes, "folds": self.folds,
                "summary": self.summary}


def fold_indices(ds: ImageDataset, folds: int, repeats: int, seed: int) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(repeat, fold, train_idx, val_idx)`` for stratified (repeated) k-fold on ``ds``."""
    if folds < 2:
        raise ConfigError(f"--folds {folds}: use at least 2")
    if repeats < 1:
        raise ConfigError(f"--repeats {repeats}: use at least 1")
    labelled = np.flatnonzero(ds.labelled_mask)
    y = ds.targets[labelled]
    if len(labelled) < folds:
        raise DataError(f"{ds.name}: {len(labelled)} labelled images cannot make {folds} folds; use fewer --folds")
    X = np.zeros((len(labelled), 1))
    if y.ndim == 2:
        from iterstrat.ml_stratifiers import RepeatedMultilabelStratifiedKFold

        splitter = RepeatedMultilabelStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    else:
        from sklearn.model_selection import RepeatedStratifiedKFold

        counts = np.bincount(y)
        if counts[counts > 0].max() < folds:
            raise DataError(f"{ds.name}: no class has {folds} images; use fewer --folds")
        splitter = RepeatedStratifiedKFold(n_splits=folds, n_repeats=repeats, random_state=seed)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only N members"
        parts = list(splitter.split(X, y))
    return [(i // folds, i % folds, labelled[tr], labelled[va]) for i, (tr, va) in enumerate(parts)]


def cross_validate(ds: ImageDataset, method: str, folds: int = 5, repeats: int = 1, seed: int = 0,
                   out: str | Path | None = None, log: Callable[[str], Any] = lambda m: None,
                   **fit_kw) -> CVResult:
    """Cross-validate ``method`` on ``ds``; with ``out`` each fold is kept and a rerun resumes.

    ``fit_kw`` go to ``imgclass.training.fit_model`` (``n_jobs``, ``preprocess``, ``train_config``,
    ``img_size``, ``pretrained``, ``hierarchy``, ``balance``, ...).
    """
    from ..models import TaskOptions, parse_spec
    from ..training import fit_model

    spec = parse_spec(method)
    options = TaskOptions(hierarchy=fit_kw.pop("hierarchy", "flat"), balance=fit_kw.pop("balance", None),
                          calibrate=False)
    if not ds.is_labelled:
        raise DataError(f"{ds.name}: has no labels; cross-validation needs labelled data")
    plan = fold_indices(ds, folds, repeats, seed)
    task = ds.task or "multiclass"
    out = Path(out) if out is not None else None
    config = {"method": method, "folds": folds, "repeats": repeats, "seed": seed, "data": ds.fingerprint()}
    if out is not None:
        _check_or_write_config(out, config)
    res = CVResult(method=method, task=task, classes=list(ds.classes),
                   items=[ds.relpath(i) for i in range(len(ds))])
    sums = np.zeros((len(ds), len(ds.classes)))
    seen = np.zeros(len(ds))
    with progress_bar(len(plan), f"cv {method}") as bar:
        for r, k, tr, va in plan:
            name = f"r{r}-f{k}"
            done = out / "folds" / f"{name}.json" if out is not None else None
            if done is not None and done.exists():
                rec = json.loads(done.read_text(encoding="utf-8"))
                log(f"fold {k + 1}/{folds} (repeat {r + 1}): finished earlier, skipped")
            else:
                t0 = time.perf_counter()
                ckpt = out / "folds" / name / "checkpoints" if out is not None and spec.kind == "deep" else None
                model, P = fit_model(ds.subset(tr, f"{ds.name}:cv-train"), spec, val=ds.subset(va, f"{ds.name}:cv-val"),
                                     seed=seed, log=log, ckpt_dir=ckpt, resume=ckpt is not None and ckpt.exists(),
                                     options=options, **fit_kw)
                ok = ~np.isnan(P).any(axis=1)
                m = metrics(task, ds.targets[va][ok], P[ok], res.classes) if ok.any() else {}
                rec = {"repeat": r, "fold": k, "n_train": int(len(tr)), "n_val": int(len(va)),
                       "fit_s": time.perf_counter() - t0, "metrics": _scalars(m),
                       "val_index": va.tolist(), "probabilities": np.where(np.isnan(P), None, P).tolist()}
                if done is not None:
                    atomic_write_json(done, rec)
                score = next(iter(headline(task, m).items()), ("score", float("nan")))
                log(f"fold {k + 1}/{folds} (repeat {r + 1}): {score[0]} {score[1]:.4f} in {rec['fit_s']:.0f} s")
            P = np.array([[np.nan if v is None else v for v in row] for row in rec["probabilities"]], dtype=float)
            idx = np.asarray(rec["val_index"], dtype=np.int64)
            ok = ~np.isnan(P).any(axis=1) if len(P) else np.zeros(0, bool)
            sums[idx[ok]] += P[ok]
            seen[idx[ok]] += 1
            res.folds.append({k2: v for k2, v in rec.items() if k2 not in ("val_index", "probabilities")})
            bar.advance(1)
    with np.errstate(invalid="ignore"):
        res.oof = sums / seen[:, None]
    res.oof[seen == 0] = np.nan
    if out is not None:
        atomic_write_json(out / "cv.json", res.to_dict())
        atomic_write_text(out / "oof.csv", _oof_csv(ds, res))
    return res


def _scalars(m: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n"}


def _check_or_write_config(out: Path, config: dict[str, Any]) -> None:
    f = out / "cv_config.json"
    if f.exists():
        old = json.loads(f.read_text(encoding="utf-8"))
        if old != config:
            diff = [k for k in config if old.get(k) != config[k]]
            raise ConfigError(f"{out}: holds a cross-validation with other settings ({', '.join(diff)}); "
                              "use another --out or delete it")
    else:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(f, config)


def _oof_csv(ds: ImageDataset, res: CVResult) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "true"] + list(res.classes))
    for i, row in enumerate(res.oof):
        if np.isnan(row).any():
            continue
        if ds.targets.ndim == 2:
            truth = "|".join(res.classes[j] for j in np.flatnonzero(ds.targets[i]))
        else:
            truth = res.classes[ds.targets[i]] if ds.targets[i] >= 0 else ""
        w.writerow([res.items[i], truth] + [f"{v:.6f}" for v in row])
    return buf.getvalue()
