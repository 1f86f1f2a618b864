"""Semi-supervised training: --unlabeled with self-training / label spreading (classical) and
FixMatch (deep). Labels found among the unlabelled images only score the pseudo-labels."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import run_cli as _run
from conftest import write_colour_dataset

import imgclass
from imgclass.errors import ConfigError
from imgclass.learning.semi import balanced_self_training

CLASSES = {"red": (200, 30, 30), "green": (30, 180, 30), "blue": (30, 40, 200)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """2 labelled images per class, 20 unlabelled per class (class folders, for scoring), 10 val per class,
    and a copy of the unlabelled images filed under the WRONG class names."""
    root = tmp_path_factory.mktemp("semi")
    write_colour_dataset(root / "labelled", n_per_class=2, classes=CLASSES, seed=1)
    write_colour_dataset(root / "pool", n_per_class=20, classes=CLASSES, seed=2)
    write_colour_dataset(root / "val", n_per_class=10, classes=CLASSES, seed=3)
    wrong = {"red": "green", "green": "blue", "blue": "red"}
    for src, dst in wrong.items():
        shutil.copytree(root / "pool" / src, root / "mislabelled_pool" / dst)
    return root


@pytest.mark.parametrize("semi", ["self-training", "label-spreading", "balanced-self-training"])
def test_classical_semi_supervised_uses_pseudo_labels_and_scores_them(data, semi):
    val = imgclass.load_dataset(data / "val")
    model = imgclass.train(data / "labelled", method="color_hist+logreg", val=val, unlabeled=data / "pool",
                           semi=semi, n_jobs=1)
    rep = model.meta_["semi"]
    assert rep["method"] == semi and rep["labelled"] == 6 and rep["unlabeled"] == 60
    assert rep["pseudo_labels"] > 30 and sum(r["added"] for r in rep["rounds"]) == rep["pseudo_labels"]
    assert rep["pseudo_accuracy"] > 0.9  # colour classes: the pseudo-labels are right
    assert model.meta_["metrics"]["val"]["accuracy"] > 0.9
    # the pool's own labels never reach the classifier: filed under wrong names, the model is unchanged
    # and only the reported pseudo-label accuracy drops
    again = imgclass.train(data / "labelled", method="color_hist+logreg", val=val, unlabeled=data / "mislabelled_pool",
                           semi=semi, n_jobs=1)
    assert again.meta_["semi"]["pseudo_accuracy"] < 0.1
    np.testing.assert_allclose(again.predict_proba(val), model.predict_proba(val), atol=1e-8)


def test_deep_fixmatch_records_pseudo_labels_per_epoch(data, tmp_path):
    model = imgclass.train(data / "labelled", method="smallcnn", img_size=16, out=tmp_path / "run",
                           unlabeled=data / "pool", pseudo_threshold=0.34, n_jobs=1,
                           train_config={"epochs": 2, "batch_size": 4, "augment": "light", "lr": 3e-3})
    hist = model.history_
    assert all("pseudo_labels" in h for h in hist) and sum(h["pseudo_labels"] for h in hist) > 0
    rep = model.meta_["semi"]
    assert rep["method"] == "fixmatch" and rep["threshold"] == 0.34 and rep["unlabeled"] == 60
    assert [r["round"] for r in rep["rounds"]] == [1, 2]
    assert any(r["accuracy"] is not None for r in rep["rounds"])
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "pseudo_threshold: 0.34" in cfg and "unlabeled:" in cfg


def test_cli_prints_the_pseudo_label_rounds(data, tmp_path):
    rc, out, err = _run(["train", str(data / "labelled"), "--method", "color_hist+logreg", "--out",
                         str(tmp_path / "run"), "--unlabeled", str(data / "pool"), "--semi", "label-spreading",
                         "--jobs", "1", "--json"])
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["semi"]["method"] == "label-spreading" and doc["semi"]["rounds"][0]["added"] > 0


@pytest.mark.parametrize("args, message", [
    (["--semi", "self-training"], "need --unlabeled"),
    (["--unlabeled", "POOL", "--semi", "fixmatch"], "classical pipelines use self-training, label-spreading or balanced"),
    (["--unlabeled", "POOL", "--semi", "co-training"], "--semi 'co-training'"),
    (["--unlabeled", "POOL", "--pseudo-threshold", "1.5"], "--pseudo-threshold 1.5"),
    (["--unlabeled", "EMPTY"], "no images found"),
])
def test_bad_semi_options_exit_2_with_one_line(data, tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [str(data / "pool") if a == "POOL" else str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    rc, out, err = _run(["train", str(data / "labelled"), "--method", "color_hist+logreg", "--out",
                         str(tmp_path / "run"), "--jobs", "1", *args])
    assert rc == 2, (out, err)
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before the run directory is made


def _logreg():
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=1.0, max_iter=500)


def test_balanced_self_training_gives_every_class_the_same_quota_and_helps():
    """Generated blobs: 3 labelled points per class, an unlabelled pool with one class 4x as frequent.
    Every round gives each class the same number of pseudo-labels, growing to the share asked for, and
    the classifier trained on labels + pseudo-labels is at least as accurate as the labels alone."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1.6, size=(4, 8))
    sizes = [200, 50, 50, 50]
    F_u = np.concatenate([c + rng.normal(0, 1, size=(n, 8)) for c, n in zip(centres, sizes)])
    truth = np.repeat(np.arange(4), sizes)
    F_l = np.concatenate([c + rng.normal(0, 1, size=(3, 8)) for c in centres])
    y_l = np.repeat(np.arange(4), 3)
    F_t = np.concatenate([c + rng.normal(0, 1, size=(100, 8)) for c in centres])
    y_t = np.repeat(np.arange(4), 100)
    rows, pseudo, rounds = balanced_self_training(_logreg, F_l, y_l, F_u, share=0.4, rounds=2, truth=truth)
    assert [r["round"] for r in rounds] == [1, 2]
    assert sum(r["added"] for r in rounds) == len(rows) == rounds[-1]["pseudo_labels"]
    quota = round(0.4 * len(F_u) / 4)
    counts = np.bincount(pseudo, minlength=4)
    assert counts.max() <= quota and counts.min() >= 0.8 * quota  # balanced, not led by the frequent class
    assert rounds[0]["pseudo_labels"] < rounds[1]["pseudo_labels"]
    assert rounds[-1]["accuracy"] > 0.8
    base = (_logreg().fit(F_l, y_l).predict(F_t) == y_t).mean()
    semi = (_logreg().fit(np.concatenate([F_l, F_u[rows]]), np.concatenate([y_l, pseudo])).predict(F_t) == y_t).mean()
    assert semi >= base
    # deterministic
    rows2, pseudo2, _ = balanced_self_training(_logreg, F_l, y_l, F_u, share=0.4, rounds=2, truth=truth)
    assert np.array_equal(rows, rows2) and np.array_equal(pseudo, pseudo2)
    with pytest.raises(ConfigError, match="share"):
        balanced_self_training(_logreg, F_l, y_l, F_u, share=1.5)


