"""Classical feature extractors: shapes, dtypes, finiteness, concatenation and learned state."""

from __future__ import annotations

import numpy as np
import pytest

from imgclass.features import Concat, extract_features, make_extractor
from imgclass.features.classical import EXTRACTORS
from imgclass.transforms import Preprocess

# small codebooks so the bag-of-words extractors fit on a handful of tiny images
SMALL = {"sift": {"k": 8}, "orb": {"k": 8}}


def _images(n=5, h=24, w=24, seed=0):
    rng = np.random.default_rng(seed)
    out = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(n - 1)]
    out.append(np.full((h, w, 3), 128, dtype=np.uint8))   # a constant image: no NaNs allowed
    return out


@pytest.mark.parametrize("name", list(EXTRACTORS))
def test_every_extractor(name):
    ex = make_extractor(name, SMALL)
    assert ex.name == name
    train = _images(6)
    if ex.needs_fit:
        assert not ex.is_fitted
        ex.fit(train)
        assert ex.is_fitted
    X = ex.transform(train)
    assert isinstance(X, np.ndarray)
    assert X.dtype == np.float32
    assert X.ndim == 2 and X.shape[0] == 6 and X.shape[1] > 0
    assert np.isfinite(X).all()
    # fixed width whatever the input size
    X2 = ex.transform(_images(3, 16, 30, seed=1))
    assert X2.shape == (3, X.shape[1])
    assert np.isfinite(X2).all()
    # deterministic
    assert np.array_equal(ex.transform(train), X)
    # the random images are not all described identically
    assert not np.allclose(X[0], X[1])


@pytest.mark.parametrize("name", ["sift", "orb"])
def test_bag_of_words_needs_fit_and_state_round_trip(name):
    ex = make_extractor(name, SMALL)
    with pytest.raises(RuntimeError):
        ex.transform(_images(2))
    ex.fit(_images(6))
    state = ex.get_state()
    assert state["codebook"].shape[0] == 8
    other = make_extractor(name, SMALL)
    other.set_state(state)
    assert other.is_fitted
    imgs = _images(3, seed=5)
    assert np.array_equal(other.transform(imgs), ex.transform(imgs))


def test_concat_width_is_sum():
    imgs = _images(4)
    hog = make_extractor("hog").transform(imgs)
    ch = make_extractor("color_hist").transform(imgs)
    both = make_extractor("hog,color_hist")
    assert isinstance(both, Concat)
    X = both.transform(imgs)
    assert X.shape == (4, hog.shape[1] + ch.shape[1])
    assert np.array_equal(X, np.hstack([hog, ch]))
    assert make_extractor(["hog", "color_hist"]).transform(imgs).shape == X.shape


def test_concat_with_fitted_part_state():
    ex = make_extractor("color_hist,sift", SMALL)
    assert ex.needs_fit and not ex.is_fitted
    ex.fit(_images(6))
    state = ex.get_state()
    assert set(state) == {"1.codebook"}
    other = make_extractor("color_hist,sift", SMALL)
    other.set_state(state)
    imgs = _images(2, seed=9)
    assert np.array_equal(other.transform(imgs), ex.transform(imgs))


def test_unknown_extractor():
    from imgclass.errors import ConfigError

    with pytest.raises(ConfigError, match="surf"):
        make_extractor("surf")
    with pytest.raises(ConfigError, match="surf"):
        make_extractor("hog,surf")
    with pytest.raises(ConfigError):
        make_extractor("")
    with pytest.raises(ConfigError, match="bad parameters"):
        make_extractor("hog", {"hog": {"nonsense": 1}})


def test_extract_features_skips_bad_sources(tmp_path, make_bad_files):
    from PIL import Image

    good = []
    for i in range(3):
        p = tmp_path / f"g{i}.png"
        Image.fromarray(_images(1, seed=i)[0] if i else np.zeros((8, 8, 3), np.uint8)).save(p)
        good.append(str(p))
    bad = make_bad_files(tmp_path / "bad")
    sources = [good[0], str(bad["zero"]), good[1], str(bad["corrupt"]), good[2]]
    ex = make_extractor("pixels")
    feats = extract_features(ex, sources, Preprocess(size=16), n_jobs=1)
    assert feats.ok.tolist() == [True, False, True, False, True]
    assert feats.X.shape == (3, 16 * 16 * 3)
    assert [p for p, _ in feats.errors] == [str(bad["zero"]), str(bad["corrupt"])]
    # rows line up with the readable inputs
    alone = extract_features(ex, [good[1]], Preprocess(size=16), n_jobs=1)
    assert np.array_equal(feats.X[1], alone.X[0])
