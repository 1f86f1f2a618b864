"""Cross-validation: stratified folds, mean/std, out-of-fold probabilities, resume after a kill."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import write_colour_dataset

import imgclass
from imgclass.errors import ConfigError, DataError
from imgclass.evaluation.cv import fold_indices


def test_folds_are_stratified_disjoint_and_cover_everything(tmp_path):
    ds = imgclass.load_dataset(write_colour_dataset(tmp_path / "d", n_per_class=10, size=8))
    plan = fold_indices(ds, folds=5, repeats=2, seed=0)
    assert len(plan) == 10
    for r in (0, 1):
        vals = [va for rr, _, _, va in plan if rr == r]
        assert sorted(np.concatenate(vals).tolist()) == list(range(len(ds)))  # each image in one val fold
        for rr, _, tr, va in plan:
            if rr == r:
                assert not set(tr) & set(va)
                assert np.bincount(ds.targets[va], minlength=3).tolist() == [2, 2, 2]  # stratified
    assert not np.array_equal(plan[0][3], plan[5][3])  # repeats reshuffle
    with pytest.raises(ConfigError, match="--folds"):
        fold_indices(ds, folds=1, repeats=1, seed=0)
    with pytest.raises(DataError, match="fewer --folds"):
        fold_indices(ds, folds=50, repeats=1, seed=0)


def test_multilabel_folds_use_iterative_stratification(tmp_path):
    from imgclass.data import ImageDataset

    rng = np.random.default_rng(0)
    Y = (rng.random((60, 4)) < [0.5, 0.3, 0.2, 0.1]).astype(np.uint8)
    Y[Y.sum(1) == 0, 0] = 1
    ds = ImageDataset(sources=[f"{i}.png" for i in range(60)], targets=Y, classes=list("abcd"), task="multilabel")
    plan = fold_indices(ds, folds=3, repeats=1, seed=0)
    per_fold = np.array([Y[va].sum(0) for *_, va in plan])
    assert (per_fold.max(0) - per_fold.min(0) <= 2).all()  # every label spread evenly


def test_cv_classical_reports_mean_std_and_writes_oof(tmp_path):
    data = write_colour_dataset(tmp_path / "d", n_per_class=12, size=10)
    res = imgclass.cv(data, "pixels+logreg", folds=3, out=tmp_path / "cv", n_jobs=1)
    assert len(res.folds) == 3 and {f["fold"] for f in res.folds} == {0, 1, 2}
    acc = [f["metrics"]["accuracy"] for f in res.folds]
    assert res.summary["accuracy"]["mean"] == pytest.approx(np.mean(acc))
    assert res.summary["accuracy"]["std"] == pytest.approx(np.std(acc, ddof=1))
    assert res.oof.shape == (36, 3) and not np.isnan(res.oof).any()
    rows = list(csv.DictReader(open(tmp_path / "cv" / "oof.csv")))
    assert len(rows) == 36 and set(rows[0]) == {"path", "true", "blue", "green", "red"}
    assert all(abs(sum(float(r[c]) for c in ("blue", "green", "red")) - 1) < 1e-4 for r in rows)
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["summary"]["accuracy"]["mean"] > 0.8
    with pytest.raises(ConfigError, match="other settings"):  # same --out, other settings
        imgclass.cv(data, "pixels+logreg", folds=4, out=tmp_path / "cv", n_jobs=1)


def test_cv_cli_prints_mean_and_std(tmp_path, capsys):
    from imgclass.cli import main

    data = write_colour_dataset(tmp_path / "d", n_per_class=9, size=10)
    assert main(["cv", str(data), "--method", "pixels+knn", "--folds", "3"]) in (0, None)
    out = capsys.readouterr().out
    assert "3-fold cross-validation" in out and "±" in out and "accuracy" in out


@pytest.mark.subprocess
@pytest.mark.slow
def test_killed_deep_cv_resumes_only_the_missing_folds(tmp_path):
    """A deep 3-fold CV is killed after fold 1 has finished; running it again skips fold 1."""
    data = write_colour_dataset(tmp_path / "d", n_per_class=16, size=16, seed=2)
    out = tmp_path / "cv"
    cmd = [sys.executable, "-m", "imgclass", "cv", str(data), "--method", "smallcnn", "--folds", "3",
           "--epochs", "2", "--img-size", "16", "--out", str(out)]
    env = {**os.environ, "IMGCLASS_JOBS": "1", "IMGCLASS_PROGRESS": "0"}
    victim = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = out / "folds" / "r0-f0.json"
    deadline = time.time() + 240
    while time.time() < deadline and not first.exists() and victim.poll() is None:
        time.sleep(0.02)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert first.exists(), victim.stderr.read()
    assert not (out / "cv.json").exists()
    stamp = first.stat().st_mtime_ns
    logs: list[str] = []
    res = imgclass.cv(data, "smallcnn", folds=3, out=out, train_config={"epochs": 2}, img_size=16,
                          n_jobs=1, log=logs.append)
    assert first.stat().st_mtime_ns == stamp  # fold 1 was not redone
    assert sum("finished earlier, skipped" in m for m in logs) >= 1
    assert len(res.folds) == 3 and (out / "cv.json").exists()
    assert [f["fold"] for f in res.folds] == [0, 1, 2]
