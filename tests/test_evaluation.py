"""Metrics on hand-made probabilities, ``evaluate`` on data, and the written report files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

import imgclass
from imgclass.errors import DataError
from imgclass.evaluation import evaluate_probabilities

CLASSES = ["a", "b", "c"]
# predictions: a, b, a, a  against truth: a, b, c, a
TARGETS = np.array([0, 1, 2, 0])
P = np.array([[0.8, 0.1, 0.1],
              [0.1, 0.7, 0.2],
              [0.6, 0.3, 0.1],
              [0.5, 0.4, 0.1]])


def test_single_label_metrics_known_values():
    ev = evaluate_probabilities("multiclass", CLASSES, TARGETS, P)
    m = ev.metrics
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "per_class", "confusion"):
        assert key in m
    assert m["n"] == 4
    assert m["accuracy"] == 0.75
    assert m["balanced_accuracy"] == pytest.approx(2 / 3)
    # F1: a = 2*(2/3*1)/(2/3+1) = 0.8, b = 1, c = 0
    assert m["macro_f1"] == pytest.approx(0.6)
    assert m["confusion"] == [[2, 0, 0], [0, 1, 0], [1, 0, 0]]
    per = {r["class"]: r for r in m["per_class"]}
    assert [per[c]["support"] for c in CLASSES] == [2, 1, 1]
    assert per["a"]["precision"] == pytest.approx(2 / 3) and per["a"]["recall"] == 1.0
    assert per["c"]["f1"] == 0.0
    assert "top3_accuracy" not in m             # k must be smaller than the number of classes
    assert ev.headline == {"accuracy": 0.75, "balanced_accuracy": pytest.approx(2 / 3),
                           "macro_f1": pytest.approx(0.6)}


def test_top_k_and_log_loss():
    classes = list("abcd")
    y = np.array([0, 1, 2, 3])
    p = np.array([[0.4, 0.3, 0.2, 0.1],
                  [0.4, 0.3, 0.2, 0.1],
                  [0.4, 0.3, 0.2, 0.1],
                  [0.4, 0.3, 0.2, 0.1]])
    m = evaluate_probabilities("multiclass", classes, y, p).metrics
    assert m["accuracy"] == 0.25
    assert m["top3_accuracy"] == 0.75
    assert m["log_loss"] == pytest.approx(-np.mean(np.log([0.4, 0.3, 0.2, 0.1])))


def test_nan_rows_and_unlabelled_rows_are_dropped():
    p = np.vstack([P, [np.nan] * 3, [0.1, 0.1, 0.8]])
    y = np.concatenate([TARGETS, [1, -1]])
    ev = evaluate_probabilities("multiclass", CLASSES, y, p, items=[f"i{k}" for k in range(6)])
    assert ev.metrics["n"] == 4
    assert ev.metrics["accuracy"] == 0.75
    assert ev.items == ["i0", "i1", "i2", "i3"]


def test_nothing_to_evaluate():
    with pytest.raises(DataError):
        evaluate_probabilities("multiclass", CLASSES, np.array([0]), np.full((1, 3), np.nan))


def test_multilabel_metrics():
    Y = np.array([[1, 0], [0, 1], [1, 1]])
    p = np.array([[0.9, 0.2], [0.3, 0.8], [0.7, 0.4]])
    m = evaluate_probabilities("multilabel", ["x", "y"], Y, p).metrics
    assert m["subset_accuracy"] == pytest.approx(2 / 3)
    assert m["hamming_loss"] == pytest.approx(1 / 6)
    assert m["micro_f1"] == pytest.approx(2 * 3 / (2 * 3 + 1))
    assert {"macro_f1", "samples_f1", "mAP", "per_class"} <= set(m)
    assert "confusion" not in m
    # per-label ROC/PR: x is perfectly ranked (AUC 1); y ranks its negative 0.4 above nothing: AUC 1 too
    assert m["per_class"][0]["roc_auc"] == pytest.approx(1.0)
    assert m["per_class"][0]["average_precision"] == pytest.approx(1.0)
    assert m["macro_roc_auc"] == pytest.approx(1.0)
    assert set(m["label_curves"]) == {"x", "y"} and m["label_curves"]["y"]["roc"]["fpr"][0] == 0.0
    Y2 = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    p2 = np.array([[0.2, 0.9], [0.8, 0.1], [0.6, 0.2], [0.1, 0.7]])  # label x half wrong, y fully inverted
    m2 = evaluate_probabilities("multilabel", ["x", "y"], Y2, p2).metrics
    assert m2["per_class"][1]["roc_auc"] == pytest.approx(0.0)
    assert m2["macro_roc_auc"] < 0.5


def test_multilabel_report_has_per_label_curves(tmp_path):
    Y = np.array([[1, 0], [0, 1], [1, 1], [0, 0]] * 3)
    p = np.clip(Y * 0.6 + 0.2 + np.linspace(-0.1, 0.1, 12)[:, None], 0, 1)
    out = evaluate_probabilities("multilabel", ["x", "y"], Y, p, title="ml").write(tmp_path / "ev")
    assert out["roc_pr"].exists() and out["roc_pr"].stat().st_size > 5000
    html = (tmp_path / "ev" / "report.html").read_text()
    assert "alt='ROC and PR curves'" in html and "<th>ROC AUC</th>" in html


def test_evaluation_write(tmp_path):
    ev = evaluate_probabilities("multiclass", CLASSES, TARGETS, P, items=["w.png", "x.png", "y.png", "z.png"],
                                skipped=[("broken.jpg", "empty file (0 bytes)")], title="hand <made>")
    out = ev.write(tmp_path / "ev")
    d = tmp_path / "ev"
    assert (d / "metrics.json").exists() and (d / "predictions.csv").exists() and (d / "report.html").exists()

    doc = json.loads((d / "metrics.json").read_text())
    assert doc["metrics"]["accuracy"] == 0.75
    assert doc["skipped"] == [{"path": "broken.jpg", "reason": "empty file (0 bytes)"}]

    rows = list(csv.reader((d / "predictions.csv").read_text().splitlines()))
    assert rows[0] == ["path", "true", "predicted", "probability", "a", "b", "c"]
    assert rows[3][:4] == ["y.png", "c", "a", "0.6000"]
    assert len(rows) == 5

    png = d / "plots" / "confusion.png"
    assert out["confusion"] == png
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(png) as im:
        im.verify()
    assert (d / "plots" / "confusion_normalized.png").exists()

    html = (d / "report.html").read_text()
    assert "data:image/png;base64" in html
    assert 'src="http' not in html and "src='http" not in html
    assert "<script" not in html.lower()
    assert "hand &lt;made&gt;" in html                       # titles are escaped
    assert "Skipped files (1)" in html and "broken.jpg" in html


def test_evaluate_model_on_data(trained):
    ev = imgclass.evaluate(trained["model"], trained["data"])
    assert ev.metrics["n"] == 36
    assert ev.metrics["accuracy"] >= 0.9
    assert ev.skipped == []
    assert ev.classes == ["blue", "green", "red"]


def test_evaluate_reindexes_a_subset_of_classes(trained, tmp_path, make_colour_dataset):
    """Data with fewer classes (in another order) is mapped onto the model's class order."""
    data = make_colour_dataset(tmp_path / "two", n_per_class=4, size=20, seed=9,
                               classes={"red": (200, 40, 40), "blue": (40, 40, 200)})
    ev = imgclass.evaluate(trained["bundle"], data)
    assert ev.classes == ["blue", "green", "red"]
    assert ev.metrics["accuracy"] == 1.0
    assert [r["support"] for r in ev.metrics["per_class"]] == [4, 0, 4]


