"""ONNX export with pre-processing and labels inside; the ONNX Runtime model; quantisation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli as _run
from PIL import Image

import imgclass
from imgclass.deploy import OnnxModel, export, read_metadata
from imgclass.errors import ConfigError

SIZE = 24
COLOURS = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}


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


@pytest.mark.slow
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


# feature pipelines (pixels+logreg exports, hog+svm says why not): tests/test_export_classical.py


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


# --------------------------------------------------------------------------- runtime choice and batch prediction
def test_predict_runtime_auto_uses_onnx_and_onnx_requires_an_export(deep, tmp_path):
    bundle = _copy(deep["bundle"], tmp_path / "model")
    rc, _, err = _run(["predict", str(bundle), deep["files"][0], "--runtime", "onnx"])
    assert rc == 2 and "imgclass export" in err
    assert not isinstance(imgclass.api.resolve_model(str(bundle)), OnnxModel)
    export(bundle)
    assert isinstance(imgclass.api.resolve_model(str(bundle)), OnnxModel)
    assert not isinstance(imgclass.api.resolve_model(str(bundle), runtime="torch"), OnnxModel)
    rc_a, out_a, _ = _run(["predict", str(bundle), *deep["files"][:5], "--runtime", "onnx"])
    rc_b, out_b, _ = _run(["predict", str(bundle), *deep["files"][:5], "--runtime", "torch"])
    assert rc_a == rc_b == 0 and [ln.split()[1] for ln in out_a.splitlines()] == [ln.split()[1] for ln in out_b.splitlines()]


def test_stale_export_is_not_used(deep, tmp_path):
    bundle = _copy(deep["bundle"], tmp_path / "model")
    export(bundle)
    w = bundle / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + bytes([w.read_bytes()[-1] ^ 1]))  # other weights
    assert not isinstance(imgclass.api.resolve_model(str(bundle)), OnnxModel)
    with pytest.raises(ConfigError, match="other weights"):
        imgclass.api.resolve_model(str(bundle), runtime="onnx")


class _Killed(Exception):
    pass


def test_batch_prediction_resumes_after_a_kill_and_predicts_each_image_once(deep, tmp_path):
    import csv

    from imgclass.deploy.batch import predict_to_csv

    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    files = deep["files"] + [str(bad)]
    model = imgclass.load_model(deep["bundle"])
    out = tmp_path / "preds.csv"
    real = model.predict_proba
    calls = {"n": 0}

    def dying(X):  # the process "dies" during its third chunk
        calls["n"] += 1
        if calls["n"] == 3:
            raise _Killed
        return real(X)

    model.predict_proba = dying
    with pytest.raises(_Killed):
        predict_to_csv(model, files, out, chunk=7)
    with open(out, "a") as f:  # and a row cut off mid-write
        f.write(f"{files[20]},red,0.9")
    model.predict_proba = real
    c = predict_to_csv(model, files, out, chunk=7)
    assert c["skipped"] == 14 and c["predicted"] == len(files) - 14 and c["errors"] == 1
    rows = list(csv.DictReader(open(out)))
    assert [r["path"] for r in rows] == files  # every image exactly once, in input order
    assert rows[-1]["error"] and not rows[-1]["label"]
    assert all(r["label"] in COLOURS and float(r["probability"]) > 0 for r in rows[:-1])
    assert predict_to_csv(model, files, out)["predicted"] == 0  # nothing left to do


def test_cli_predict_out_writes_csv(deep, tmp_path):
    out = tmp_path / "p.csv"
    rc, stdout, err = _run(["predict", str(deep["bundle"]), str(deep["data"]), "--out", str(out)])
    assert rc == 0, err
    assert f"{len(deep['files'])} predicted" in stdout
    rc, stdout, _ = _run(["predict", str(deep["bundle"]), str(deep["data"]), "--out", str(out)])
    assert rc == 0 and "0 predicted" in stdout and f"{len(deep['files'])} already there" in stdout


def test_tf_same_padding_is_folded_into_the_convolutions():
    """timm's TF-"same" convolutions export a run-time Pad before each Conv; the export folds them into
    the Conv's own pads (uint8 NHWC input, as the exported graphs take) with identical outputs."""
    import io

    import onnx
    import onnxruntime as ort
    import torch
    from timm.layers import Conv2dSame

    from imgclass.runtime import fold_static_pads

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = Conv2dSame(3, 4, 3, stride=2), Conv2dSame(4, 2, 5, stride=1)

        def forward(self, image):  # uint8 NHWC, like the exported graphs
            return self.b(torch.relu(self.a(image.permute(0, 3, 1, 2).float() / 255)))

    import warnings

    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), torch.zeros(1, 15, 15, 3, dtype=torch.uint8), buf, dynamo=False,
                          input_names=["image"], dynamic_axes={"image": {0: "batch"}})
    raw = buf.getvalue()
    folded = fold_static_pads(raw)

    def pads(b):
        return sum(n.op_type == "Pad" for n in onnx.load_from_string(b).graph.node)

    assert pads(raw) == 2 and pads(folded) == 0
    x = np.random.default_rng(0).integers(0, 256, (3, 15, 15, 3), dtype=np.uint8)
    run = [ort.InferenceSession(b, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0] for b in (raw, folded)]
    assert np.array_equal(run[0], run[1])