def test_pseudo_label_threshold_is_read_on_the_label_smoothed_scale():
    from imgclass.training.fixmatch import pseudo_label_threshold

    # label smoothing 0.1 over 10 classes trains the true class toward 0.91: 0.95 of that
    assert pseudo_label_threshold(0.95, 0.1, 10) == pytest.approx(0.95 * 0.91)
    assert pseudo_label_threshold(0.95, 0.0, 10) == 0.95
    assert pseudo_label_threshold(0.5, 0.2, 2) == pytest.approx(0.5 * 0.9)
    # a smoothed network's confident predictions pass; an unscaled 0.95 would reject them all
    target = 1 - 0.1 + 0.1 / 10
    assert target >= pseudo_label_threshold(0.95, 0.1, 10) and target < 0.95


def test_fixmatch_strong_view_draws_randaugment_and_cutout_per_image():
    import torch

    from imgclass.transforms.augment import StrongView

    torch.manual_seed(0)
    view = StrongView(torch.Generator().manual_seed(0), hflip=False)
    x = torch.randint(60, 200, (1, 3, 32, 32), dtype=torch.uint8).repeat(8, 1, 1, 1)  # one image, 8 times
    out = view(x)
    assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
    assert float(out.min()) >= 0 and float(out.max()) <= 255
    # every copy gets its own draw: no two strong views of the same image are alike
    flat = out.reshape(8, -1)
    assert all(not torch.allclose(flat[i], flat[j]) for i in range(8) for j in range(i + 1, 8))
    # Cutout: each view holds a grey square (127 in every channel) of at least 2% of the image
    grey = (out == 127.0).all(dim=1)
    assert all(int(g.sum()) >= 0.02 * 32 * 32 for g in grey)


def test_distribution_alignment_pulls_skewed_pool_predictions_back_to_the_labelled_prior():
    """A network that has drifted onto class 0 on the pool: aligned, the pseudo-labels follow the
    balanced labelled classes again (rows stay distributions, the argmax of clear rows is kept)."""
    import torch

    from imgclass.training.fixmatch import DistributionAlignment

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 4, generator=g)
    logits[:, 0] += 2.0  # class 0 wins far too often
    prob = torch.softmax(logits, dim=1)
    align = DistributionAlignment(torch.full((4,), 0.25), window=8)
    before = torch.bincount(prob.argmax(1), minlength=4)
    aligned = align(prob)
    after = torch.bincount(aligned.argmax(1), minlength=4)
    assert torch.allclose(aligned.sum(1), torch.ones(400))
    assert before[0] > 250 and after[0] < 150 and int(after.min()) > 60
    clear = prob.max(1).values > 0.95
    assert (aligned.argmax(1)[clear] == prob.argmax(1)[clear]).float().mean() > 0.8
    # the running mean keeps only the last ``distribution_alignment`` batches
    for _ in range(20):
        align(prob)
    assert len(align.pool_probs) == 8
