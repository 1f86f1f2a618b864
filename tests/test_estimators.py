"""The estimator contract: every model clones with scikit-learn, keeps its hyper-parameters in the
constructor, and a deep model fits, predicts and round-trips through its bundle by itself."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_colour_dataset
from sklearn.base import clone

from imgclass import load_dataset
from imgclass.models import FeaturePipeline, ImageClassifier, TaskOptions, build_model, parse_spec
from imgclass.models.deep import DeepClassifier
from imgclass.models.pretrained import ImageNetClassifier


def _estimators():
    return [
        FeaturePipeline("hog", "svm", balance="weights", hierarchy="local", classifier_params={"C": 3.0}),
        build_model("pixels,color_hist+logreg", options=TaskOptions(positive="1", calibrate=False)),
        DeepClassifier("smallcnn", pretrained=None, train_config={"epochs": 1}, hierarchy="local",
                       threshold_for="f1"),
        ImageNetClassifier("lite0"),  # construction only: no weights are read
    ]


@pytest.mark.parametrize("model", _estimators(), ids=lambda m: type(m).__name__)
def test_clone_gives_an_unfitted_estimator_with_equal_params(model):
    assert isinstance(model, ImageClassifier)
    twin = clone(model)
    assert type(twin) is type(model) and twin is not model
    a, b = model.get_params(), twin.get_params()
    assert a.keys() == b.keys()
    for k, v in a.items():
        if k == "extractor":  # a fresh extractor with the same parameters
            from imgclass.features import extractor_names, extractor_params

            assert extractor_names(b[k]) == extractor_names(v) and extractor_params(b[k]) == extractor_params(v)
        else:
            assert b[k] == v, k
    assert twin.classes_ == model.classes_ and twin.decision_ is None


@pytest.mark.parametrize("model", _estimators(), ids=lambda m: type(m).__name__)
def test_get_params_round_trips_through_the_constructor(model):
    params = model.get_params()
    again = type(model)(**params)
    assert again.get_params() == params
    assert all(again.get_params()[k] is v for k, v in params.items())  # stored unchanged, as sklearn asks


def test_set_params_sets_hyper_parameters_and_refuses_unknown_names():
    model = FeaturePipeline("pixels", "logreg")
    assert model.set_params(balance="sampler", hierarchy="local") is model
    assert model.balance == "sampler" and model.get_params()["hierarchy"] == "local"
    with pytest.raises(ValueError, match="bogus"):
        model.set_params(bogus=1)


def test_build_model_spreads_task_options_into_the_constructor():
    opts = TaskOptions(positive="a", threshold_for="f1", min_confidence=0.3, hierarchy="local", balance="weights",
                       calibrate=False)
    pipe = build_model(parse_spec("pixels+logreg"), options=opts)
    assert (pipe.positive, pipe.threshold_for, pipe.min_confidence, pipe.hierarchy, pipe.balance, pipe.calibrate) == (
        "a", "f1", 0.3, "local", "weights", False)
    deep = build_model("smallcnn", options=opts, train_config={"epochs": 1})
    assert deep.hierarchy == "local" and deep.train_config["balance"] == "weights" and deep.calibrate is False


def test_deep_classifier_fits_predicts_and_round_trips(tmp_path):
    ds = load_dataset(write_colour_dataset(tmp_path / "data", n_per_class=8, size=16))
    train, val = ds.split(val=0.25, seed=0)
    model = DeepClassifier("smallcnn", pretrained=None, img_size=16,
                           train_config={"epochs": 1, "batch_size": 16, "threads": 1})
    assert model.fit(train, val) is model
    assert model.classes_ == list(ds.classes) and len(model.history_) == 1
    assert model.decision_ is not None and "val" in model.meta_["metrics"]
    P = model.predict_proba(val)
    assert P.shape == (len(val), len(ds.classes))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-5)
    model.save(tmp_path / "model")
    loaded = DeepClassifier.load(tmp_path / "model")
    assert loaded.get_params()["train_config"] == model.train_config
    np.testing.assert_array_equal(loaded.predict_proba(val), P)
    with pytest.raises(Exception, match="not a FeaturePipeline"):
        FeaturePipeline.load(tmp_path / "model")