def _prologue_net(mean, std):
    """uint8 NHWC in, normalised in the graph like an exported bundle, then a conv net."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
            self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.conv2 = torch.nn.Conv2d(8, 8, 3, padding=1)
            self.fc = torch.nn.Linear(8, 4)

        def forward(self, image):
            x = (image.permute(0, 3, 1, 2).float() - self.mean) / self.std
            x = torch.nn.functional.relu6(self.conv2(torch.nn.functional.relu6(self.conv(x))))
            return torch.softmax(self.fc(x.mean(dim=(2, 3))), dim=1)

    return Net().eval()


def _run_onnx(data: bytes, x):
    import onnxruntime as ort

    return ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]


@pytest.mark.parametrize("scalar", [True, False])
def test_int8_graph_reads_the_uint8_image_directly(scalar, tmp_path, monkeypatch):
    """Scalar mean/std: the float prologue (Cast, Sub, Div, QuantizeLinear) is gone and the first
    convolution dequantises the pixels themselves, agreeing with the plain quantised graph. Per-channel
    normalisation is left as the quantiser wrote it."""
    import importlib
    import io

    import onnx
    import torch

    export_mod = importlib.import_module("imgclass.deploy.export")

    net = _prologue_net((127.5,) * 3 if scalar else (120.0, 115.0, 100.0), (127.5,) * 3 if scalar else (60.0, 62.0, 65.0))
    rng = np.random.default_rng(0)
    calib = rng.integers(0, 256, (32, 24, 24, 3), dtype=np.uint8)
    calib[0, 0, 0] = 0
    calib[0, 0, 1] = 255
    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, torch.zeros(1, 24, 24, 3, dtype=torch.uint8), buf, dynamo=False, input_names=["image"],
                          output_names=["probabilities"], opset_version=17, dynamic_axes={"image": {0: "b"}})
    q = export_mod.quantize(buf.getvalue(), "int8", calib, workdir=tmp_path)
    ops = [n.op_type for n in onnx.load_from_string(q).graph.node]
    assert ("Cast" not in ops and "Sub" not in ops and "Div" not in ops) == scalar
    monkeypatch.setattr(export_mod, "feed_uint8_input", lambda m: False)
    plain = export_mod.quantize(buf.getvalue(), "int8", calib, workdir=tmp_path)
    x = rng.integers(0, 256, (16, 24, 24, 3), dtype=np.uint8)
    Pq, Pp = _run_onnx(q, x), _run_onnx(plain, x)
    with torch.no_grad():
        Pf = net(torch.from_numpy(x)).numpy()
    assert np.abs(Pq - Pp).max() < 0.02  # the same quantised network, to within a rounding step
    assert np.abs(Pq - Pf).max() < 0.05
