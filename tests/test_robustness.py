"""Corruptions (ImageNet-C style) and the robustness evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import write_colour_dataset

import imgclass
from imgclass.errors import ConfigError
from imgclass.transforms.corruptions import CORRUPTIONS, corrupt


@pytest.fixture(scope="module")
def photo():
    import skimage.data

    return np.asarray(skimage.data.chelsea())[::4, ::4].copy()  # 75 x 113 RGB


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_is_reproducible_and_grows_with_severity(photo, name):
    out = [corrupt(photo, name, s, seed=3) for s in (1, 3, 5)]
    for o in out:
        assert o.shape == photo.shape and o.dtype == np.uint8
    np.testing.assert_array_equal(out[0], corrupt(photo, name, 1, seed=3))
    err = [np.abs(o.astype(float) - photo).mean() for o in out]
    assert err[0] > 0.5 and err[0] <= err[1] <= err[2] + 1e-6, err


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_every_severity_step_is_stronger_even_on_32px_images(photo, name):
    """The ladder must not collapse on small images (CIFAR): kernels with sub-pixel sizes still grow."""
    for img in (photo, photo[::3, ::3][:32, :32].copy()):
        err = [np.abs(corrupt(img, name, s, seed=3).astype(float) - img).mean() for s in range(1, 6)]
        assert err[0] > 0.5 and all(b > a for a, b in zip(err, err[1:])), (img.shape, err)


def test_bad_corruption_or_severity():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ConfigError, match="unknown corruption"):
        corrupt(img, "rain", 1)
    with pytest.raises(ConfigError, match="severity"):
        corrupt(img, "jpeg", 6)


def test_robustness_table_plot_and_relative_score(tmp_path):
    data = write_colour_dataset(tmp_path / "d", n_per_class=10, size=24)
    model = imgclass.train(data, method="color_hist+logreg", n_jobs=1)
    res = imgclass.robustness(model, data, corruptions=["contrast", "gaussian_noise"], severities=(1, 5),
                                  out=tmp_path / "rob")
    assert res.n == 30 and res.clean_accuracy == 1.0
    assert set(res.table) == {"contrast", "gaussian_noise"} and all(len(v) == 2 for v in res.table.values())
    assert res.table["contrast"][1] <= res.table["contrast"][0]  # severity 5 hurts at least as much
    assert res.mean_corruption_accuracy == pytest.approx(np.mean([a for v in res.table.values() for a in v]))
    assert res.relative == pytest.approx(res.mean_corruption_accuracy)
    doc = json.loads((tmp_path / "rob" / "robustness.json").read_text())
    assert doc["accuracy"]["contrast"] == res.table["contrast"]
    assert (tmp_path / "rob" / "robustness.png").stat().st_size > 1000


def test_robustness_cli(tmp_path, capsys):
    from imgclass.cli import main

    data = write_colour_dataset(tmp_path / "d", n_per_class=6, size=16)
    imgclass.train(data, method="color_hist+logreg", out=tmp_path / "run", n_jobs=1)
    assert main(["robustness", str(tmp_path / "run" / "model"), str(data), "--corruptions", "jpeg",
                 "--severities", "1,5"]) in (0, None)
    out = capsys.readouterr().out
    assert "jpeg" in out and "of clean" in out
    assert main(["robustness", str(tmp_path / "run" / "model"), str(data), "--severities", "9"]) == 2


def test_corruption_augmentation_changes_half_the_batch_and_trains(tmp_path):
    import torch

    from imgclass.training.engine import BatchAugment

    x = torch.full((16, 3, 24, 24), 128, dtype=torch.uint8)
    x[:, 0] = 200
    aug = BatchAugment("corruptions", torch.Generator().manual_seed(0))
    out = aug(x)
    assert out.shape == x.shape
    std = out.float().std(dim=(1, 2, 3))
    assert (std > 25).sum() >= 3  # some images got noise/blur/haze beyond brightness/contrast jitter
    data = write_colour_dataset(tmp_path / "d", n_per_class=8, size=24)
    model = imgclass.train(data, method="smallcnn", img_size=24, n_jobs=1,
                           train_config={"epochs": 1, "batch_size": 8, "augment": "corruptions"})
    assert model.train_config["augment"] == "corruptions" and len(model.history_) == 1
