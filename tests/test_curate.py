"""Data curation: quality checks, exact/near duplicates, leakage and conflicting labels, outliers, label
issues (confident learning), the clean/excluded/suggested-label exports, ``imgclass curate`` (report,
JSON, one-line user errors, unreadable files, the data folder left untouched) and ``imgclass train
--exclude``.

Everything runs on tiny generated images (64 px shapes, noise) with ``color_hist+logreg`` features."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error as _one_line_error
from conftest import run_cli as _run
from PIL import Image, ImageDraw, ImageFilter

from imgclass.curation import DEFAULT_EXCLUDE, curate
from imgclass.curation.duplicates import candidate_pairs, exact_groups, groups_from_pairs
from imgclass.curation.labels import confident_learning, out_of_fold_probabilities
from imgclass.curation.outliers import layer_outlier_scores, outlier_scores, refine_outlier_scores
from imgclass.curation.quality import robust_z
from imgclass.data import load_dataset
from imgclass.errors import ConfigError

MODEL = "color_hist+logreg"
CLASSES = {"red": (200, 60, 60), "green": (60, 200, 60), "blue": (60, 60, 200)}
N_PER_CLASS = 10
SIDE = 64


# --------------------------------------------------------------------------- image helpers
def _shapes(rgb, seed: int, size: int = SIDE) -> Image.Image:
    """A sharp "photo": random rectangles and ellipses tinted towards ``rgb`` plus a little noise."""
    rng = np.random.default_rng(seed)
    base = np.asarray(rgb, float)
    im = Image.new("RGB", (size, size), tuple(int(v) for v in np.clip(base + rng.normal(0, 20, 3), 0, 255)))
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x0, y0 = (int(v) for v in rng.integers(-size // 4, size, 2))
        w, h = (int(v) for v in rng.integers(size // 8, size // 2, 2))
        col = tuple(int(v) for v in np.clip(base + rng.normal(0, 60, 3), 0, 255))
        (d.rectangle if rng.random() < 0.5 else d.ellipse)([x0, y0, x0 + w, y0 + h], fill=col)
    arr = np.asarray(im, float) + rng.normal(0, 3, (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _noise(seed: int, size: int = SIDE) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- the shared data set
#: planted problems, as paths relative to the photos folder
PLANTED = {
    "blurred": "red/blurred.png",  # Gaussian-blurred copy of red/red_05.png
    "blur_source": "red/red_05.png",
    "dark": "blue/dark.png",
    "bright": "blue/bright.png",
    "gray": "green/gray.png",
    "odd": "green/wide.png",  # 160 x 40
    "original": "red/red_00.png",
    "resized": "red/copy_resized.png",  # 96 x 96 bicubic
    "jpeg": "red/copy_recompressed.jpg",  # JPEG quality 85
    "cropped": "red/copy_cropped.png",  # 2 px cut off every side
    "exact_src": "green/green_03.png",
    "exact": "green/green_03_copy.png",  # identical bytes, same label
    "conflict_src": "green/green_04.png",
    "conflict": "blue/green_04_as_blue.png",  # identical bytes, another label
    "mislabelled": "green/actually_red.png",  # a red image in the green folder
    "corrupt": "blue/broken.png",  # not an image
}
NOISE = [f"blue/noise_{i}.png" for i in range(4)]  # distinct random-noise images: never duplicates


def write_photos(root: Path) -> Path:
    for k, (name, rgb) in enumerate(CLASSES.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(N_PER_CLASS):
            _shapes(rgb, 100 * k + i).save(root / name / f"{name}_{i:02d}.png")
    P = {k: root / v for k, v in PLANTED.items()}
    _shapes(CLASSES["red"], 105).filter(ImageFilter.GaussianBlur(1.5)).save(P["blurred"])
    arr = np.asarray(_shapes(CLASSES["blue"], 900), float)
    Image.fromarray((arr * 0.08).astype(np.uint8)).save(P["dark"])
    Image.fromarray((240 + arr * 0.05).clip(0, 255).astype(np.uint8)).save(P["bright"])
    _shapes(CLASSES["green"], 901).convert("L").convert("RGB").save(P["gray"])
    _shapes(CLASSES["green"], 902, size=160).crop((0, 60, 160, 100)).save(P["odd"])
    orig = Image.open(P["original"]).convert("RGB")
    orig.resize((96, 96), Image.BICUBIC).save(P["resized"])
    orig.save(P["jpeg"], quality=85)
    orig.crop((2, 2, SIDE - 2, SIDE - 2)).save(P["cropped"])
    P["exact"].write_bytes(P["exact_src"].read_bytes())
    P["conflict"].write_bytes(P["conflict_src"].read_bytes())
    _shapes(CLASSES["red"], 903).save(P["mislabelled"])
    P["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 3)
    for i, rel in enumerate(NOISE):
        _noise(700 + i).save(root / rel)
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return write_photos(tmp_path_factory.mktemp("cur") / "photos")


@pytest.fixture(scope="module")
def split_csv(photos) -> Path:
    """The photos as ``path,label,split`` with the JPEG copy of a training image in ``val``."""
    ds = load_dataset(photos)
    val = {PLANTED["jpeg"], "green/green_08.png", "blue/blue_08.png"}
    path = photos.parent / "photos_split.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for i in range(len(ds)):
            rel = ds.relpath(i)
            w.writerow([f"photos/{rel}", ds.classes[int(ds.targets[i])], "val" if rel in val else "train"])
    return path


@pytest.fixture(scope="module")
def result(split_csv):
    """``curate`` on the CSV (all four checks), shared read-only."""
    return curate(split_csv, model=MODEL, n_jobs=1, seed=0)


def _paths(rows, key="path") -> set[str]:
    return {r[key].removeprefix("photos/") for r in rows}


# --------------------------------------------------------------------------- quality
def test_robust_z():
    z = robust_z(np.array([1.0, 2, 3, 4, 100]))
    assert z[2] == 0.0
    assert z[4] == pytest.approx(97 / 1.4826)
    assert z[0] == pytest.approx(-2 / 1.4826)
    # the median and MAD come from the masked rows only
    zm = robust_z(np.array([0.0, 1, 2, 50]), mask=np.array([True, True, True, False]))
    assert zm[1] == 0.0 and zm[3] == pytest.approx(49 / 1.4826)
    # a zero MAD falls back to the mean absolute deviation, then to 1
    assert robust_z(np.array([5.0, 5, 5, 5, 9]))[-1] == pytest.approx(4 / 0.8)
    assert np.array_equal(robust_z(np.full(4, 3.0)), np.zeros(4))
    # NaNs are ignored for the statistics and stay NaN
    zn = robust_z(np.array([1.0, 2, 3, np.nan]))
    assert zn[1] == 0.0 and np.isnan(zn[3])
    assert np.array_equal(robust_z(np.array([np.nan, np.nan])), np.zeros(2))


def test_blurry_copy_is_flagged_and_sharp_images_mostly_not(result):
    blurry = _paths(result.issues()["blurry"])
    assert PLANTED["blurred"] in blurry
    assert result.issues()["blurry"][0]["path"] == "photos/" + PLANTED["blurred"]  # the most severe
    sharp = {f"{c}/{c}_{i:02d}.png" for c in CLASSES for i in range(N_PER_CLASS)}
    assert len(blurry & sharp) <= 1, blurry & sharp


def test_dark_bright_grayscale_and_odd_size_are_flagged(result):
    iss = result.issues()
    assert PLANTED["dark"] in _paths(iss["dark"]) and PLANTED["dark"] not in _paths(iss["bright"])
    assert PLANTED["bright"] in _paths(iss["bright"]) and PLANTED["bright"] not in _paths(iss["dark"])
    assert PLANTED["gray"] in _paths(iss["grayscale"])
    assert PLANTED["odd"] in _paths(iss["odd_size"])
    normal = {f"{c}/{c}_{i:02d}.png" for c in CLASSES for i in range(N_PER_CLASS)}
    for kind in ("dark", "bright", "grayscale", "odd_size"):
        assert not (_paths(iss[kind]) & normal), (kind, _paths(iss[kind]) & normal)
    row = next(r for r in iss["odd_size"] if r["path"].endswith(PLANTED["odd"]))
    assert "160x40" in row["detail"]


# --------------------------------------------------------------------------- duplicates
def test_exact_groups_and_groups_from_pairs():
    assert exact_groups(["a", "b", "a", None, None, "b", "c"]) == [[0, 2], [1, 5]]
    groups = groups_from_pairs(7, np.array([[0, 1], [1, 2], [4, 5]]))
    assert sorted(groups) == [[0, 1, 2], [4, 5]]
    assert groups_from_pairs(3, np.zeros((0, 2), np.int64)) == []


def test_candidate_pairs_finds_close_rows_once():
    E = np.array([[1.0, 0, 0], [0.99, 0.05, 0], [0, 1.0, 0], [0, 0, 1.0], [0, 0.02, 2.0]])
    pairs, cos = candidate_pairs(E, k=3, min_cosine=0.9)
    assert pairs.tolist() == [[0, 1], [3, 4]]  # each pair once, i < j, dissimilar rows left out
    assert np.all(cos > 0.99) and np.all(cos <= 1.0 + 1e-6)
    pairs, _ = candidate_pairs(E, k=3, min_cosine=-1.0)
    assert len(pairs) == len({tuple(p) for p in pairs.tolist()}) and (pairs[:, 0] < pairs[:, 1]).all()
    assert len(candidate_pairs(E[:1])[0]) == 0


def test_exact_copy_is_an_exact_duplicate(result):
    groups = [{r["path"].removeprefix("photos/"), r["duplicate_of"].removeprefix("photos/")}
              for r in result.issues()["exact_duplicates"]]
    assert {PLANTED["exact"], PLANTED["exact_src"]} in groups
    assert {PLANTED["conflict"], PLANTED["conflict_src"]} in groups
    assert len(groups) == 2


def test_near_duplicates_pair_copies_with_their_original(result):
    pairs = {frozenset((r["path"].removeprefix("photos/"), r["duplicate"].removeprefix("photos/")))
             for r in result.issues()["near_duplicates"]}
    for copy in ("resized", "jpeg", "cropped"):
        assert frozenset((PLANTED["original"], PLANTED[copy])) in pairs, (copy, pairs)
    copies = {PLANTED[k] for k in ("original", "resized", "jpeg", "cropped")}
    blur = {PLANTED["blurred"], PLANTED["blur_source"]}
    for p in pairs:  # every verified pair is a real copy; distinct images (noise included) are never paired
        assert p <= copies or p <= blur, p
    assert not any(p & set(NOISE) for p in pairs)
    assert result.near.candidates > len(pairs)  # the verification really rejected candidates


def test_copy_in_val_split_is_leakage(result):
    leak = result.issues()["leakage"]
    assert {r["path"].removeprefix("photos/") for r in leak} == {PLANTED[k] for k in ("original", "resized", "jpeg", "cropped")}
    assert all("train/val" in r["detail"] for r in leak)
    # excluding: the training copies go, the val copy stays
    ex = {result.dataset.relpath(i).removeprefix("photos/"): reasons for i, reasons in result.excluded(["leakage"]).items()}
    assert PLANTED["jpeg"] not in ex
    for k in ("original", "resized", "cropped"):
        assert any(r.startswith("leakage") for r in ex[PLANTED[k]])


def test_duplicate_with_another_label_is_conflicting(result):
    rows = result.issues()["conflicting_labels"]
    assert _paths(rows) == {PLANTED["conflict"], PLANTED["conflict_src"]}
    assert all("blue / green" in r["detail"] for r in rows)
    ex = result.excluded(["conflicting_labels"])
    assert {result.dataset.relpath(i).removeprefix("photos/") for i in ex} == {PLANTED["conflict"], PLANTED["conflict_src"]}


def test_duplicates_keep_one_copy(result):
    ex = {result.dataset.relpath(i).removeprefix("photos/"): r for i, r in result.excluded(["duplicates"]).items()}
    pair = {PLANTED["exact"], PLANTED["exact_src"]}
    assert len(pair & set(ex)) == 1  # one of the identical files is kept
    copies = [PLANTED[k] for k in ("original", "resized", "jpeg", "cropped")]
    assert sum(c not in ex for c in copies) == 1
    assert PLANTED["resized"] not in ex  # the largest copy is the one kept


# --------------------------------------------------------------------------- outliers
@pytest.mark.parametrize("method", ["lof", "iforest"])
def test_outlier_scores_rank_the_far_point_first(method):
    rng = np.random.default_rng(0)
    a = np.array([1.0, 0, 0, 0, 0, 0]) + rng.normal(0, 0.02, (25, 6))
    b = np.array([0, 1.0, 0, 0, 0, 0]) + rng.normal(0, 0.02, (25, 6))
    far = np.array([[0, 0, 0, 0, 1.0, 0]])
    E = np.vstack([a, far, b])
    score, zg, zc = outlier_scores(E, method=method, seed=0)
    assert score.shape == (51,)
    assert int(np.argmax(score)) == 25
    assert score[25] > np.sort(score)[-2] + 1.0
    assert np.isnan(zc).all()  # no labels: no per-class scores
    y = np.r_[np.zeros(25, int), -1, np.ones(25, int)]
    score_y, _, zc_y = outlier_scores(E, y=y, method=method, seed=0)
    assert int(np.argmax(score_y)) == 25 and np.isfinite(zc_y[:25]).all() and np.isnan(zc_y[25])


def test_layer_outlier_scores_rank_unusual_uncentred_rows_first():
    """The ``layers`` ranking on synthetic statistics: 3 rows off both class manifolds in every stage
    and with a centre that looks like the border (a "scene") come first; a row that is only
    off-manifold in one stage, or only uncentred, does not outrank them."""
    rng = np.random.default_rng(0)
    channels = (4, 5, 6, 7)
    n, scenes = 60, [10, 30, 50]
    cls = np.arange(n) % 2
    blocks = []
    for c in channels:
        centres = rng.normal(0, 1, (2, c))
        mean = np.abs(centres[cls] + rng.normal(0, 0.05, (n, c))) + 0.1
        mean[scenes] = np.abs(rng.normal(0, 1, (3, c))) + 0.1  # unlike either class
        std = np.abs(centres[cls] * 0.5 + rng.normal(0, 0.05, (n, c))) + 0.1
        std[scenes] = np.abs(rng.normal(0, 1, (3, c))) + 0.1
        blocks += [mean, std]
    spatial = rng.uniform(0.2, 0.6, (n, 10))  # (centre-border cosine, uniformity) x 5 maps
    spatial[scenes, -2] = 0.98
    spatial[5, -2] = 0.99  # uncentred, otherwise typical
    L = np.hstack(blocks + [spatial])
    score, parts = layer_outlier_scores(L, channels, seed=0)
    assert score.shape == (n,) and np.isfinite(score).all()
    assert set(parts) == {"lof_std_4", "lof_mean_5", "lof_mean_6", "lof_mean_7", "centre_border_similarity"}
    assert set(np.argsort(-score, kind="stable")[:3].tolist()) == set(scenes)
    assert score[scenes].min() > score[5]


def test_refine_outlier_scores_finds_the_outliers_the_first_ranking_missed():
    """24 rows share an unusual direction; the first ranking puts only 12 of them on top (the other 12 are
    mid-ranked) and also puts up 12 rows that are unusual for another reason (a quality problem, not
    eligible as examples). The refinement learns the shared direction from the eligible top rows and
    lifts the missed 12 into the top 24; the ineligible rows teach it nothing."""
    rng = np.random.default_rng(0)
    n, d = 600, 12
    X = rng.normal(0, 1, (n, d))
    out = np.arange(24)
    X[out, 0] += 3.0  # the shared direction
    blurry = np.arange(24, 36)
    X[blurry, 1] += 3.0  # a different direction, flagged elsewhere
    score = rng.normal(0, 1, n)
    score[out[:12]] = 6 + rng.uniform(0, 1, 12)
    score[out[12:]] = rng.uniform(0.5, 1.0, 12)  # missed: above the median, far from the top
    score[blurry] = 6 + rng.uniform(0, 1, 12)
    eligible = np.ones(n, bool)
    eligible[blurry] = False
    top = lambda s: set(np.argsort(-np.where(eligible, s, -np.inf), kind="stable")[:24].tolist())  # noqa: E731
    assert len(top(score) & set(out)) == 12
    refined = refine_outlier_scores(score, X, rounds=2, top=12, eligible=eligible, seed=0)
    assert refined.shape == (n,) and np.isfinite(refined).all()
    assert len(top(refined) & set(out)) >= 19
    # without the mask the flagged rows are examples too, and the refinement helps less
    mixed = refine_outlier_scores(score, X, rounds=2, top=24, seed=0)
    assert len(top(mixed) & set(out)) < len(top(refined) & set(out))
    # nothing to learn from: returned unchanged
    assert np.array_equal(refine_outlier_scores(score[:40], X[:40], top=30), score[:40])
    assert np.array_equal(refine_outlier_scores(score, X, rounds=0), score)


def test_blurry_images_are_not_ranked_as_outliers(result):
    rows = {result.dataset.relpath(k).removeprefix("photos/"): k for k in range(len(result.dataset))}
    k = rows[PLANTED["blurred"]]
    assert k in {r for r, *_ in result.quality["blurry"]}
    assert np.isnan(result.outlier_score[k])
    assert PLANTED["blurred"] not in _paths(result.issues()["outliers"])
    assert np.isfinite(result.outlier_score[rows[PLANTED["blur_source"]]])


def test_layer_statistics_see_uncentred_textures_as_scenes():
    """lite0 (packaged ImageNet weights, torch, no export): images of one object in the middle of a
    plain background have a final feature map whose centre differs from its border; uniform textures
    (stripes, noise, a gradient "sky") do not -- the layout signal of the ``layers`` detector."""
    torch = pytest.importorskip("torch")
    from imgclass.features.deep import layer_statistics_module

    rng = np.random.default_rng(0)
    side = 224
    yy, xx = np.mgrid[:side, :side]
    objects, textures = [], []
    for _ in range(4):
        bg = rng.uniform(40, 220, 3)
        im = np.ones((side, side, 3)) * bg
        r = side * rng.uniform(0.18, 0.28)
        disc = (yy - side / 2) ** 2 / 1.3 + (xx - side / 2) ** 2 < r ** 2
        im[disc] = 255 - bg
        im[(np.abs(yy - side / 2) < r / 3) & (np.abs(xx - side / 2) < r * 1.4)] = rng.uniform(0, 255, 3)
        objects.append(im + rng.normal(0, 4, im.shape))
    for k in range(4):
        if k % 2 == 0:  # stripes across the whole frame
            period = rng.uniform(8, 20)
            t = np.sin(2 * np.pi * (yy * np.cos(k) + xx * np.sin(k)) / period)[..., None]
            im = 128 + 100 * t * rng.uniform(0.5, 1, 3)
        else:  # a vertical colour gradient with fine noise (sky over sea)
            top, bottom = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
            im = top + (bottom - top) * (yy[..., None] / side) + rng.normal(0, 20, (side, side, 3))
        textures.append(im)
    x = np.clip(np.stack(objects + textures), 0, 255).astype(np.float32)
    x = (x.transpose(0, 3, 1, 2) / 255.0 - 0.5) / 0.5
    with torch.no_grad():
        out = layer_statistics_module("lite0", "imagenet")(torch.from_numpy(x)).numpy()
    centre_border = out[:, -2]
    assert centre_border[4:].min() > centre_border[:4].max(), centre_border


def test_layers_outlier_method_falls_back_to_lof_without_a_lite_backbone(photos):
    res = curate(photos, model=MODEL, n_jobs=1, seed=0, checks=("outliers",), outlier_method="layers")
    assert any("layers needs an EfficientNet-Lite" in n for n in res.notes)
    assert np.isfinite(res.outlier_score[res.stats.ok]).sum() >= 5
    assert res.outlier_z == 4.0  # the limit of the method used (lof), not of the one asked for (layers: 3.25)
    res = curate(photos, model=MODEL, n_jobs=1, seed=0, checks=("outliers",), outlier_z=2.5)
    assert res.outlier_z == 2.5
    z = res.outlier_score
    assert {r["path"] for r in res.issues()["outliers"]} == {res.dataset.relpath(i) for i in np.flatnonzero(z > 2.5)}


# --------------------------------------------------------------------------- label issues
def test_confident_learning_flags_flipped_labels_first():
    rng = np.random.default_rng(1)
    n, C = 90, 3
    true = np.repeat(np.arange(C), n // C)
    P = rng.dirichlet(np.ones(C), n) * 0.3
    P[np.arange(n), true] += 0.7
    flipped = np.array([3, 40, 77, 88])
    P[flipped] = 0.02
    P[flipped, true[flipped]] = 0.96  # the model is sure: these are clear flips
    y = true.copy()
    y[flipped] = (true[flipped] + 1) % C
    P[10] = [0.45, 0.55, 0.0]  # labelled 0, slightly prefers 1: a suspect, but not a confident one
    li = confident_learning(P, y)
    assert set(li.rows[:4].tolist()) == set(flipped.tolist())
    assert li.flagged[:4].all()
    assert li.suggested[:4].tolist() == true[li.rows[:4]].tolist()
    assert np.allclose(li.suggested_probability[:4], 0.96)
    assert np.all(np.diff(li.self_confidence) >= 0)  # lowest self-confidence first
    assert 10 in li.rows and not li.flagged[li.rows.tolist().index(10)]
    assert int(li.flagged.sum()) == 4
    cj = li.confident_joint  # (given, confident) counts: the four flips are its only off-diagonal entries
    assert cj.sum() - np.trace(cj) == 4 and all(cj[y[i], true[i]] >= 1 for i in flipped)
    # rows with a NaN probability or no label are ignored
    P2, y2 = P.copy(), y.copy()
    P2[3] = np.nan
    y2[40] = -1
    li2 = confident_learning(P2, y2)
    assert 3 not in li2.rows and 40 not in li2.rows and set(li2.rows[:2].tolist()) == {77, 88}


def test_out_of_fold_probabilities_shape_and_rows():
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    y = np.repeat([0, 2, 3], 12)  # class 1 has no images: its column is zero
    F = rng.normal(0, 0.3, (36, 4)) + np.eye(4)[y] * 3
    P = out_of_fold_probabilities(F, y, lambda: LogisticRegression(max_iter=500), folds=4, seed=0)
    assert P.shape == (36, 4)
    assert np.allclose(P.sum(axis=1), 1.0)
    assert np.all(P[:, 1] == 0)
    assert (P.argmax(axis=1) == y).mean() >= 0.9


def test_mislabelled_image_is_a_label_issue(result):
    rows = result.issues()["label_issues"]
    top = {r["path"].removeprefix("photos/"): r for r in rows[:5]}
    assert PLANTED["mislabelled"] in top, [r["path"] for r in rows[:5]]
    r = top[PLANTED["mislabelled"]]
    assert r["label"] == "green" and r["suggested"] == "red" and r["flagged"]


# --------------------------------------------------------------------------- actions
def test_export_clean_writes_kept_and_excluded(result, tmp_path):
    clean, excluded = result.export_clean(tmp_path / "out" / "clean.csv")
    assert clean == tmp_path / "out" / "clean.csv" and excluded == tmp_path / "out" / "excluded.csv"
    kept, ex = _read_csv(clean), _read_csv(excluded)
    assert list(kept[0]) == ["path", "label", "split"]
    assert all(r["reason"] for r in ex)
    kept_paths = {r["path"] for r in kept}
    ex_paths = {r["path"] for r in ex}
    assert not kept_paths & ex_paths
    ds = result.dataset
    assert len(kept) + len(ex) == len(ds)  # every item is either kept or excluded (the corrupt one too)
    reason = {Path(r["path"]).relative_to(Path(ds.root) / "photos").as_posix(): r["reason"] for r in ex}
    assert reason[PLANTED["blurred"]].startswith("blurry")
    assert "unreadable" in reason[PLANTED["corrupt"]]
    assert "likely label error" in reason[PLANTED["mislabelled"]]
    assert "conflicting labels" in reason[PLANTED["conflict"]]
    assert not reason.get(PLANTED["dark"], "").startswith("dark")  # dark is reported, not excluded by default
    assert all(Path(p).is_absolute() and Path(p).exists() for p in kept_paths)
    # the clean list loads back as a dataset with the same splits and labels
    back = load_dataset(clean)
    assert len(back) == len(kept) and set(back.splits) == {"train", "val"}
    assert set(back.classes) == set(CLASSES)
    # other exclusion types: dark too
    _, ex2 = result.export_clean(tmp_path / "b" / "clean.csv", types=(*DEFAULT_EXCLUDE, "dark"))
    assert any(r["path"].endswith(PLANTED["dark"]) and r["reason"].startswith("dark") for r in _read_csv(ex2))
    with pytest.raises(ConfigError, match="nope"):
        result.export_clean(tmp_path / "c" / "clean.csv", types=("nope",))


def test_suggest_labels_writes_csv(result, tmp_path):
    path = result.suggest_labels(tmp_path / "suggested.csv")
    rows = _read_csv(path)
    assert rows and list(rows[0]) == ["path", "label", "suggested", "self_confidence", "suggested_probability"]
    row = next(r for r in rows if r["path"].endswith(PLANTED["mislabelled"]))
    assert row["label"] == "green" and row["suggested"] == "red"
    assert all(r["label"] != r["suggested"] for r in rows)
    flagged = [r for r in result.issues()["label_issues"] if r["flagged"]]
    assert len(rows) == len(flagged)


def test_without_keeps_predefined_splits_consistent(split_csv):
    ds = load_dataset(split_csv)
    before = {k: {ds.sources[i] for i in v} for k, v in ds.splits.items()}
    drop = [f"photos/{PLANTED['jpeg']}", str(Path(ds.root) / "photos" / "red" / "red_01.png"), "photos/no/such.png"]
    out, removed = ds.without(drop)
    assert removed == 2 and len(out) == len(ds) - 2
    after = {k: {out.sources[i] for i in v} for k, v in out.splits.items()}
    gone = {str(Path(ds.root) / "photos" / PLANTED["jpeg"]), str(Path(ds.root) / "photos" / "red" / "red_01.png")}
    assert after["val"] == before["val"] - gone and after["train"] == before["train"] - gone
    assert sum(len(v) for v in out.splits.values()) == len(out)
    assert all(out.targets[j] == ds.targets[ds.sources.index(out.sources[j])] for j in range(len(out)))
    # from a CSV file with a path column, too
    (split_csv.parent / "drop.csv").write_text("path,reason\nphotos/red/red_02.png,x\n", encoding="utf-8")
    out2, removed2 = ds.without(split_csv.parent / "drop.csv")
    assert removed2 == 1 and sum(len(v) for v in out2.splits.values()) == len(ds) - 1


# --------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def cli_run(photos, tmp_path_factory):
    """``imgclass curate`` on the folder with every action; outputs outside it."""
    base = tmp_path_factory.mktemp("cli")
    before = _snapshot(photos)
    rc, out, err = _run(["curate", photos, "--model", MODEL, "--out", base / "report",
                         "--export-clean", base / "lists" / "clean.csv", "--suggest-labels", base / "lists" / "suggest.csv",
                         "--jobs", 1, "--json"])
    return {"rc": rc, "out": out, "err": err, "base": base, "photos": photos, "before": before,
            "after": _snapshot(photos)}


def test_cli_curate_json_counts_and_files(cli_run):
    assert cli_run["rc"] == 0, cli_run["err"]
    doc = json.loads(cli_run["out"])
    counts = doc["counts"]
    assert counts["exact_duplicates"] == 2 and counts["near_duplicates"] >= 3 and counts["blurry"] >= 1
    assert counts["leakage"] == 0  # a folder without split folders has no splits
    assert counts["conflicting_labels"] == 2
    assert doc["images"] == len(load_dataset(cli_run["photos"]))
    files = doc["files"]
    for key in ("report", "stats", "summary", "blurry", "near_duplicates", "label_issues", "clean", "excluded",
                "suggested_labels"):
        assert Path(files[key]).is_file(), key
    assert Path(files["clean"]).parent == cli_run["base"] / "lists"
    assert Path(files["excluded"]).name == "excluded.csv"
    assert json.loads(Path(files["summary"]).read_text(encoding="utf-8"))["counts"] == counts
    # the corrupt file is skipped and listed, not a crash
    assert any(s["path"].endswith("broken.png") for s in doc["skipped"])
    assert any(r["path"].endswith("broken.png") and "unreadable" in r["reason"] for r in _read_csv(files["excluded"]))
    stats = _read_csv(files["stats"])
    assert len(stats) == doc["images"]


def test_cli_curate_never_touches_the_data_folder(cli_run):
    assert cli_run["rc"] == 0, cli_run["err"]
    assert cli_run["after"] == cli_run["before"]


def test_cli_report_is_self_contained(cli_run):
    html = (cli_run["base"] / "report" / "report.html").read_text(encoding="utf-8")
    assert "data:image/jpeg;base64," in html and "data:image/png;base64," in html
    assert not re.search(r"""(src|href)\s*=\s*['"]?(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html
    assert "broken.png" in html[html.index("Unreadable files"):]
    assert "Near duplicates" in html and "Label issues" in html


def test_cli_bad_options_are_one_line_errors(photos, tmp_path):
    out = tmp_path / "o"
    _one_line_error(*_run(["curate", photos, "--model", MODEL, "--checks", "nope", "--out", out]), "--checks nope")
    _one_line_error(*_run(["curate", photos, "--model", "smallcnn", "--out", out]), "--model smallcnn")
    _one_line_error(*_run(["curate", photos, "--model", MODEL, "--oof", tmp_path / "missing.csv", "--out", out]),
                    "--oof", "missing.csv")
    _one_line_error(*_run(["curate", photos, "--model", MODEL, "--outlier-method", "nope", "--out", out]), "lof")
    _one_line_error(*_run(["curate", photos, "--model", MODEL, "--checks", "quality", "--exclude-types", "nope",
                           "--out", out, "--export-clean", tmp_path / "clean.csv"]), "--exclude-types nope")
    _one_line_error(*_run(["curate", tmp_path / "no_such_folder", "--model", MODEL, "--out", out]))
    assert not (tmp_path / "clean.csv").exists()


def test_cli_table_output(photos, tmp_path):
    rc, out, err = _run(["curate", photos, "--model", MODEL, "--checks", "quality,duplicates", "--out", tmp_path / "o",
                         "--export-clean", tmp_path / "clean.csv"])
    assert rc == 0, err
    assert "exact duplicates" in out and "near duplicates" in out
    assert "--exclude" in out and "excluded.csv" in out
    assert _read_csv(tmp_path / "o" / "label_issues.csv") == []  # the labels check did not run


# --------------------------------------------------------------------------- train --exclude
def test_train_exclude_leaves_items_out(photos, cli_run, tmp_path):
    excluded = Path(json.loads(cli_run["out"])["files"]["excluded"])
    n_ex = len(_read_csv(excluded))
    assert n_ex >= 5
    rc, out, err = _run(["train", photos, "--method", MODEL, "--exclude", excluded, "--out", tmp_path / "run", "--jobs", 1])
    assert rc == 0, err
    m = re.search(r"left out (\d+) items?; (\d+) remain", err)
    assert m, err
    total = len(load_dataset(photos))
    assert int(m.group(1)) == n_ex and int(m.group(2)) == total - n_ex
    split = json.loads((tmp_path / "run" / "split.json").read_text(encoding="utf-8"))
    used = {p for v in split["splits"].values() for p in v}
    assert len(used) == total - n_ex
    ex_rel = {Path(r["path"]).relative_to(photos).as_posix() for r in _read_csv(excluded)}
    assert not used & ex_rel
    cfg = (tmp_path / "run" / "config.yaml").read_text(encoding="utf-8")
    assert str(excluded) in cfg
