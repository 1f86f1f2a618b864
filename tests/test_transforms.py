"""Pre-processing (``Preprocess``) and the augmentation presets' names."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from imgclass.errors import ConfigError
from imgclass.transforms import DENOISE, EQUALIZE, RESIZE_MODES, Preprocess


@pytest.fixture
def noisy():
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (20, 40, 3), dtype=np.uint8))  # 40 wide, 20 high


def test_to_dict_from_dict_round_trip():
    pp = Preprocess(size=(24, 16), resize="pad", interpolation="bicubic", grayscale=True, denoise="median",
                    denoise_strength=2.0, equalize="clahe", mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    d = pp.to_dict()
    text = json.dumps(d)                 # JSON-serialisable as is
    back = Preprocess.from_dict(json.loads(text))
    assert back == pp
    assert back.to_dict() == d
    assert Preprocess.from_dict(None) == Preprocess()
    assert Preprocess.from_dict(Preprocess(size=32).to_dict()).size == 32


def test_from_dict_unknown_key():
    with pytest.raises(ConfigError, match="colour"):
        Preprocess.from_dict({"size": 8, "colour": True})


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("size, expected", [(16, (16, 16)), ((24, 12), (12, 24)), ((10, 30), (30, 10))])
def test_resize_modes_give_requested_size(noisy, mode, size, expected):
    out = Preprocess(size=size, resize=mode)(noisy)
    assert out.size == expected     # PIL size is (w, h); Preprocess size is (h, w)
    arr = Preprocess(size=size, resize=mode).to_array(noisy)
    assert arr.shape == (expected[1], expected[0], 3) and arr.dtype == np.uint8


def test_pad_letterboxes_and_crop_fills():
    white = Image.new("RGB", (40, 20), (255, 255, 255))
    padded = np.asarray(Preprocess(size=16, resize="pad")(white))
    assert padded[0, 8].tolist() == [0, 0, 0]           # black bars top and bottom
    assert padded[8, 8].tolist() == [255, 255, 255]
    cropped = np.asarray(Preprocess(size=16, resize="crop")(white))
    assert (cropped == 255).all()                       # centre crop: no bars
    squashed = np.asarray(Preprocess(size=16, resize="squash")(white))
    assert (squashed == 255).all()


def test_size_none_keeps_size(noisy):
    assert Preprocess()(noisy).size == (40, 20)


def test_grayscale_gives_equal_channels(noisy):
    out = np.asarray(Preprocess(grayscale=True)(noisy))
    assert out.shape == (20, 40, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
    assert not np.array_equal(np.asarray(noisy)[..., 0], np.asarray(noisy)[..., 1])


@pytest.mark.parametrize("kind", DENOISE)
def test_denoise_options(noisy, kind):
    out = Preprocess(denoise=kind)(noisy)
    assert out.mode == "RGB" and out.size == noisy.size
    before, after = np.asarray(noisy).astype(float), np.asarray(out).astype(float)
    if kind == "none":
        assert np.array_equal(before, after)
    else:  # smoothing uniform noise lowers its pixel-to-pixel variation
        assert np.abs(np.diff(after, axis=1)).mean() < 0.8 * np.abs(np.diff(before, axis=1)).mean()


@pytest.mark.parametrize("kind", EQUALIZE)
def test_equalize_options(kind):
    rng = np.random.default_rng(1)
    low = Image.fromarray(rng.integers(100, 130, (32, 32, 3), dtype=np.uint8))  # low contrast
    out = Preprocess(equalize=kind)(low)
    assert out.mode == "RGB" and out.size == (32, 32)
    spread = np.ptp(np.asarray(out).astype(int))
    if kind == "none":
        assert np.array_equal(np.asarray(out), np.asarray(low))
    else:
        assert spread > np.ptp(np.asarray(low).astype(int))


def test_steps_order_and_combination(noisy):
    pp = Preprocess(size=8, grayscale=True, denoise="gaussian", equalize="hist")
    assert [type(s).__name__ for s in pp.steps()] == ["Denoise", "Equalize", "Grayscale", "Resize"]
    out = np.asarray(pp(noisy))
    assert out.shape == (8, 8, 3)
    assert np.array_equal(out[..., 0], out[..., 2])


@pytest.mark.parametrize("kw", [{"resize": "zoom"}, {"denoise": "bilateral"}, {"equalize": "gamma"},
                                {"interpolation": "cubic-ish"}])
def test_bad_options(kw):
    with pytest.raises(ConfigError):
        Preprocess(**kw)


def test_augment_presets_are_one_set():
    from imgclass.transforms import augment

    assert augment.AUGMENT_PRESETS == ("none", "light", "standard", "strong", "corruptions")
    for name in augment.AUGMENT_PRESETS:                 # the module docstring's table names every preset
        assert f"``{name}``" in augment.__doc__
    with pytest.raises(ConfigError, match="extreme"):
        augment.BatchAugment("extreme", None)


@pytest.mark.subprocess
def test_import_transforms_does_not_import_torch():
    code = "import sys, imgclass.transforms, imgclass.transforms.augment; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