def test_evaluate_unknown_class(trained, tmp_path, make_colour_dataset):
    data = make_colour_dataset(tmp_path / "x", n_per_class=2, size=8, classes={"red": (1, 2, 3), "purple": (4, 5, 6)})
    with pytest.raises(DataError, match="purple"):
        imgclass.evaluate(trained["bundle"], data)


def test_evaluate_writes_out_folder(trained, tmp_path):
    imgclass.evaluate(trained["bundle"], trained["data"], out=tmp_path / "ev")
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]["n"] == 36


def test_confused_pairs_and_top_losses_on_known_values():
    ev = evaluate_probabilities("multiclass", CLASSES, TARGETS, P, items=["w", "x", "y", "z"])
    assert ev.confused_pairs() == [{"true": "c", "predicted": "a", "count": 1, "share_of_true": 1.0}]
    top = ev.top_losses(2)
    # losses: -log .8, -log .7, -log .1, -log .5 -> y (truth c at 0.1) is the worst, then z
    assert [r["item"] for r in top] == ["y", "z"]
    assert top[0]["true"] == "c" and top[0]["predicted"] == "a" and top[0]["probability"] == pytest.approx(0.6)
    assert top[0]["loss"] == pytest.approx(-np.log(0.1))


def test_report_has_gallery_and_worst_slice_highlighted(tmp_path):
    """--group-by: metrics per slice, worst first and highlighted; the top-losses gallery inlines
    thumbnails of the evaluated images."""
    rng = np.random.default_rng(0)
    rows = ["path,label,site"]
    for i in range(24):
        label = ["red", "blue"][i % 2]
        rgb = (200, 30, 30) if label == "red" else (30, 30, 200)
        site = "A" if i < 12 else "B"
        if site == "B" and i % 4 == 0:  # site B has some images coloured like the other class
            rgb = rgb[::-1]
        arr = np.clip(rng.normal(rgb, 15, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{label},{site}")
    (tmp_path / "data.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "site_a.csv").write_text("\n".join(rows[:13]) + "\n")
    model = imgclass.train(tmp_path / "site_a.csv", method="pixels+logreg", val_split=0.25, n_jobs=1)
    ev = imgclass.evaluate(model, tmp_path / "data.csv", out=tmp_path / "ev", group_by="site")
    slices = ev.slices()
    assert [s["group"] for s in slices] == ["B", "A"] and slices[0]["accuracy"] < slices[1]["accuracy"]
    assert slices[0]["n"] == 12 and slices[0]["accuracy"] <= 0.75 and slices[1]["accuracy"] == 1.0
    doc = (tmp_path / "ev" / "report.html").read_text()
    assert "<h2>Slices</h2>" in doc and "background:#fdd'><td>B</td>" in doc
    assert doc.count("class='thumb'") == 16 and "data:image/jpeg;base64," in doc
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert saved["slices"][0]["group"] == "B" and len(saved["top_losses"]) == 16
