"""Task kinds end to end: binary thresholds tuned for an objective, multi-label per-label thresholds,
hierarchical paths (flat and local) with a confidence fallback, class imbalance, and bad task options.

Every image is a tiny generated noisy colour square (12 px), so the whole file runs in seconds with
``pixels+logreg`` / ``color_hist+logreg``; one test trains timm's tiny ``test_efficientnet``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error as _assert_one_line_error
from conftest import quiet_env, write_colour_dataset
from conftest import run_cli as _run
from PIL import Image

import imgclass
from imgclass.errors import ConfigError, DataError, ImgclassError
from imgclass.tasks.decision import Decision

SIZE = 12
PNG = b"\x89PNG\r\n\x1a\n"
FAST = {"epochs": 2, "batch_size": 16, "augment": "light", "lr": 3e-3}

RED, ORANGE, BLUE, GREEN, GREY = (210, 40, 40), (235, 150, 30), (40, 40, 210), (40, 190, 60), (128, 128, 128)


# --------------------------------------------------------------------------- helpers
def _noisy(rgb, rng, size: int = SIZE, noise: float = 20.0) -> np.ndarray:
    base = np.asarray(rgb, dtype=np.float64)[None, None, :]
    return np.clip(base + rng.normal(0.0, noise, (size, size, 3)), 0, 255).astype(np.uint8)


def _two_tone(a, b, rng, size: int = SIZE) -> np.ndarray:
    """Left half colour ``a``, right half colour ``b``."""
    left, right = _noisy(a, rng, size), _noisy(b, rng, size)
    out = left.copy()
    out[:, size // 2:] = right[:, size // 2:]
    return out


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _meta(bundle: Path) -> dict:
    return json.loads((Path(bundle) / "model.json").read_text(encoding="utf-8"))


def _val_metrics(run: Path) -> dict:
    return json.loads((Path(run) / "metrics.json").read_text(encoding="utf-8"))["metrics"]


# =========================================================================== binary
def _write_binary(root: Path, n: int = 40, seed: int = 0) -> Path:
    """``neg`` and ``pos``: reddish vs greenish grey, each image's colour jittered so the classes overlap."""
    rng = np.random.default_rng(seed)
    means = {"neg": (135, 110, 110), "pos": (110, 135, 110)}
    for cls, mean in means.items():
        for i in range(n):
            rgb = np.asarray(mean, dtype=np.float64) + rng.normal(0.0, 16.0, 3)
            _save(root / cls / f"{cls}_{i:02d}.png", _noisy(rgb, rng, noise=30.0))
    return root


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    base = tmp_path_factory.mktemp("binary")
    data = _write_binary(base / "data")
    logs: list[str] = []
    with quiet_env(base):
        prec = imgclass.train(data, method="pixels+logreg", out=base / "prec", seed=0, val_split=0.3, n_jobs=1,
                              threshold_for="precision=0.9", log=logs.append)
        first = imgclass.train(data, method="pixels+logreg", out=base / "first", seed=0, val_split=0.3, n_jobs=1,
                               positive="neg", threshold_for="recall=0.9")
    return {"base": base, "data": data, "prec": prec, "first": first, "logs": logs,
            "files": sorted(str(p) for p in data.rglob("*.png"))}


def test_binary_threshold_is_tuned_stored_and_reloaded(binary):
    model = binary["prec"]
    d = model.decision_
    assert isinstance(d, Decision)
    assert model.task_ == "binary" and d.task == "binary" and d.classes == ["neg", "pos"]
    assert d.positive == "pos" and d.objective == "precision=0.9"  # default positive: the second class
    assert d.threshold is not None and 0.0 <= d.threshold <= 1.0
    assert isinstance(d.tuned_on, dict) and isinstance(d.tuned_on["reached"], bool)
    stored = _meta(model.run_dir / "model")["decision"]
    assert stored["threshold"] == pytest.approx(d.threshold, abs=0)
    assert stored["objective"] == "precision=0.9" and stored["positive"] == "pos"
    loaded = imgclass.load_model(model.run_dir / "model")
    assert loaded.decision_.threshold == d.threshold
    assert loaded.decision_.positive == "pos" and loaded.decision_.objective == "precision=0.9"
    assert loaded.decision_.tuned_on["reached"] == d.tuned_on["reached"]
    # the reloaded model decides every image with the stored threshold, not by argmax
    files = binary["files"]
    P = loaded.predict_proba(files)
    np.testing.assert_allclose(P, model.predict_proba(files), atol=1e-12)
    expected = ["pos" if p >= d.threshold else "neg" for p in P[:, 1]]
    assert [r.label for r in loaded.predict(files)] == expected
    assert [r.label for r in imgclass.predict(model.run_dir / "model", files)] == expected


