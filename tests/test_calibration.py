"""Temperature scaling: fitted on validation, stored in the bundle, applied by predict; ECE."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_colour_dataset

import imgclass
from imgclass.tasks.calibration import apply_temperature, calibrate, calibration_bins, fit_temperature


def _overconfident(n=2000, k=4, seed=0):
    """Labels drawn from soft probabilities, reported as much sharper ones (logits x 3)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.2, (n, k))
    p_true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=row) for row in p_true])
    sharp = np.exp(3 * logits) / np.exp(3 * logits).sum(1, keepdims=True)
    return y, sharp


def test_temperature_recovers_the_sharpening_and_lowers_ece():
    y, P = _overconfident()
    T = fit_temperature("multiclass", y, P)
    assert T == pytest.approx(3.0, rel=0.15)
    cal = calibrate("multiclass", y, P)
    assert cal["ece_after"] < cal["ece_before"] / 2
    Q = apply_temperature("multiclass", P, T)
    np.testing.assert_array_equal(Q.argmax(1), P.argmax(1))  # accuracy is untouched
    np.testing.assert_allclose(Q.sum(1), 1.0)


def test_multilabel_temperature_is_per_label_sigmoid():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 1, (3000, 3))
    Y = (rng.random((3000, 3)) < 1 / (1 + np.exp(-z))).astype(int)
    P = 1 / (1 + np.exp(-4 * z))  # overconfident
    T = fit_temperature("multilabel", Y, P)
    assert T == pytest.approx(4.0, rel=0.2)
    Q = apply_temperature("multilabel", P, T)
    assert calibration_bins("multilabel", Y, Q)["ece"] < calibration_bins("multilabel", Y, P)["ece"]


def test_ece_of_a_perfectly_calibrated_model_is_small():
    rng = np.random.default_rng(2)
    conf = rng.uniform(0.5, 1.0, 20000)
    y = (rng.random(20000) < conf).astype(int)  # class 1 with probability conf
    P = np.stack([1 - conf, conf], 1)
    assert calibration_bins("binary", y, P)["ece"] < 0.02
    assert fit_temperature("binary", y, P) == pytest.approx(1.0, abs=0.1)


def test_training_fits_stores_and_applies_the_temperature(tmp_path):
    data = write_colour_dataset(tmp_path / "data", n_per_class=40, size=12)
    logs = []
    model = imgclass.train(data, method="pixels+logreg", out=tmp_path / "run", n_jobs=1, log=logs.append)
    cal = model.meta_["calibration"]
    assert cal["method"] == "temperature" and cal["temperature"] > 0 and cal["n"] == 24
    assert any("temperature scaling" in m for m in logs)
    assert (tmp_path / "run" / "plots" / "reliability.png").stat().st_size > 1000
    assert "reliability diagram" in (tmp_path / "run" / "report.html").read_text()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert 0 <= metrics["ece"] <= 1
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert meta["calibration"]["temperature"] == pytest.approx(cal["temperature"])
    files = sorted(str(p) for p in (data / "red").iterdir())[:4]
    again = imgclass.load_model(tmp_path / "run" / "model")
    np.testing.assert_allclose(again.predict_proba(files), model.predict_proba(files))
    raw = imgclass.train(data, method="pixels+logreg", n_jobs=1, calibrate=False)
    assert "calibration" not in raw.meta_ or raw.meta_["calibration"] is None
    expect = apply_temperature("multiclass", raw.predict_proba(files), cal["temperature"])
    np.testing.assert_allclose(model.predict_proba(files), expect, atol=1e-9)
