"""The model bundle: exact round trips, its metadata, and refusing bad, newer or untrusted bundles."""

from __future__ import annotations

import json
import shutil
import zipfile

import numpy as np
import pytest

from imgclass import load_model
from imgclass.data import load_dataset
from imgclass.errors import ModelFormatError
from imgclass.features import make_extractor
from imgclass.models import FORMAT_VERSION, FeaturePipeline, build_model


class NotAllowed:
    """A type that is neither scikit-learn nor numpy: skops must report it as untrusted."""

    def __init__(self):
        self.payload = "rm -rf /"


@pytest.fixture
def colours(colour_folder):
    ds = load_dataset(colour_folder)
    train, val = ds.split(val=0.25, seed=1)
    return train, val


def _round_trip(model, train, val, path):
    model.fit(train)
    before = model.predict_proba(val)
    model.save(path)
    loaded = load_model(path)
    after = loaded.predict_proba(val)
    assert np.array_equal(before, after), np.abs(before - after).max()
    assert loaded.classes_ == model.classes_
    assert loaded.task_ == model.task_
    assert loaded.method == model.method
    assert loaded.preprocess == model.preprocess
    return loaded


@pytest.mark.parametrize("method", ["pixels+svm", "hog,color_hist+logreg"])
def test_round_trip_identical_probabilities(tmp_path, colours, method):
    train, val = colours
    _round_trip(build_model(method, n_jobs=1), train, val, tmp_path / "model")


def test_round_trip_with_fitted_extractor_state(tmp_path, colours):
    train, val = colours
    model = FeaturePipeline(make_extractor("sift", {"sift": {"k": 8, "size": 32}}), "logreg", n_jobs=1)
    loaded = _round_trip(model, train, val, tmp_path / "model")
    assert loaded.extractor.get_params()["k"] == 8
    assert np.array_equal(loaded.extractor.codebook_, model.extractor.codebook_)


def test_model_json_contents(trained):
    meta = json.loads((trained["bundle"] / "model.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["method"] == "pixels+logreg"
    assert meta["task"] == "multiclass"
    assert meta["classes"] == ["blue", "green", "red"]
    assert meta["preprocessing"]["size"] == 16
    assert meta["features"] == ["pixels"] and meta["classifier"] == "logreg"
    assert "accuracy" in meta["metrics"]["val"]
    assert meta["data_fingerprint"] == load_dataset(trained["data"]).fingerprint()


def test_no_pickle_in_bundle(trained):
    files = sorted(p.name for p in trained["bundle"].iterdir())
    assert files == ["estimator.skops", "model.json"]
    assert zipfile.is_zipfile(trained["bundle"] / "estimator.skops")
    with zipfile.ZipFile(trained["bundle"] / "estimator.skops") as z:
        for name in z.namelist():
            assert not name.endswith((".pkl", ".pickle", ".joblib"))
            assert not z.read(name).startswith(b"\x80")   # pickle protocol header


@pytest.fixture
def bundle_copy(trained, tmp_path):
    dest = tmp_path / "model"
    shutil.copytree(trained["bundle"], dest)
    return dest


def test_copied_bundle_loads_and_predicts(bundle_copy, trained):
    m = load_model(bundle_copy)
    srcs = sorted(str(p) for p in (trained["data"] / "green").iterdir())[:3]
    assert [p.label for p in m.predict(srcs)] == ["green"] * 3
    assert m.meta_["bundle"] == str(bundle_copy)
    # model.json itself is accepted as the path too
    assert load_model(bundle_copy / "model.json").classes_ == m.classes_


def test_newer_format_version_refused(bundle_copy):
    mj = bundle_copy / "model.json"
    meta = json.loads(mj.read_text())
    meta["format_version"] = 999
    mj.write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="newer"):
        load_model(bundle_copy)


def test_missing_format_version_refused(bundle_copy):
    mj = bundle_copy / "model.json"
    meta = json.loads(mj.read_text())
    del meta["format_version"]
    mj.write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="format_version"):
        load_model(bundle_copy)


def test_untrusted_type_refused(bundle_copy):
    import skops.io as sio

    est = bundle_copy / "estimator.skops"
    sio.dump({"classifier": NotAllowed(), "extractor_state": {}}, est)
    assert any(t.endswith("NotAllowed") for t in sio.get_untrusted_types(file=est))
    with pytest.raises(ModelFormatError, match="untrusted") as info:
        load_model(bundle_copy)
    assert "NotAllowed" in str(info.value)


def test_untrusted_stdlib_type_refused(bundle_copy):
    import fractions

    import skops.io as sio

    sio.dump({"classifier": fractions.Fraction(1, 3), "extractor_state": {}}, bundle_copy / "estimator.skops")
    with pytest.raises(ModelFormatError, match="untrusted"):
        load_model(bundle_copy)


def test_missing_bundle_folder(tmp_path):
    with pytest.raises(ModelFormatError, match="not a model bundle"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match="not a model bundle"):
        load_model(tmp_path / "empty")


def test_missing_or_damaged_estimator(bundle_copy):
    est = bundle_copy / "estimator.skops"
    est.write_bytes(b"not a zip file")
    with pytest.raises(ModelFormatError):
        load_model(bundle_copy)
    est.unlink()
    with pytest.raises(ModelFormatError, match="missing"):
        load_model(bundle_copy)


def test_damaged_model_json(bundle_copy):
    (bundle_copy / "model.json").write_text("{ this is not json")
    with pytest.raises(ModelFormatError, match="damaged"):
        load_model(bundle_copy)


def test_unknown_kind(bundle_copy):
    mj = bundle_copy / "model.json"
    meta = json.loads(mj.read_text())
    meta["kind"] = "quantum"
    mj.write_text(json.dumps(meta))
    with pytest.raises(ModelFormatError, match="quantum"):
        load_model(bundle_copy)


def test_unfitted_model_cannot_be_saved(tmp_path):
    with pytest.raises(ModelFormatError, match="unfitted"):
        build_model("pixels+logreg").save(tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_saving_over_a_bundle_replaces_it_cleanly(tmp_path, colours):
    train, _ = colours
    model = build_model("pixels+logreg", n_jobs=1).fit(train)
    dest = tmp_path / "out" / "model"
    model.save(dest)
    model.save(dest, extra={"note": "second"})
    assert json.loads((dest / "model.json").read_text())["note"] == "second"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model"]   # no temp/old folders left
