"""ONNX export with pre-processing and labels inside; the ONNX Runtime model; quantisation."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import imgclass
from imgclass.cli import main
from imgclass.deploy import OnnxModel, export, read_metadata
from imgclass.errors import ConfigError

SIZE = 24
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}


def _run(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def _write(root: Path, n: int = 10, seed: int = 0, size: int = 28) -> Path:
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = np.clip(np.asarray(rgb)[None, None] + rng.normal(0, 30, (size, size + 4, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{name}_{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    base = tmp_path_factory.mktemp("deploy")
    data = _write(base / "data")
    model = imgclass.train(data, method="smallcnn", img_size=SIZE, out=base / "run", n_jobs=1, seed=0,
                           train_config={"epochs": 2, "batch_size": 8, "lr": 3e-3})
    files = sorted(str(p) for p in data.rglob("*.png"))
    return {"base": base, "data": data, "bundle": Path(model.run_dir) / "model", "model": model, "files": files}


def _copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst)
    return dst


def test_export_carries_labels_preprocessing_and_matches_torch(deep, tmp_path):
    bundle = _copy(deep["bundle"], tmp_path / "model")
    s = export(bundle, check=True, calibration=str(deep["data"]))
    assert s["check"]["max_abs_diff"] <= 1e-4 and s["check"]["top1_agreement"] == 1.0
    meta = read_metadata(bundle / "model.onnx")
    model = deep["model"]
    assert meta["classes"] == list(model.classes_) and meta["task"] == "multiclass"
    assert meta["input"] == {"name": "image", "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                             "height": SIZE, "width": SIZE}
    assert meta["preprocess"]["size"] == SIZE and meta["preprocess"]["resize"] == model.preprocess.resize
    assert meta["temperature"] == (model.meta_.get("calibration") or {}).get("temperature")
    doc = json.loads((bundle / "model.json").read_text())
    assert doc["onnx"]["file"] == "model.onnx" and doc["onnx"]["sha256"] == s["sha256"]


def test_onnx_model_predicts_like_the_trained_model(deep, tmp_path):
    bundle = _copy(deep["bundle"], tmp_path / "model")
    export(bundle)
    onnx = OnnxModel(bundle)
    P_onnx = onnx.predict_proba(deep["files"])
    P_torch = imgclass.load_model(bundle).predict_proba(deep["files"])
    assert np.abs(P_onnx - P_torch).max() < 1e-4
    a = [p.label for p in imgclass.predict(onnx, deep["files"])]
    b = [p.label for p in imgclass.predict(imgclass.load_model(bundle), deep["files"])]
    assert a == b


def test_onnx_model_skips_bad_files(deep, tmp_path):
    bundle = _copy(deep["bundle"], tmp_path / "model")
    export(bundle)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    P = OnnxModel(bundle).predict_proba([deep["files"][0], str(bad)])
    assert np.isfinite(P[0]).all() and np.isnan(P[1]).all()


def test_dynamic_and_static_quantisation_shrink_the_model_and_mostly_agree(deep, tmp_path):
    bundle = _copy(deep["bundle"], tmp_path / "model")
    fp32 = export(bundle, out=tmp_path / "fp32.onnx")
    for mode in ("dynamic", "int8"):
        s = export(bundle, out=tmp_path / f"{mode}.onnx", quantize_mode=mode, check=True,
                   calibration=str(deep["data"]))
        assert s["quantize"] == mode and s["bytes"] < fp32["bytes"]
        assert s["check"]["top1_agreement"] >= 0.9, s["check"]


def test_int8_needs_calibration_images(deep, tmp_path):
    bundle = _copy(deep["bundle"], tmp_path / "model")
    (bundle.parent / "config.yaml").unlink(missing_ok=True)  # no recorded training data to fall back on
    with pytest.raises(ConfigError, match="calibration"):
        export(bundle, out=tmp_path / "q.onnx", quantize_mode="int8")


def test_multilabel_export_uses_sigmoid_and_thresholds(tmp_path):
    rng = np.random.default_rng(0)
    rows = ["path,labels"]
    (tmp_path / "img").mkdir()
    combos = [("red",), ("green",), ("blue",), ("red", "green"), ("green", "blue")]
    for k, combo in enumerate(combos):
        for i in range(6):
            a = np.zeros((SIZE, SIZE, 3), np.uint8)
            for j, c in enumerate(combo):
                a[:, j * SIZE // len(combo):(j + 1) * SIZE // len(combo)] = COLOURS[c]
            a = np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(tmp_path / "img" / f"{k}_{i}.png")
            rows.append(f"img/{k}_{i}.png,{'|'.join(combo)}")
    (tmp_path / "ml.csv").write_text("\n".join(rows) + "\n")
    model = imgclass.train(tmp_path / "ml.csv", method="smallcnn", img_size=SIZE, out=tmp_path / "run", n_jobs=1,
                           seed=0, train_config={"epochs": 2, "batch_size": 8, "lr": 3e-3})
    bundle = Path(model.run_dir) / "model"
    s = export(bundle, check=True, calibration=str(tmp_path / "ml.csv"))
    assert s["check"]["max_abs_diff"] <= 1e-4
    meta = read_metadata(bundle / "model.onnx")
    assert meta["task"] == "multilabel" and len(meta["decision"]["thresholds"]) == 3
    files = sorted(str(p) for p in (tmp_path / "img").iterdir())
    P = OnnxModel(bundle).predict_proba(files)
    assert not np.allclose(P.sum(axis=1), 1.0)  # independent sigmoids, not a softmax


def test_classical_bundle_export_says_why_not(tmp_path, trained):
    with pytest.raises(ConfigError, match="feature pipeline"):
        export(trained["bundle"], out=tmp_path / "x.onnx")
    rc, _, err = _run(["export", str(trained["bundle"]), "--out", str(tmp_path / "x.onnx")])
    assert rc == 2 and "feature pipeline" in err and "Traceback" not in err


def test_cli_export_check_and_bad_options(deep, tmp_path):
    bundle = _copy(deep["bundle"], tmp_path / "model")
    rc, out, err = _run(["export", str(bundle), "--check", "--calibration", str(deep["data"])])
    assert rc == 0, err
    assert "exported" in out and "(OK)" in out and (bundle / "model.onnx").exists()
    rc, _, err = _run(["export", str(bundle), "--format", "tflite"])
    assert rc == 2 and "--format" in err
    rc, _, err = _run(["export", str(tmp_path / "nope")])
    assert rc == 2 and "model bundle" in err
    rc, _, err = _run(["export", str(bundle), "--quantize", "int4", "--calibration", str(deep["data"])])
    assert rc == 2 and "--quantize" in err
