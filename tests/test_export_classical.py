"""ONNX export of feature pipelines: pixels / deep-backbone features in the graph, the classifier through
skl2onnx, calibration and labels as for deep exports; the other features refused with the reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli as _run
from conftest import write_colour_dataset
from PIL import Image

import imgclass
from imgclass.deploy import OnnxModel, export, read_metadata
from imgclass.errors import ConfigError
from imgclass.features import make_extractor
from imgclass.models import FeaturePipeline
from imgclass.transforms import Preprocess


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = write_colour_dataset(tmp_path_factory.mktemp("classical-export") / "colours", n_per_class=8, seed=5)
    return {"root": root, "files": sorted(str(p) for p in root.rglob("*.png")), "ds": imgclass.load_dataset(root)}


def _copy(bundle: Path, dst: Path) -> Path:
    shutil.copytree(bundle, dst)
    return dst


def _labels(model, files) -> list:
    return [p.label for p in imgclass.predict(model, files)]


def _export_and_compare(model: FeaturePipeline, tmp_path: Path, files: list[str]) -> dict:
    """Save ``model``, export it with --check, and compare OnnxModel with the Python model end to end."""
    bundle = tmp_path / "model"
    model.save(bundle)
    s = export(bundle, check=True, calibration=files)
    assert s["check"]["max_abs_diff"] <= 1e-4 and s["check"]["top1_agreement"] == 1.0, s["check"]
    onnx, py = OnnxModel(bundle), imgclass.load_model(bundle)
    assert np.abs(onnx.predict_proba(files) - py.predict_proba(files)).max() <= 1e-4
    assert _labels(onnx, files) == _labels(py, files)
    return s


def test_pixels_logreg_exports_with_labels_and_matches_scikit_learn(trained, tmp_path):
    bundle = _copy(trained["bundle"], tmp_path / "model")
    s = export(bundle, check=True, calibration=str(trained["data"]))
    assert s["check"]["max_abs_diff"] <= 1e-4 and s["check"]["top1_agreement"] == 1.0
    assert s["check"]["reference"] == "scikit-learn"
    meta = read_metadata(bundle / "model.onnx")
    model = trained["model"]
    assert meta["classes"] == list(model.classes_) and meta["task"] == "multiclass"
    assert meta["kind"] == "feature_pipeline" and meta["features"] == ["pixels"] and meta["classifier"] == "logreg"
    assert (meta["input"]["height"], meta["input"]["width"], meta["input"]["dtype"]) == (16, 16, "uint8")
    doc = json.loads((bundle / "model.json").read_text())
    assert doc["onnx"]["sha256"] == s["sha256"] and doc["onnx"]["weights"]
    files = sorted(str(p) for p in Path(trained["data"]).rglob("*.png"))
    assert _labels(OnnxModel(bundle), files) == _labels(imgclass.load_model(bundle), files)


def test_cli_export_then_predict_runtime_onnx_auto_and_stale(trained, tmp_path):
    bundle = _copy(trained["bundle"], tmp_path / "model")
    rc, out, err = _run(["export", str(bundle), "--check", "--calibration", str(trained["data"])])
    assert rc == 0, err
    assert "(OK)" in out
    files = sorted(str(p) for p in Path(trained["data"]).rglob("*.png"))[::4]
    rc_a, out_a, _ = _run(["predict", str(bundle), *files, "--runtime", "onnx"])
    rc_b, out_b, _ = _run(["predict", str(bundle), *files, "--runtime", "torch"])
    assert rc_a == rc_b == 0
    assert [ln.split()[1] for ln in out_a.splitlines()] == [ln.split()[1] for ln in out_b.splitlines()]
    assert isinstance(imgclass.api.resolve_model(str(bundle)), OnnxModel)
    est = bundle / "estimator.skops"  # another classifier in the bundle: the export is stale
    est.write_bytes(est.read_bytes() + b"\0")
    assert not isinstance(imgclass.api.resolve_model(str(bundle)), OnnxModel)


def _multilabel(root: Path) -> Path:
    rng = np.random.default_rng(0)
    colours = {"red": (220, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 220)}
    rows = ["path,labels"]
    (root / "img").mkdir(parents=True)
    for k, combo in enumerate([("red",), ("green",), ("blue",), ("red", "green"), ("green", "blue")]):
        for i in range(5):
            a = np.zeros((16, 16, 3), np.uint8)
            for j, c in enumerate(combo):
                a[:, j * 16 // len(combo):(j + 1) * 16 // len(combo)] = colours[c]
            Image.fromarray(np.clip(a + rng.normal(0, 20, a.shape), 0, 255).astype(np.uint8)).save(root / "img" / f"{k}_{i}.png")
            rows.append(f"img/{k}_{i}.png,{'|'.join(combo)}")
    (root / "ml.csv").write_text("\n".join(rows) + "\n")
    return root / "ml.csv"


@pytest.mark.parametrize("case", ["gray+svm", "rf", "logreg+unseen-class", "multilabel+logreg"])
def test_classifiers_grayscale_unseen_classes_and_temperature_match(case, data, tmp_path):
    files = data["files"]
    if case == "gray+svm":
        model = FeaturePipeline(make_extractor("pixels", {"pixels": {"gray": True}}), "svm").fit(data["ds"])
    elif case == "rf":
        from sklearn.ensemble import RandomForestClassifier

        model = FeaturePipeline("pixels", RandomForestClassifier(n_estimators=20, random_state=0)).fit(data["ds"])
    elif case == "logreg+unseen-class":  # a class without training images: a zero column before calibration
        model = FeaturePipeline("pixels", "logreg")
        model.classes_ = ["blue", "extra", "green", "red"]
        model.fit(files, np.asarray([{"blue": 0, "green": 2, "red": 3}[Path(f).parent.name] for f in files]))
    else:
        csv = _multilabel(tmp_path / "ml")
        model = FeaturePipeline("pixels", "logreg").fit(imgclass.load_dataset(csv))
        files = sorted(str(p) for p in (tmp_path / "ml" / "img").iterdir())
    if case != "rf":  # applied to log-probabilities inside the graph, as calibrated() does in Python
        model.meta_["calibration"] = {"temperature": 1.7}
    s = _export_and_compare(model, tmp_path, files)
    assert read_metadata(s["file"])["temperature"] == (None if case == "rf" else 1.7)


@pytest.mark.slow
def test_deep_backbone_plus_logreg_exports_its_backbone(data, tmp_path):
    # lite0 at 32 px (the packaged ImageNet weights; small so that the test is fast), flip-averaged embeddings
    model = FeaturePipeline(make_extractor("lite0", {"lite0": {"size": 32}}), "logreg").fit(data["ds"])
    model.meta_["calibration"] = {"temperature": 0.8}
    s = _export_and_compare(model, tmp_path, data["files"])
    meta = read_metadata(s["file"])
    assert meta["features"] == ["lite0"] and meta["preprocess"]["resize"] == "crop" and meta["input"]["height"] == 32


def test_features_without_onnx_form_say_why(data, tmp_path):
    model = imgclass.train(data["root"], method="hog+svm", out=tmp_path / "run", n_jobs=1, seed=0)
    bundle = Path(model.run_dir) / "model"
    rc, _, err = _run(["export", str(bundle), "--check"])
    assert rc == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "hog features are computed with scikit-image and have no ONNX form" in err and "pixels+logreg" in err
    assert not (bundle / "model.onnx").exists()
    knn = FeaturePipeline("pixels", "knn").fit(data["ds"])
    with pytest.raises(ConfigError, match="knn classifier .* uniform weights"):
        export(knn, out=tmp_path / "knn.onnx")
    resized = FeaturePipeline("pixels", "logreg", preprocess=Preprocess(size=32)).fit(data["ds"])
    with pytest.raises(ConfigError, match="resize them again to 16x16"):
        export(resized, out=tmp_path / "r.onnx")
    local = FeaturePipeline("pixels", "logreg").fit(data["ds"])
    local.classifier_ = {"": local.classifier_}  # one classifier per tree node (--hierarchy local)
    with pytest.raises(ConfigError, match="hierarchy"):
        export(local, out=tmp_path / "h.onnx")


def test_quantisation_of_classical_graphs(data, tmp_path):
    logreg = FeaturePipeline("pixels", "logreg").fit(data["ds"])
    for mode in ("dynamic", "int8"):
        with pytest.raises(ConfigError, match=f"--quantize {mode}"):
            export(logreg, out=tmp_path / "q.onnx", quantize_mode=mode, calibration=data["files"])
    mlp = FeaturePipeline("pixels", "mlp").fit(data["ds"])
    fp32 = export(mlp, out=tmp_path / "fp32.onnx")
    s = export(mlp, out=tmp_path / "dyn.onnx", quantize_mode="dynamic", check=True, calibration=data["files"])
    assert s["bytes"] < fp32["bytes"] and s["check"]["top1_agreement"] >= 0.9