def test_binary_positive_can_be_the_first_class(binary):
    model = binary["first"]
    d = model.decision_
    assert d.positive == "neg" and d.positive_index == 0 and d.objective == "recall=0.9"
    loaded = imgclass.load_model(model.run_dir / "model")
    assert loaded.decision_.positive == "neg" and loaded.decision_.threshold == d.threshold
    P = loaded.predict_proba(binary["files"])
    expected = ["neg" if p >= d.threshold else "pos" for p in P[:, 0]]  # the threshold is on column 0
    assert [r.label for r in loaded.predict(binary["files"])] == expected
    m = _val_metrics(model.run_dir)
    assert m["positive"] == "neg" and m["threshold"] == pytest.approx(d.threshold)
    assert d.tuned_on["reached"] is True  # some threshold always reaches a recall target
    assert m["recall"] >= 0.9 - 1e-9 and m["recall"] == pytest.approx(d.tuned_on["recall"])


def test_binary_decision_uses_the_threshold_not_argmax(binary):
    d = binary["prec"].decision_
    fixed = dataclasses.replace(d, threshold=0.8)
    P = np.array([[0.35, 0.65], [0.15, 0.85], [0.6, 0.4], [0.2, 0.8]])
    assert [p.label for p in fixed.predict(P)] == ["neg", "pos", "neg", "pos"]
    assert [p.probability for p in fixed.predict(P)] == pytest.approx([0.35, 0.85, 0.6, 0.8])
    # the tuned threshold: a probability between 0.5 and it flips the argmax decision
    t = d.threshold
    if t > 0.5:
        p = (0.5 + t) / 2
        assert d.predict(np.array([[1 - p, p]]))[0].label == "neg"
    elif t < 0.5:
        p = (t + 0.5) / 2
        assert d.predict(np.array([[1 - p, p]]))[0].label == "pos"
    assert d.predict(np.array([[1 - t, t]]))[0].label == "pos"  # score >= threshold is positive
    # positive = first class: the threshold applies to column 0
    d0 = dataclasses.replace(binary["first"].decision_, threshold=0.7)
    assert [p.label for p in d0.predict(np.array([[0.65, 0.35], [0.75, 0.25], [0.3, 0.7]]))] == ["pos", "neg", "pos"]
    # NaN rows (unreadable images) give None
    assert fixed.predict(np.array([[np.nan, np.nan], [0.1, 0.9]]))[0] is None


def test_binary_precision_target_on_validation(binary):
    model = binary["prec"]
    d = model.decision_
    m = _val_metrics(model.run_dir)  # validation metrics under the tuned decision
    assert m["threshold"] == pytest.approx(d.threshold) and m["positive"] == "pos"
    assert m["precision"] == pytest.approx(d.tuned_on["precision"])
    assert m["recall"] == pytest.approx(d.tuned_on["recall"])
    if d.tuned_on["reached"]:
        assert m["precision"] >= 0.9 - 1e-9
    else:
        assert any("not reached" in line for line in binary["logs"])
    # the threshold really is the one of the split: recompute precision from the split's val images
    split = json.loads((model.run_dir / "split.json").read_text())["splits"]["val"]
    files = [str(binary["data"] / p) for p in split]
    P = model.predict_proba(files)
    truth = np.array([Path(f).parent.name == "pos" for f in files])
    pred = P[:, 1] >= d.threshold
    if pred.any():
        assert (truth & pred).sum() / pred.sum() == pytest.approx(m["precision"])


def test_binary_evaluate_reports_curves_and_auc(binary, tmp_path):
    model = binary["prec"]
    ev = imgclass.evaluate(model.run_dir / "model", binary["data"], out=tmp_path / "ev")
    m = ev.metrics
    assert 0.0 <= m["roc_auc"] <= 1.0 and m["roc_auc"] > 0.6  # the classes overlap but are learnable
    assert 0.0 <= m["average_precision"] <= 1.0
    assert m["threshold"] == pytest.approx(model.decision_.threshold) and m["positive"] == "pos"
    for k in ("precision", "recall", "f1"):
        assert 0.0 <= m[k] <= 1.0
    assert len(m["curves"]["roc"]["fpr"]) == len(m["curves"]["roc"]["tpr"]) >= 2
    assert (tmp_path / "ev" / "plots" / "roc_pr.png").read_bytes()[:8] == PNG
    assert (model.run_dir / "plots" / "roc_pr.png").read_bytes()[:8] == PNG
    saved = json.loads((tmp_path / "ev" / "metrics.json").read_text())["metrics"]
    assert saved["roc_auc"] == pytest.approx(m["roc_auc"])
    # predictions.csv follows the threshold too
    rows = (tmp_path / "ev" / "predictions.csv").read_text().splitlines()[1:]
    P = model.predict_proba([str(binary["data"] / r.split(",")[0]) for r in rows])
    assert [r.split(",")[2] for r in rows] == ["pos" if p >= m["threshold"] else "neg" for p in P[:, 1]]
    first = imgclass.evaluate(binary["first"].run_dir / "model", binary["data"]).metrics
    assert first["positive"] == "neg" and 0.0 <= first["roc_auc"] <= 1.0


# =========================================================================== multilabel
ML_COLOURS = {"red": RED, "green": (40, 200, 40), "blue": BLUE}
ML_PAIRS = [("red", "green"), ("red", "blue"), ("green", "blue")]


