"""``compare``: several methods on the same split, one leaderboard.

Methods that share a feature extractor share one extraction pass (``hog+svm`` and ``hog+rf``
decode and describe each image once); each method's fit time still includes that extraction.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..data import ImageDataset
from ..errors import ConfigError
from ..models import build_model, parse_spec
from ..tasks import metrics
from ..tasks.decision import tune_decision


def _dir_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def compare(train: ImageDataset, val: ImageDataset, methods: Sequence[str], seed: int = 0,
            n_jobs: int | None = None, speed_sample: int = 256, save_dir: str | Path | None = None,
            preprocess=None, log: Callable[[str], Any] = print) -> list[dict[str, Any]]:
    """Fit every method on ``train``, score it on ``val``; rows sorted best first.

    Each row: method, accuracy (or micro-F1 for multilabel), macro_f1, fit_s (feature extraction +
    classifier fit), predict_ips (end-to-end images/s from files, measured on up to
    ``speed_sample`` validation images), size_bytes (the saved bundle), and the full metrics.
    Bundles are kept under ``save_dir/<method>/`` when given.
    """
    specs = [parse_spec(m) for m in methods]
    if len({s.text for s in specs}) != len(specs):
        raise ConfigError("--methods lists a method twice")
    if not len(val):
        raise ConfigError("compare needs a validation split; use --val-split > 0 or pre-split folders")
    cache: dict[tuple, tuple] = {}
    rows = []
    for spec in specs:
        if spec.kind == "deep":
            rows.append(_compare_deep(spec, train, val, seed, n_jobs, preprocess, speed_sample, save_dir, log))
            continue
        model = build_model(spec.text, seed=seed, n_jobs=n_jobs, preprocess=preprocess)
        model.classes_, model.task_, model.taxonomy_ = list(train.classes), train.task, train.taxonomy
        key = (spec.features, repr(model.preprocess.to_dict()))
        if key not in cache or model.extractor.needs_fit:
            t0 = time.perf_counter()
            model.fit_extractor(train)
            ftr = model.features(train, f"{'+'.join(spec.features)} (train)")
            fva = model.features(val, f"{'+'.join(spec.features)} (val)")
            cache[key] = (ftr, fva, time.perf_counter() - t0, model.extractor)
        ftr, fva, extract_s, extractor = cache[key]
        model.extractor = extractor
        t0 = time.perf_counter()
        model.fit_features(ftr.X, train.targets[ftr.ok])
        fit_s = extract_s + (time.perf_counter() - t0)
        P = model.predict_proba_features(fva.X)
        model.decision_ = tune_decision(train.task, model.classes_, val.targets[fva.ok], P, taxonomy=train.taxonomy)
        m = metrics(train.task, val.targets[fva.ok], P, model.classes_, decision=model.decision_)
        sample = val.sources[:speed_sample]
        t0 = time.perf_counter()
        model.predict_proba(sample)
        ips = len(sample) / max(time.perf_counter() - t0, 1e-9)
        rows.append(_row(spec, model, m, fit_s, ips, train, save_dir, len(ftr.errors) + len(fva.errors), log))
    rows.sort(key=lambda r: (-(r["accuracy"] or 0), -(r["macro_f1"] or 0)))
    return rows


def _row(spec, model, m, fit_s, ips, train, save_dir, skipped, log) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(save_dir) / spec.text if save_dir else Path(tmp) / "model"
        model.save(dest, metrics={"val": {k: v for k, v in m.items() if isinstance(v, float)}},
                   data_fingerprint=train.fingerprint())
        size = _dir_size(dest)
    score_key = "micro_f1" if train.task == "multilabel" else "accuracy"
    row = {"method": spec.text, "accuracy": m.get(score_key), "macro_f1": m.get("macro_f1"),
           "fit_s": fit_s, "predict_ips": ips, "size_bytes": size, "metrics": m, "skipped": skipped}
    log(f"{spec.text}: accuracy {row['accuracy']:.4f}, macro-F1 {row['macro_f1']:.4f}, fit {fit_s:.1f}s")
    return row


def _compare_deep(spec, train, val, seed, n_jobs, preprocess, speed_sample, save_dir, log) -> dict[str, Any]:
    """A deep method in the leaderboard: trained by the engine with its default options."""
    import numpy as np

    from ..training import fit_model

    t0 = time.perf_counter()
    model, P = fit_model(train, spec.text, val=val, seed=seed, n_jobs=n_jobs, preprocess=preprocess, log=log)
    fit_s = time.perf_counter() - t0
    ok = ~np.isnan(P).any(axis=1)
    m = metrics(train.task, val.targets[ok], P[ok], model.classes_, decision=model.decision_)
    sample = val.sources[:speed_sample]
    t0 = time.perf_counter()
    model.predict_proba(sample)
    ips = len(sample) / max(time.perf_counter() - t0, 1e-9)
    skipped = len(model.meta_.get("train_skipped", [])) + len(model.meta_.get("val_skipped", []))
    return _row(spec, model, m, fit_s, ips, train, save_dir, skipped, log)


__all__ = ["compare"]
