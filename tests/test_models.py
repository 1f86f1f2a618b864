"""Method specs and ``FeaturePipeline``: learning, probabilities and ranked predictions."""

from __future__ import annotations

import numpy as np
import pytest

from imgclass.data import load_dataset
from imgclass.errors import ConfigError, DataError
from imgclass.models import FeaturePipeline, build_model, list_methods, parse_spec, split_methods
from imgclass.tasks.decision import Decision


# --------------------------------------------------------------------------- specs
def test_parse_spec_accepts():
    s = parse_spec("hog+svm")
    assert (s.kind, s.features, s.classifier) == ("features", ("hog",), "svm")
    s = parse_spec("hog,color_hist+logreg")
    assert s.features == ("hog", "color_hist") and s.classifier == "logreg"
    assert parse_spec("HOG+SVM").text == "hog+svm"


@pytest.mark.parametrize("bad, needle", [("foo+svm", "foo"), ("hog+foo", "foo"), ("+svm", "features"),
                                         ("hog", "unknown method"), ("", "empty"), ("hog,bar+svm", "bar")])
def test_parse_spec_rejects(bad, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_spec(bad)


def test_split_methods():
    assert split_methods("hog,color_hist+svm,lbp+rf") == ["hog,color_hist+svm", "lbp+rf"]
    assert split_methods("hog+svm, pixels+knn ;hog+logreg") == ["hog+svm", "pixels+knn", "hog+logreg"]
    assert split_methods("hog+svm,lbp") == ["hog+svm", "lbp"]   # incomplete spec left for parse_spec


def test_list_methods_mentions_every_block():
    specs = [s for s, _ in list_methods()]
    assert "hog+svm" in specs
    assert "sift+CLASSIFIER" in specs and "FEATURES+logreg" in specs


# --------------------------------------------------------------------------- pipeline
@pytest.fixture
def split_colours(colour_folder):
    ds = load_dataset(colour_folder)
    train, val = ds.split(val=0.25, seed=0)
    return ds, train, val


def test_pipeline_learns_separable_data(split_colours):
    ds, train, val = split_colours
    model = build_model("pixels+logreg", n_jobs=1).fit(train)
    assert model.classes_ == ds.classes
    assert model.task_ == "multiclass"
    P = model.predict_proba(val)
    assert P.shape == (len(val), 3)
    acc = float((P.argmax(axis=1) == val.targets).mean())
    assert acc >= 0.9
    assert np.allclose(P.sum(axis=1), 1.0)
    # the columns follow classes_: the most likely column names the image's folder
    for src, row in zip(val.sources, P):
        assert model.classes_[int(row.argmax())] in src.split("/")[-2]


def test_predict_top_k_sorted_pairs(split_colours):
    _, train, val = split_colours
    model = build_model("pixels+knn", n_jobs=1).fit(train)
    P = model.predict_proba(val)
    preds = model.predict(val.sources, top_k=2)
    assert len(preds) == len(val)
    for row, pred in zip(P, preds):
        assert len(pred.top) == 2 and pred.label == pred.top[0][0]
        (l1, p1), (l2, p2) = pred.top
        assert l1 != l2 and {l1, l2} <= set(model.classes_)
        assert p1 >= p2
        assert p1 == pytest.approx(row.max())
        assert p1 == pytest.approx(row[model.classes_.index(l1)])
        assert p2 == pytest.approx(row[model.classes_.index(l2)])
    assert all(len(p.top) == 3 for p in model.predict(val.sources[:2], top_k=10))
    assert all(len(p.top) == 1 for p in model.predict(val.sources[:2]))


def test_class_missing_from_training_gets_a_zero_column(colour_folder):
    ds = load_dataset(colour_folder)
    green = ds.classes.index("green")
    train = ds.subset(np.flatnonzero(ds.targets != green))
    model = build_model("pixels+logreg", n_jobs=1).fit(train)
    assert model.classes_ == ["blue", "green", "red"]
    P = model.predict_proba(train.sources[:6])
    assert P.shape == (6, 3)
    assert np.all(P[:, green] == 0)
    assert np.allclose(P.sum(axis=1), 1.0)


def test_fit_with_sources_and_y(colour_folder):
    ds = load_dataset(colour_folder)
    model = FeaturePipeline("pixels", "logreg", n_jobs=1)
    model.fit(ds.sources, ds.targets)
    assert model.classes_ == ["0", "1", "2"]
    assert model.method == "pixels+logreg"
    P = model.predict_proba(ds.sources[:3])
    assert P.shape == (3, 3)


def test_pipeline_errors(colour_folder, tmp_path):
    ds = load_dataset(colour_folder)
    model = build_model("pixels+logreg", n_jobs=1)
    with pytest.raises(ConfigError, match="not fitted"):
        model.predict_proba(ds.sources[:1])
    with pytest.raises(ConfigError):
        model.fit(ds.sources)                      # no y
    one_class = ds.subset(np.flatnonzero(ds.targets == 0))
    with pytest.raises(DataError, match="two classes"):
        build_model("pixels+logreg", n_jobs=1).fit(one_class)
    unlabelled = load_dataset(colour_folder / "red")
    with pytest.raises(DataError, match="no labels"):
        build_model("pixels+logreg", n_jobs=1).fit(unlabelled)


def test_multiclass_decision_ranks_top_k():
    P = np.array([[0.1, 0.7, 0.2], [np.nan, np.nan, np.nan], [0.5, 0.25, 0.25]])
    out = Decision(task="multiclass", classes=["a", "b", "c"]).predict(P, top_k=2)
    assert out[0].top == [("b", 0.7), ("c", 0.2)] and out[0].label == "b"
    assert out[1] is None
    assert out[2].top == [("a", 0.5), ("b", 0.25)]        # stable order on ties


def test_multilabel_pipeline(tmp_path, make_colour_dataset):
    """One-vs-rest over a multilabel CSV: per-label probabilities, not a distribution."""
    data = make_colour_dataset(tmp_path / "c", n_per_class=8, size=12)
    rows = ["path,labels"]
    for cls in ("red", "green", "blue"):
        for p in sorted((data / cls).iterdir()):
            labs = cls if cls != "blue" else "blue|cool"
            rows.append(f"{cls}/{p.name},{labs}")
    (data / "ml.csv").write_text("\n".join(rows) + "\n")
    ds = load_dataset(data / "ml.csv")
    assert ds.task == "multilabel"
    model = build_model("pixels+logreg", n_jobs=1).fit(ds)
    P = model.predict_proba(ds.sources)
    assert P.shape == (len(ds), 4)
    assert ((P >= 0) & (P <= 1)).all()
    pred = (P >= 0.5).astype(int)
    assert (pred == ds.targets).mean() > 0.9


@pytest.mark.parametrize("mode,views", [("flip", 2), ("crops", 6), ("flip+crops", 10)])
def test_tta_averages_over_views(split_colours, mode, views, monkeypatch):
    import imgclass
    from imgclass.models.tta import predict_proba_tta

    _, train, val = split_colours
    model = build_model("pixels+logreg", n_jobs=1).fit(train)
    sizes = []
    real = model.predict_proba

    def spy(X):
        sizes.append(len(X))
        return real(X)

    monkeypatch.setattr(model, "predict_proba", spy)
    srcs = list(val.sources[:3])
    P = predict_proba_tta(model, srcs + ["/no/such.png"], mode)
    assert sizes == [3 * views]
    assert np.isnan(P[3]).all() and model.errors_ and model.errors_[0][0] == "/no/such.png"
    assert np.allclose(P[:3].sum(1), 1) and (P[:3].argmax(1) == real(srcs).argmax(1)).all()
    from PIL import Image, ImageOps

    im = Image.open(srcs[0]).convert("RGB")
    if mode == "flip":  # exactly the mean of the image and its mirror
        expect = (real([im]) + real([ImageOps.mirror(im)])) / 2
        np.testing.assert_allclose(P[:1], expect, atol=1e-6)
    if mode == "crops":  # the whole image and five 87.5% crops, never a mirror
        w, h = im.size
        cw, ch = round(w * 0.875), round(h * 0.875)
        crops = [im.crop((x, y, x + cw, y + ch)) for x, y in
                 [((w - cw) // 2, (h - ch) // 2), (0, 0), (w - cw, 0), (0, h - ch), (w - cw, h - ch)]]
        np.testing.assert_allclose(P[:1], real([im, *crops]).mean(0, keepdims=True), atol=1e-6)
    with pytest.raises(imgclass.ConfigError, match="--tta"):
        predict_proba_tta(model, srcs, "spin")
    model.hflip = False  # trained with --no-hflip: views with mirrors are refused, crops are not
    if "flip" in mode:
        with pytest.raises(imgclass.ConfigError, match="--no-hflip.*--tta crops"):
            predict_proba_tta(model, srcs, mode)
    else:
        assert predict_proba_tta(model, srcs, mode).shape == (3, len(model.classes_))