def _write_multilabel(root: Path, n: int = 8, seed: int = 0) -> Path:
    """Single-colour images (one label) and two-tone images (both labels); ``root/ml.csv`` lists them."""
    rng = np.random.default_rng(seed)
    rows = ["path,labels"]
    for c, rgb in ML_COLOURS.items():
        for i in range(n):
            _save(root / "img" / f"{c}_{i:02d}.png", _noisy(rgb, rng))
            rows.append(f"img/{c}_{i:02d}.png,{c}")
    for a, b in ML_PAIRS:
        for i in range(n):
            arr = _two_tone(ML_COLOURS[a], ML_COLOURS[b], rng) if i % 2 else _two_tone(ML_COLOURS[b], ML_COLOURS[a], rng)
            _save(root / "img" / f"{a}_{b}_{i:02d}.png", arr)
            rows.append(f"img/{a}_{b}_{i:02d}.png,{a}|{b}")
    (root / "ml.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root / "ml.csv"


@pytest.fixture(scope="module")
def multilabel(tmp_path_factory):
    base = tmp_path_factory.mktemp("multilabel")
    csv_file = _write_multilabel(base / "data")
    test_csv = _write_multilabel(base / "test", n=4, seed=9)
    with quiet_env(base):
        model = imgclass.train(csv_file, method="color_hist+logreg", out=base / "run", seed=0, val_split=0.25,
                               n_jobs=1)
    return {"base": base, "csv": csv_file, "test_csv": test_csv, "model": model,
            "test_files": sorted(str(p) for p in (base / "test" / "img").iterdir())}


def test_multilabel_thresholds_are_tuned_stored_and_reloaded(multilabel):
    model = multilabel["model"]
    d = model.decision_
    assert model.task_ == "multilabel" and d.task == "multilabel"
    assert sorted(d.classes) == ["blue", "green", "red"]
    assert isinstance(d.thresholds, list) and len(d.thresholds) == 3
    assert all(0.0 <= t <= 1.0 for t in d.thresholds)
    assert d.threshold is None and d.positive is None
    stored = _meta(model.run_dir / "model")["decision"]
    assert stored["thresholds"] == pytest.approx(d.thresholds, abs=0)
    loaded = imgclass.load_model(model.run_dir / "model")
    assert loaded.decision_.thresholds == d.thresholds and loaded.task_ == "multilabel"
    np.testing.assert_allclose(loaded.predict_proba(multilabel["test_files"]),
                               model.predict_proba(multilabel["test_files"]), atol=1e-12)


def test_multilabel_predict_lists_every_label_above_its_threshold(multilabel):
    model = multilabel["model"]
    d = model.decision_
    files = multilabel["test_files"]
    P = model.predict_proba(files)
    assert ((P >= 0) & (P <= 1)).all()
    preds = imgclass.load_model(model.run_dir / "model").predict(files, top_k=3)
    both = 0
    for f, row, pr in zip(files, P, preds):
        on = {c for c, p, t in zip(d.classes, row, d.thresholds) if p >= t}
        got = [lab for lab, _ in pr.labels]
        probs = [p for _, p in pr.labels]
        assert probs == sorted(probs, reverse=True)  # strongest first
        assert (pr.label, pr.probability) == pr.labels[0]
        if on:
            assert set(got) == on and pr.note == ""
        else:
            assert got == [d.classes[int(row.argmax())]] and "threshold" in pr.note
        assert [lab for lab, _ in pr.top] == [d.classes[j] for j in np.argsort(-row, kind="stable")]
        truth = set(Path(f).stem.split("_")[:-1])
        if len(truth) == 2 and set(got) == truth:
            both += 1
    n_mixed = sum(1 for f in files if Path(f).stem.count("_") == 2)
    assert both >= 0.7 * n_mixed  # two-tone images get both of their labels
    # a hand-made row: all three labels pass, or none
    hi = d.predict(np.array([[0.999, 0.998, 0.997]]))[0]
    assert [lab for lab, _ in hi.labels] == d.classes[:3] and "," in hi.text()
    lo = d.predict(np.array([[0.0, 0.0, 1e-9]]))[0]
    if all(t > 1e-9 for t in d.thresholds):
        assert lo.labels == [(d.classes[2], 1e-9)] and "strongest" in lo.note


def test_multilabel_evaluate_metrics(multilabel, tmp_path):
    model = multilabel["model"]
    ev = imgclass.evaluate(model.run_dir / "model", multilabel["test_csv"], out=tmp_path / "ev")
    m = ev.metrics
    for k in ("micro_f1", "macro_f1", "samples_f1", "mAP", "hamming_loss", "subset_accuracy"):
        assert 0.0 <= m[k] <= 1.0, k
    assert m["mAP"] > 0.8 and m["micro_f1"] > 0.7
    assert m["thresholds"] == pytest.approx(model.decision_.thresholds)
    assert [r["class"] for r in m["per_class"]] == model.decision_.classes
    if any(t != 0.5 for t in model.decision_.thresholds):
        assert set(m["at_0.5"]) >= {"micro_f1", "macro_f1", "samples_f1", "subset_accuracy"}
    val = _val_metrics(model.run_dir)
    assert "mAP" in val and val["thresholds"] == pytest.approx(model.decision_.thresholds)
    assert (tmp_path / "ev" / "metrics.json").exists() and (tmp_path / "ev" / "report.html").exists()


def test_multilabel_predict_cli_json(multilabel):
    model = multilabel["model"]
    files = multilabel["test_files"][:6]
    rc, out, err = _run(["predict", str(model.run_dir / "model"), *files, "--json", "--jobs", "1", "--top-k", "3"])
    assert rc == 0, err
    doc = json.loads(out)
    assert [r["path"] for r in doc] == files
    preds = model.predict(files, top_k=3)
    for r, pr in zip(doc, preds):
        assert set(r) >= {"path", "label", "probability", "labels", "top"}
        assert [x["label"] for x in r["labels"]] == [lab for lab, _ in pr.labels]
        assert r["label"] == pr.label and r["probability"] == pytest.approx(pr.probability)
        assert len(r["top"]) == 3


# =========================================================================== hierarchical
HIER = {"warm/red": RED, "warm/orange": ORANGE, "cool/blue": BLUE, "cool/green": GREEN}


def _write_nested(root: Path, n: int = 10, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for cls, rgb in HIER.items():
        for i in range(n):
            _save(root / cls / f"{cls.split('/')[1]}_{i:02d}.png", _noisy(rgb, rng))
    return root


@pytest.fixture(scope="module")
def hier(tmp_path_factory):
    base = tmp_path_factory.mktemp("hier")
    data = _write_nested(base / "data")
    test = _write_nested(base / "test", n=4, seed=5)
    rng = np.random.default_rng(3)
    mid = tuple((a + b) / 2 for a, b in zip(RED, ORANGE))  # between red and orange: surely warm, not which
    ambiguous = [str(_save(base / "amb" / f"amb_{i}.png", _noisy(mid, rng, noise=8.0))) for i in range(6)]
    models = {}
    with quiet_env(base):
        for strategy in ("flat", "local"):
            models[strategy] = imgclass.train(data, method="pixels+logreg", out=base / strategy, seed=0,
                                              val_split=0.25, n_jobs=1, hierarchy=strategy)
    return {"base": base, "data": data, "test": test, "models": models, "ambiguous": ambiguous,
            "test_files": sorted(str(p) for p in test.rglob("*.png"))}


def test_nested_folders_are_hierarchical(hier):
    model = hier["models"]["flat"]
    assert model.task_ == "hierarchical"
    assert sorted(model.classes_) == sorted(HIER)
    d = model.decision_
    assert d.taxonomy == {"cool": None, "cool/blue": "cool", "cool/green": "cool",
                          "warm": None, "warm/orange": "warm", "warm/red": "warm"}


@pytest.mark.parametrize("strategy", ["flat", "local"])
def test_hierarchical_strategies_save_load_and_sum_to_one(hier, strategy):
    model = hier["models"][strategy]
    bundle = model.run_dir / "model"
    meta = _meta(bundle)
    assert meta["hierarchy"] == strategy and meta["decision"]["hierarchy"] == strategy
    loaded = imgclass.load_model(bundle)
    assert loaded.hierarchy == strategy and loaded.task_ == "hierarchical"
    files = hier["test_files"] + hier["ambiguous"]
    P = model.predict_proba(files)
    np.testing.assert_array_equal(loaded.predict_proba(files), P)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-6)
    assert ((P >= 0) & (P <= 1 + 1e-9)).all()
    # on clear images the right leaf wins
    truth = [str(Path(f).parent.relative_to(hier["test"])) for f in hier["test_files"]]
    labels = [p.label for p in loaded.predict(hier["test_files"])]
    assert np.mean([a == b for a, b in zip(labels, truth)]) >= 0.9


def test_local_and_flat_are_different_models(hier):
    files = hier["test_files"] + hier["ambiguous"]
    P_flat = hier["models"]["flat"].predict_proba(files)
    P_local = hier["models"]["local"].predict_proba(files)
    assert not np.allclose(P_flat, P_local)
    assert isinstance(hier["models"]["local"].classifier_, dict)  # one classifier per parent node


@pytest.mark.parametrize("strategy", ["flat", "local"])
def test_hierarchical_predictions_follow_a_consistent_path(hier, strategy):
    model = imgclass.load_model(hier["models"][strategy].run_dir / "model")
    files = hier["test_files"] + hier["ambiguous"]
    P = model.predict_proba(files)
    classes = model.classes_
    for row, pr in zip(P, model.predict(files, top_k=2)):
        nodes = [n for n, _ in pr.path]
        assert pr.label in classes  # without min_confidence: always a leaf
        assert nodes == [pr.label.split("/")[0], pr.label]
        root_p, leaf_p = (p for _, p in pr.path)
        root = nodes[0]
        under = [j for j, c in enumerate(classes) if c.startswith(root + "/")]
        assert root_p == pytest.approx(row[under].sum()) and leaf_p == pytest.approx(row[classes.index(pr.label)])
        assert root_p >= leaf_p - 1e-12 and pr.probability == pytest.approx(leaf_p)
        # greedy: the best root, then its best child
        other = [j for j in range(len(classes)) if j not in under]
        assert root_p >= row[other].sum() - 1e-12
        assert leaf_p == pytest.approx(row[under].max())
        assert "›" in pr.text() and pr.note == ""
        assert [x["node"] for x in pr.to_dict()["nodes"]] == nodes
        assert len(pr.top) == 2


def test_min_confidence_falls_back_to_the_parent(hier, tmp_path):
    # a hand-made row: surely warm (0.995), but red or orange is a coin toss
    d99 = dataclasses.replace(hier["models"]["flat"].decision_, min_confidence=0.99)
    classes = d99.classes
    row = np.zeros((1, 4))
    row[0, classes.index("warm/red")], row[0, classes.index("warm/orange")] = 0.5, 0.495
    row[0, classes.index("cool/blue")] = 0.005
    p = d99.predict(row)[0]
    assert p.label == "warm" and p.probability == pytest.approx(0.995) and "fell back" in p.note
    assert [n for n, _ in p.path] == ["warm"]
    assert dataclasses.replace(d99, min_confidence=None).predict(row)[0].label == "warm/red"
    row[0] = [0.3, 0.2, 0.25, 0.25]  # not even the first level reaches it: no answer
    none = d99.predict(row)[0]
    assert none.label is None and none.path == [] and "min confidence" in none.note
    with pytest.raises(ConfigError):  # the decision validates the range too
        dataclasses.replace(d99, min_confidence=1.5).predict(row)

    # trained with min_confidence: ambiguous red/orange images fall back to "warm"
    mc = 0.9
    model = imgclass.train(hier["data"], method="pixels+logreg", out=tmp_path / "run", seed=0, val_split=0.25,
                           n_jobs=1, min_confidence=mc)
    assert model.decision_.min_confidence == mc
    loaded = imgclass.load_model(tmp_path / "run" / "model")
    assert loaded.decision_.min_confidence == mc
    preds = loaded.predict(hier["ambiguous"])
    fell = [p for p in preds if p.label in ("warm", "cool")]
    assert fell, [p.text() for p in preds]
    for p in fell:
        assert "fell back" in p.note
        assert [n for n, _ in p.path] == [p.label] and p.probability >= mc
    assert all(p.label is None or p.label.startswith("warm") for p in preds)  # never the wrong branch
    # every emitted node reaches min_confidence; a parent is emitted only when its best child does not
    files = hier["ambiguous"] + hier["test_files"]
    P = loaded.predict_proba(files)
    for row, p in zip(P, loaded.predict(files)):
        if p.label is None:
            assert "min confidence" in p.note
            continue
        assert all(prob >= mc for _, prob in p.path)
        if p.label in ("warm", "cool"):
            kids = [j for j, c in enumerate(loaded.classes_) if c.startswith(p.label + "/")]
            assert row[kids].max() < mc
    # the evaluation reports the trade-off and plots it
    ev = imgclass.evaluate(tmp_path / "run" / "model", hier["test"], out=tmp_path / "ev")
    h = ev.metrics["hierarchy"]
    assert h["min_confidence"] == mc
    assert any(e["min_confidence"] == mc for e in h["fallback"])
    assert (tmp_path / "ev" / "plots" / "fallback.png").read_bytes()[:8] == PNG


def test_hierarchical_metrics(hier, tmp_path):
    model = hier["models"]["local"]
    ev = imgclass.evaluate(model.run_dir / "model", hier["test"], out=tmp_path / "ev")
    m = ev.metrics
    assert m["level1_accuracy"] >= m["accuracy"] - 1e-12  # a right leaf implies a right parent
    assert m["level2_accuracy"] == pytest.approx(m["accuracy"])
    assert 0.0 <= m["hierarchical_f1"] <= 1.0
    h = m["hierarchy"]
    assert h["level_accuracy"] == pytest.approx([m["level1_accuracy"], m["level2_accuracy"]])
    fb = {e["min_confidence"]: e for e in h["fallback"]}
    assert fb[0.0]["coverage"] == 1.0 and fb[0.0]["answered"] == 1.0
    assert fb[0.0]["precision"] == pytest.approx(m["accuracy"])
    covs = [fb[k]["coverage"] for k in sorted(fb)]
    assert covs == sorted(covs, reverse=True)  # more confidence demanded, fewer leaves given
    for e in h["fallback"]:
        assert set(e) >= {"min_confidence", "coverage", "answered", "precision", "mean_depth"}
    assert (tmp_path / "ev" / "plots" / "fallback.png").read_bytes()[:8] == PNG
    val = _val_metrics(model.run_dir)
    assert val["level1_accuracy"] >= val["accuracy"] - 1e-12
    assert (model.run_dir / "plots" / "fallback.png").exists()


def test_hierarchical_predict_cli_json_has_nodes(hier):
    bundle = hier["models"]["flat"].run_dir / "model"
    files = hier["test_files"][:3]
    rc, out, err = _run(["predict", str(bundle), *files, "--json", "--jobs", "1"])
    assert rc == 0, err
    for r in json.loads(out):
        assert [n["node"] for n in r["nodes"]] == [r["label"].split("/")[0], r["label"]]
        assert r["nodes"][-1]["probability"] == pytest.approx(r["probability"])


@pytest.mark.parametrize("strategy", ["flat", "local"])
def test_taxonomy_file_on_a_flat_folder(tmp_path, strategy):
    """Mixed depth: grey is a root leaf, the colours sit under warm / cool."""
    data = write_colour_dataset(tmp_path / "data", n_per_class=8, size=SIZE,
                                classes={"red": RED, "orange": ORANGE, "blue": BLUE, "green": GREEN, "grey": GREY})
    tax = tmp_path / "tree.json"
    tax.write_text(json.dumps({"red": "warm", "orange": "warm", "blue": "cool", "green": "cool", "grey": None}))
    model = imgclass.train(data, method="pixels+logreg", out=tmp_path / "run", seed=0, val_split=0.25, n_jobs=1,
                           taxonomy=tax, hierarchy=strategy)
    assert model.task_ == "hierarchical" and model.decision_.taxonomy["red"] == "warm"
    loaded = imgclass.load_model(tmp_path / "run" / "model")
    test = write_colour_dataset(tmp_path / "test", n_per_class=3, size=SIZE, seed=4,
                                classes={"red": RED, "orange": ORANGE, "blue": BLUE, "green": GREEN, "grey": GREY})
    files = sorted(str(p) for p in test.rglob("*.png"))
    P = loaded.predict_proba(files)
    np.testing.assert_array_equal(P, model.predict_proba(files))
    np.testing.assert_allclose(P.sum(axis=1), 1.0, atol=1e-6)
    parent = {"red": "warm", "orange": "warm", "blue": "cool", "green": "cool"}
    right = 0
    for f, p in zip(files, loaded.predict(files)):
        nodes = [n for n, _ in p.path]
        assert nodes == ([parent[p.label], p.label] if p.label in parent else [p.label])
        right += p.label == Path(f).parent.name
    assert right >= 0.9 * len(files)
    m = imgclass.evaluate(loaded, test).metrics
    assert m["level1_accuracy"] >= m["accuracy"] - 1e-12
    assert m["hierarchy"]["level_n"] == [15, 12]  # grey has no second level


def test_taxonomy_file_missing_a_class_is_a_data_error(tmp_path):
    data = write_colour_dataset(tmp_path / "data", n_per_class=3, size=8)
    tax = tmp_path / "tree.yaml"
    tax.write_text("red: warm\nblue: cool\n")  # no green
    with pytest.raises(DataError, match="green"):
        imgclass.train(data, method="pixels+logreg", taxonomy=tax, n_jobs=1)


# =========================================================================== imbalance
def test_tiny_class_is_warned_about(tmp_path):
    data = write_colour_dataset(tmp_path / "data", n_per_class=10, size=SIZE)
    write_colour_dataset(tmp_path / "data", n_per_class=3, size=SIZE, seed=1, classes={"grey": GREY})
    logs: list[str] = []
    model = imgclass.train(data, method="pixels+knn", out=tmp_path / "run", seed=0, n_jobs=1, log=logs.append)
    warn = [line for line in logs if "fewer than 5 training images" in line]
    assert len(warn) == 1 and "grey" in warn[0] and "red" not in warn[0]
    assert "grey" in model.classes_ and (tmp_path / "run" / "model" / "model.json").exists()
    logs.clear()
    imgclass.train(data, method="pixels+knn", seed=0, n_jobs=1, log=logs.append, val_split=0.0)
    assert sum("fewer than 5 training images" in line for line in logs) == 1


def test_class_without_validation_images_is_noted_not_fatal(tmp_path):
    """Pre-split folders where the ``blue`` class has no validation images at all."""
    colours = {"red": RED, "green": GREEN, "blue": BLUE}
    write_colour_dataset(tmp_path / "data" / "train", n_per_class=8, size=SIZE, classes=colours)
    write_colour_dataset(tmp_path / "data" / "val", n_per_class=3, size=SIZE, seed=2,
                         classes={"red": RED, "green": GREEN})
    logs: list[str] = []
    model = imgclass.train(tmp_path / "data", method="pixels+logreg", out=tmp_path / "run", n_jobs=1,
                           log=logs.append)
    note = [line for line in logs if "no validation images" in line]
    assert len(note) == 1 and "blue" in note[0] and "red" not in note[0]
    assert not any("fewer than 5" in line for line in logs)
    assert sorted(model.classes_) == ["blue", "green", "red"]
    m = _val_metrics(tmp_path / "run")
    assert m["n"] == 6 and 0.0 <= m["accuracy"] <= 1.0
    assert (tmp_path / "run" / "report.html").exists() and (tmp_path / "run" / "model" / "model.json").exists()


def _write_skewed(root: Path, n_big: int, n_small: int, seed: int) -> Path:
    """A large ``big`` class and a small ``small`` one whose colours overlap."""
    rng = np.random.default_rng(seed)
    for cls, mean, n in (("big", (120, 120, 120), n_big), ("small", (138, 120, 102), n_small)):
        for i in range(n):
            rgb = np.asarray(mean, dtype=np.float64) + rng.normal(0.0, 14.0, 3)
            _save(root / cls / f"{cls}_{i:02d}.png", _noisy(rgb, rng, noise=25.0))
    return root


@pytest.mark.slow
def test_balance_weights_changes_the_classical_model(tmp_path):
    data = _write_skewed(tmp_path / "data", 40, 8, seed=0)
    test = _write_skewed(tmp_path / "test", 20, 20, seed=7)
    files = sorted(str(p) for p in test.rglob("*.png"))
    small = np.array([Path(f).parent.name == "small" for f in files])
    P = {}
    recall = {}
    for balance in ("none", "weights"):
        model = imgclass.train(data, method="pixels+logreg", out=tmp_path / balance, seed=0, n_jobs=1,
                               balance=balance, threshold_for="f1")
        assert model.balance == balance
        bundle = tmp_path / balance / "model"
        assert _meta(bundle)["balance"] == balance
        loaded = imgclass.load_model(bundle)
        assert loaded.balance == balance
        P[balance] = loaded.predict_proba(files)
        col = loaded.classes_.index("small")
        recall[balance] = float((P[balance][small].argmax(axis=1) == col).mean())
    col = 1  # classes are sorted: big, small
    assert not np.allclose(P["none"], P["weights"])
    assert P["weights"][:, col].mean() > P["none"][:, col].mean()  # the minority class gains probability
    assert recall["weights"] >= recall["none"]
    # no option at all stores "none"
    model = imgclass.train(data, method="pixels+logreg", seed=0, n_jobs=1)
    assert model.balance == "none"


def test_deep_balance_sampler_runs(tmp_path, monkeypatch):
    import torch

    data = write_colour_dataset(tmp_path / "data", n_per_class=8, size=16, classes={"red": RED, "blue": BLUE})
    write_colour_dataset(tmp_path / "data", n_per_class=4, size=16, seed=1, classes={"green": GREEN})
    calls = []
    real = torch.multinomial

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(torch, "multinomial", spy)
    logs: list[str] = []
    cfg = {**FAST, "epochs": 1}
    model = imgclass.train(data, method="test_efficientnet@scratch", img_size=32, balance="sampler",
                           train_config=cfg, log=logs.append)
    assert calls  # the balanced sampler drew the epoch's batches
    assert model.kind == "deep" and model.train_config["balance"] == "sampler"
    assert model.config()["train_config"]["balance"] == "sampler"  # what the bundle stores
    assert any("fewer than 5 training images" in line and "green" in line for line in logs)
    assert len(model.history_) == 1
    P = model.predict_proba(sorted(str(p) for p in (data / "green").iterdir()))
    assert P.shape == (4, 3) and np.allclose(P.sum(axis=1), 1.0, atol=1e-4)


# =========================================================================== bad options
def _binary_data(tmp_path):
    return write_colour_dataset(tmp_path / "bin", n_per_class=8, size=8, classes={"red": RED, "blue": BLUE})


def _multi_data(tmp_path):
    return write_colour_dataset(tmp_path / "multi", n_per_class=8, size=8)


def _hier_data(tmp_path):
    return _write_nested(tmp_path / "hier", n=8)


BAD_OPTIONS = {
    "threshold_for bogus": (_binary_data, {"threshold_for": "bogus"}, ConfigError, "threshold-for"),
    "threshold_for precision=2": (_binary_data, {"threshold_for": "precision=2"}, ConfigError, "threshold-for"),
    "positive not a class": (_binary_data, {"positive": "nope"}, ConfigError, "nope"),
    "positive on multiclass": (_multi_data, {"positive": "red"}, ConfigError, "binary"),
    "threshold_for on multiclass": (_multi_data, {"threshold_for": "f1"}, ConfigError, "binary"),
    "min_confidence 2": (_hier_data, {"min_confidence": 2}, ConfigError, "min-confidence"),
    "min_confidence negative": (_hier_data, {"min_confidence": -0.1}, ConfigError, "min-confidence"),
    "min_confidence on multiclass": (_multi_data, {"min_confidence": 0.5}, ConfigError, "hierarchical"),
    "hierarchy local on flat data": (_multi_data, {"hierarchy": "local"}, ConfigError, "hierarch"),
    "hierarchy unknown": (_hier_data, {"hierarchy": "sideways"}, ConfigError, "sideways"),
    "balance unknown": (_multi_data, {"balance": "bogus"}, ConfigError, "balance"),
    "threshold_for on hierarchical": (_hier_data, {"threshold_for": "f1"}, ConfigError, "binary"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_bad_task_options_fail_before_training(case, tmp_path, monkeypatch):
    import imgclass.training.fit as fit

    make, opts, exc, words = BAD_OPTIONS[case]
    data = make(tmp_path)

    def no_build(*a, **kw):
        raise AssertionError("a model was built despite a bad option")

    monkeypatch.setattr(fit, "build_model", no_build)
    with pytest.raises(exc, match=words) as info:
        imgclass.train(data, method="pixels+logreg", out=tmp_path / "run", n_jobs=1, **opts)
    assert isinstance(info.value, ImgclassError)
    assert not (tmp_path / "run" / "model").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_cli_bad_task_options_exit_2_with_one_line(tmp_path):
    binary = _binary_data(tmp_path)
    multi = _multi_data(tmp_path)
    hier = _hier_data(tmp_path)
    train = ["train", "--method", "pixels+logreg", "--jobs", "1", "--out", str(tmp_path / "r")]
    _assert_one_line_error(*_run([*train, str(binary), "--threshold-for", "bogus"]), "--threshold-for", "bogus")
    _assert_one_line_error(*_run([*train, str(binary), "--positive", "nope"]), "nope")
    _assert_one_line_error(*_run([*train, str(multi), "--hierarchy", "local"]), "--hierarchy")
    _assert_one_line_error(*_run([*train, str(hier), "--min-confidence", "1.5"]), "--min-confidence")
    _assert_one_line_error(*_run([*train, str(multi), "--balance", "bogus"]), "--balance")
    _assert_one_line_error(*_run([*train, str(multi), "--taxonomy", str(tmp_path / "missing.yaml")]))
    assert not (tmp_path / "r" / "model").exists()


def test_cli_train_with_task_options(tmp_path):
    """The CLI passes the task options through: a binary run with a recall target and weights."""
    data = _write_binary(tmp_path / "data", n=12)
    rc, out, err = _run(["train", str(data), "--method", "pixels+logreg", "--jobs", "1", "--out", str(tmp_path / "r"),
                         "--positive", "neg", "--threshold-for", "recall=0.8", "--balance", "weights", "--json"])
    assert rc == 0, err
    doc = json.loads(out)
    assert "roc_auc" in doc["metrics"]
    meta = _meta(tmp_path / "r" / "model")
    assert meta["balance"] == "weights"
    assert meta["decision"]["positive"] == "neg" and meta["decision"]["objective"] == "recall=0.8"


@pytest.mark.parametrize("opts", [{"threshold_for": "bogus"}, {"positive": "nope"}, {"balance": "bogus"}],
                         ids=["threshold_for", "positive", "balance"])
def test_bad_task_option_writes_no_run_directory(tmp_path, opts):
    """Like a bad --method: nothing is written, and fixing the option then trains into OUT itself."""
    data = _binary_data(tmp_path)
    with pytest.raises(ImgclassError):
        imgclass.train(data, method="pixels+logreg", out=tmp_path / "run", n_jobs=1, **opts)
    with pytest.raises(ConfigError):
        imgclass.train(data, method="nope+svm", out=tmp_path / "run-method", n_jobs=1)
    assert not (tmp_path / "run-method").exists()  # the bad --method case, for comparison
    leftovers = sorted(p.name for p in (tmp_path / "run").iterdir()) if (tmp_path / "run").exists() else []
    assert leftovers == []
    model = imgclass.train(data, method="pixels+logreg", out=tmp_path / "run", n_jobs=1)
    assert Path(model.run_dir) == tmp_path / "run"


# =========================================================================== deep models
def test_deep_multilabel_uses_a_sigmoid_head_and_round_trips(multilabel, tmp_path):
    """A deep multi-label model: independent per-label probabilities (not a softmax), BCE training,
    per-label thresholds in the bundle, identical predictions after reload."""
    with quiet_env(tmp_path):
        model = imgclass.train(multilabel["csv"], method="test_efficientnet@scratch", img_size=32, out=tmp_path / "r",
                               train_config={**FAST, "epochs": 2}, n_jobs=1)
    assert model.task_ == "multilabel" and "val_micro_f1" in model.history_[-1]
    files = multilabel["test_files"][:6]
    P = model.predict_proba(files)
    assert P.shape == (6, len(ML_COLOURS)) and ((P >= 0) & (P <= 1)).all()
    assert not np.allclose(P.sum(axis=1), 1.0)  # sigmoid outputs, not a distribution
    again = imgclass.load_model(tmp_path / "r" / "model")
    assert again.decision_.thresholds == model.decision_.thresholds and len(model.decision_.thresholds) == 3
    np.testing.assert_allclose(again.predict_proba(files), P, atol=1e-5)
    for pred in again.predict(files):
        assert pred.labels and all(lab in ML_COLOURS for lab, _ in pred.labels)


@pytest.mark.slow
def test_deep_local_hierarchy_scores_every_node(hier, tmp_path):
    """--hierarchy local with a deep model: one output per taxonomy node, a softmax per sibling group;
    leaf probabilities sum to one, and the bundle reloads the node head."""
    with quiet_env(tmp_path):
        model = imgclass.train(hier["data"], method="test_efficientnet@scratch", img_size=32, hierarchy="local",
                               out=tmp_path / "r", train_config={**FAST, "epochs": 2}, n_jobs=1)
    n_nodes = len(model.decision_.tree().nodes)
    assert model.model_.get_classifier().out_features == n_nodes > len(model.classes_)
    files = sorted(str(p) for p in Path(hier["data"]).rglob("*.png"))[::5]
    P = model.predict_proba(files)
    assert P.shape == (len(files), len(model.classes_)) and np.allclose(P.sum(axis=1), 1.0, atol=1e-6)
    again = imgclass.load_model(tmp_path / "r" / "model")
    assert again.hierarchy == "local"
    np.testing.assert_allclose(again.predict_proba(files), P, atol=1e-5)
