"""Hyper-parameter search (``imgclass tune``): outputs, defaults as trial 0, resume after a kill,
failed trials, ``train --params best.json`` and one-line user errors."""

from __future__ import annotations

import csv
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error as _one_line_error
from conftest import run_cli, write_colour_dataset
from PIL import Image

import imgclass
from imgclass import api
from imgclass.errors import ConfigError, DataError

tune_mod = importlib.import_module("imgclass.training.tuning")

METHOD = "pixels+knn"  # fast, and its defaults (k=5, distance) are beatable on digits


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """10 digit classes x 12 of scikit-learn's 8x8 digits as PNG folders (120 images)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    root = tmp_path_factory.mktemp("tune") / "digits"
    for c in range(10):
        (root / str(c)).mkdir(parents=True)
        for i in np.flatnonzero(d.target == c)[:12]:
            Image.fromarray(np.uint8(d.images[i] * 255 / 16), mode="L").save(root / str(c) / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def study(digits, tmp_path_factory):
    """One 5-trial search shared by the tests that only read its outputs."""
    out = tmp_path_factory.mktemp("tune") / "study"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLASS_JOBS", "1")
        mp.setenv("IMGCLASS_PROGRESS", "0")
        res = api.tune(digits, METHOD, trials=5, out=out, val_split=0.5)
    return res, out


def test_tune_writes_study_best_json_trials_and_plot(study):
    res, out = study
    for f in ("study.db", "best.json", "trials.csv", "optimization.png", "split.json"):
        assert (out / f).is_file(), f
    assert (out / "optimization.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = json.loads((out / "best.json").read_text())
    assert {"method", "params", "value", "metric", "default_value", "trials"} <= set(best)
    assert best["method"] == METHOD and best["metric"] == "accuracy" and best["trials"] == 5 == res.trials
    assert best["value"] == res.value >= res.default_value == best["default_value"]
    assert set(best["params"]) == {"n_neighbors", "weights", "p", "pixels.size"}
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["number"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[0]["defaults"] == "True" and rows[0]["n_neighbors"] == "5" and rows[0]["weights"] == "distance"
    assert float(rows[0]["value"]) == pytest.approx(res.default_value, abs=1e-6)


def test_resume_after_kill_runs_only_the_missing_trials(digits, tmp_path):
    import optuna

    out = tmp_path / "t"
    first = api.tune(digits, METHOD, trials=2, out=out, val_split=0.5)
    assert (first.trials, first.new_trials) == (2, 2)
    # a process killed during trial 2 leaves it RUNNING in the database
    study = optuna.load_study(study_name=METHOD, storage=f"sqlite:///{out / 'study.db'}")
    study.ask()
    logs = []
    again = api.tune(digits, METHOD, trials=4, out=out, val_split=0.5, log=logs.append)
    assert again.new_trials == 2 and again.trials == 4 and again.failed == 1
    assert any("2 of 4 trials finished; running 2 more" in m for m in logs)
    states = [t.state.name for t in optuna.load_study(study_name=METHOD, storage=f"sqlite:///{out / 'study.db'}").trials]
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert sum(t.user_attrs.get("defaults", False) for t in study.trials) == 1  # trial 0 was not repeated
    done = api.tune(digits, METHOD, trials=4, out=out, val_split=0.5)  # nothing left to do
    assert done.new_trials == 0 and done.trials == 4
    with pytest.raises(ConfigError, match="other settings"):
        api.tune(digits, METHOD, trials=5, out=out, val_split=0.5, seed=1)


def test_failing_trials_are_recorded_and_the_search_goes_on(digits, tmp_path, monkeypatch):
    # k = 500 neighbours with 60 training images: scikit-learn refuses at predict time
    monkeypatch.setitem(tune_mod.CLASSIFIER_SPACE, "knn", (tune_mod.Param("n_neighbors", "choice", choices=(500,)),))
    res = api.tune(digits, METHOD, trials=3, out=tmp_path / "f", val_split=0.5, tune_features=False)
    assert (res.complete, res.failed, res.best_trial) == (1, 2, 0)
    rows = list(csv.DictReader((tmp_path / "f" / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["COMPLETE", "FAIL", "FAIL"]
    assert "n_neighbors" in rows[1]["error"]


def test_train_with_params_uses_them_and_keeps_them_in_the_bundle(study, digits, tmp_path):
    res, out = study
    run = tmp_path / "run"
    rc, stdout, err = run_cli(["train", digits, "--params", out / "best.json", "--val-split", "0.5", "--out", run])
    assert rc == 0, err
    model = imgclass.load_model(run / "model")
    assert model.method == METHOD  # taken from best.json
    clf = {k: v for k, v in res.params.items() if "." not in k}
    assert model.classifier_params == clf
    knn = model.classifier_.steps[-1][1]
    assert {k: knn.get_params()[k] for k in clf} == clf
    assert model.extractor.size == res.params["pixels.size"]
    assert model.meta_["metrics"]["val"]["accuracy"] == pytest.approx(res.value)  # same split, same score
    import yaml

    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert cfg["params"]["classifier_params"] == clf


def test_deep_params_route_into_train_config():
    assert tune_mod.route_params("smallcnn", {"lr": 0.01, "mixup": 0.2}) == {"train_config": {"lr": 0.01, "mixup": 0.2}}
    with pytest.raises(ConfigError, match="C"):
        tune_mod.route_params("smallcnn", {"C": 1.0})
    with pytest.raises(ConfigError, match="hog.size"):
        tune_mod.route_params("pixels+svm", {"hog.size": 8})
    assert set(tune_mod.search_space("smallcnn", fixed={"batch_size": 8})) == {
        "lr", "weight_decay", "label_smoothing", "mixup", "dropout"}


def test_deep_trials_report_every_epoch(tmp_path):
    import optuna

    data = write_colour_dataset(tmp_path / "c", n_per_class=8, size=16)
    res = api.tune(data, "smallcnn", trials=2, out=tmp_path / "d", epochs=2, img_size=16, val_split=0.25,
                   train_config={"batch_size": 8, "augment": "light"})
    assert res.trials == 2 and set(res.params) <= {p.name for p in tune_mod.DEEP_SPACE}
    study = optuna.load_study(study_name="smallcnn", storage=f"sqlite:///{tmp_path / 'd' / 'study.db'}")
    assert all(sorted(t.intermediate_values) == [1, 2] for t in study.trials)


def test_help_lists_the_search_space():
    from imgclass.cli.cmd_tune import SPACE_HELP

    for line in tune_mod.space_table().splitlines():
        assert line in SPACE_HELP, line
    for name in tune_mod.search_space("hog+svm"):
        assert name in tune_mod.__doc__


@pytest.mark.parametrize("case", ["trials0", "unknown method", "method differs", "missing params", "bad json"])
def test_user_errors_are_one_line_exit_2(case, study, digits, tmp_path):
    _, out = study
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    argv, needles = {
        "trials0": (["tune", digits, "--method", METHOD, "--trials", "0", "-o", tmp_path / "x"], ["--trials 0"]),
        "unknown method": (["tune", digits, "--method", "nope+svm", "-o", tmp_path / "x"], ["nope"]),
        "method differs": (["train", digits, "--method", "pixels+svm", "--params", out / "best.json"],
                           ["--method pixels+svm", METHOD]),
        "missing params": (["train", digits, "--params", tmp_path / "none.json"], ["--params", "none.json"]),
        "bad json": (["train", digits, "--params", bad], ["--params", "not valid JSON"]),
    }[case]
    _one_line_error(*run_cli(argv), *needles)


def test_unlabelled_data_is_refused(tmp_path):
    folder = tmp_path / "flat"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "a.png")
    with pytest.raises(DataError):
        api.tune(folder, METHOD, trials=2, out=tmp_path / "o")
