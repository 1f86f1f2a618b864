"""Compression (issue 8, part 3): magnitude pruning and knowledge distillation of bundles.

One ``smallcnn`` teacher at 16 px and one ``pixels+logreg`` teacher, trained once on generated colour
squares; pruning and distillation run for an epoch or two on the same tiny data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import quiet_env, write_colour_dataset
from conftest import run_cli as _run

import imgclass
from imgclass.deploy import COMPRESS_JSON, distill, prune
from imgclass.deploy.compress import DistillLoss

SIZE = 16
FAST = {"batch_size": 8}


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """A ``smallcnn`` run and a ``pixels+logreg`` run on 3 colours x 15 images (9 validation images)."""
    base = tmp_path_factory.mktemp("compress")
    with quiet_env(base):
        data = write_colour_dataset(base / "data", n_per_class=15, size=20, seed=5)
        cnn = imgclass.train(data, method="smallcnn", img_size=SIZE, out=base / "cnn", n_jobs=1, seed=0,
                             train_config={"epochs": 3, "batch_size": 8, "lr": 3e-3})
        px = imgclass.train(data, method="pixels+logreg", out=base / "px", n_jobs=1, seed=0)
    files = sorted(str(p) for p in data.rglob("*.png"))
    return {"base": base, "data": data, "cnn": Path(cnn.run_dir) / "model", "px": Path(px.run_dir) / "model",
            "files": files}


def _conv_linear_weights(bundle: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {k: v for k, v in load_file(str(bundle / "weights.safetensors")).items()
            if k.endswith(".weight") and v.ndim in (2, 4)}


@pytest.mark.slow
def test_prune_reaches_the_sparsity_and_saves_a_normal_bundle(teachers, tmp_path):
    res = prune(teachers["cnn"], teachers["data"], amount=0.6, epochs=1, out=tmp_path / "pruned", n_jobs=1, **FAST)
    ws = _conv_linear_weights(res.bundle)
    zeros = sum(int((w == 0).sum()) for w in ws.values()) / sum(w.numel() for w in ws.values())
    assert 0.599 <= zeros <= 0.61  # the masks survive fine-tuning and are made permanent
    assert not any(k.endswith(("_orig", "_mask")) for k in ws)
    model = imgclass.load_model(res.bundle)  # a normal bundle: loads, predicts, has metrics
    P = model.predict_proba(teachers["files"])
    assert P.shape == (len(teachers["files"]), 3) and np.isfinite(P).all()
    doc = json.loads((res.run_dir / COMPRESS_JSON).read_text())
    assert {"before", "after", "rows", "options", "change"} <= set(doc)
    b, a = doc["before"], doc["after"]
    for row in (b, a):
        assert {"bytes", "gzip_bytes", "nonzero_params", "sparsity", "img_per_s", "accuracy"} <= set(row)
    assert b["sparsity"] == 0 and a["sparsity"] == pytest.approx(0.6, abs=0.01)
    assert a["gzip_bytes"] < 0.8 * b["gzip_bytes"] and a["nonzero_params"] < 0.5 * b["nonzero_params"]
    assert doc["split"] == "run"  # the teacher's own split: validation images it never trained on
    meta = json.loads((res.bundle / "model.json").read_text())
    assert meta["compressed"]["kind"] == "prune" and meta["method"] == "smallcnn"


def test_structured_pruning_zeroes_whole_channels(teachers):
    res = prune(teachers["cnn"], teachers["data"], amount=0.5, structured=True, epochs=0, n_jobs=1)
    assert res.run_dir is None  # no out: nothing written
    for name, m in res.model.model_.named_modules():
        if isinstance(m, torch.nn.Conv2d):
            dead = int((m.weight.detach().flatten(1).abs().sum(1) == 0).sum())
            assert dead == round(0.5 * m.out_channels), name
    assert res.after["zero_channels"] == res.after["conv_channels"] // 2


@pytest.mark.slow
def test_distill_a_classical_teacher_into_smallcnn(teachers, tmp_path):
    res = distill(teachers["px"], teachers["data"], student="smallcnn", epochs=4, img_size=SIZE, lr=3e-3,
                  out=tmp_path / "student", n_jobs=1, **FAST)
    doc = json.loads((res.run_dir / COMPRESS_JSON).read_text())
    assert {"before", "after", "teacher", "student", "agreement"} <= set(doc)
    assert doc["teacher"]["method"] == "pixels+logreg" and doc["student"]["method"] == "smallcnn"
    assert doc["agreement"] > 0.6  # 3 classes: chance is 1/3
    P = imgclass.load_model(res.bundle).predict_proba(teachers["files"])
    assert np.isfinite(P).all()


@pytest.mark.slow
def test_cli_prune_then_predict_and_distill_a_deep_teacher(teachers, tmp_path):
    rc, out, err = _run(["prune", teachers["cnn"], teachers["data"], "--epochs", "1", "--batch-size", "8",
                         "--out", tmp_path / "p", "--json"])
    assert rc == 0, err
    s = json.loads(out)
    assert s["after"]["sparsity"] == pytest.approx(0.5, abs=0.01) and Path(s["bundle"]).is_dir()
    rc, out, err = _run(["predict", s["bundle"], teachers["files"][0]])
    assert rc == 0, err
    rc, out, err = _run(["distill", teachers["cnn"], teachers["data"], "--epochs", "1", "--img-size", "12",
                         "--batch-size", "8", "--temperature", "2", "--out", tmp_path / "d"])
    assert rc == 0, err
    assert "teacher" in out and "student" in out and "agree" in out and (tmp_path / "d" / "model" / "model.json").exists()


@pytest.mark.parametrize("argv, needle", [
    (["prune", "{px}", "{data}"], "classical pipeline (pixels+logreg)"),
    (["prune", "{cnn}", "{data}", "--amount", "1.5"], "--amount 1.5"),
    (["prune", "{cnn}", "{data}", "--amount", "0"], "--amount 0"),
    (["prune", "{data}", "{data}"], "not a model bundle"),
    (["prune", "{cnn}", "{other}"], "classes differ"),
    (["distill", "{cnn}", "{data}", "--student", "nonet"], "--student nonet: unknown student"),
    (["distill", "{cnn}", "{data}", "--student", "hog+svm"], "--student hog+svm"),
    (["distill", "{cnn}", "{data}", "--alpha", "2"], "--alpha 2"),
    (["distill", "{cnn}", "{data}", "--temperature", "0"], "--temperature 0"),
])
def test_bad_inputs_exit_2_with_one_line(teachers, tmp_path, argv, needle):
    other = write_colour_dataset(tmp_path / "other", n_per_class=3, size=8,
                                 classes={"cyan": (0, 200, 200), "pink": (250, 100, 200)})
    paths = {"px": teachers["px"], "cnn": teachers["cnn"], "data": teachers["data"], "other": other}
    rc, out, err = _run([a.format(**paths) for a in argv])
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("imgclass: error:"), err
    assert needle in lines[0]


def test_distill_loss_is_cross_entropy_at_alpha_0_and_zero_kl_for_a_perfect_student():
    torch.manual_seed(0)
    logits, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 1, 0])
    onehot = torch.nn.functional.one_hot(y, 3).float()
    soft = torch.softmax(logits / 4, dim=1)
    target = torch.cat([soft, onehot], dim=1)
    ce = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(DistillLoss(3, 4.0, 0.0)(logits, target), ce)
    assert DistillLoss(3, 4.0, 1.0)(logits, target).abs() < 1e-6
    assert torch.allclose(DistillLoss(3, 4.0, 0.5)(logits, target), 0.5 * ce, atol=1e-6)
