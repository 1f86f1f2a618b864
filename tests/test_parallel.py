"""The multi-process (joblib) extraction path gives the same result as the in-process path."""

from __future__ import annotations

import numpy as np

from imgclass.data import load_dataset
from imgclass.features import extract_features, make_extractor
from imgclass.models import build_model
from imgclass.transforms import Preprocess


def test_two_workers_match_one_process(tmp_path, make_colour_dataset, make_bad_files, monkeypatch):
    data = make_colour_dataset(tmp_path / "many", n_per_class=24, size=16, seed=5)   # 72 images
    bad = make_bad_files(tmp_path / "bad")
    ds = load_dataset(data)
    assert len(ds) >= 64
    sources = list(ds.sources)
    sources.insert(40, str(bad["zero"]))
    sources.insert(10, str(bad["corrupt"]))

    import joblib

    calls = []
    real_parallel = joblib.Parallel

    class SpyParallel(real_parallel):
        def __init__(self, *args, **kwargs):
            calls.append(kwargs.get("n_jobs"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(joblib, "Parallel", SpyParallel)

    ex = make_extractor("pixels")
    serial = extract_features(ex, sources, Preprocess(size=16), n_jobs=1)
    assert calls == []
    parallel = extract_features(ex, sources, Preprocess(size=16), n_jobs=2)
    assert calls == [2]          # the joblib path really ran, with two workers

    assert np.array_equal(parallel.ok, serial.ok)
    assert np.array_equal(parallel.X, serial.X)
    assert sorted(parallel.errors) == sorted(serial.errors)
    assert {p for p, _ in parallel.errors} == {str(bad["zero"]), str(bad["corrupt"])}

    # and a model trained and used with two workers predicts like the serial one
    model = build_model("pixels+logreg", n_jobs=2).fit(ds)
    P2 = model.predict_proba(sources)
    model.n_jobs = 1
    P1 = model.predict_proba(sources)
    assert np.array_equal(np.isnan(P1), np.isnan(P2))
    ok = ~np.isnan(P1).any(axis=1)
    assert np.allclose(P1[ok], P2[ok], atol=1e-12)
    assert model.predict([sources[10]]) == [None]
