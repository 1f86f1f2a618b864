"""``imgclass explain``: heatmaps that point at what decides the class.

The localisation data: 32x32 grey-noise images whose class is decided only by the colour of an 8x8
square at a random position, so a model that has learnt the task must look at the square. One tiny
CNN and one classical pipeline are trained once per module and shared; every other model is built
untrained (ViT, hierarchical heads) or is a seconds-long ``pixels+logreg`` fit on 16 px two-tone images.
Torch runs on one thread here: on a busy two-core machine that is several times faster than two.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error as _assert_one_line_error
from conftest import quiet_env
from conftest import run_cli as _run
from PIL import Image

import imgclass
from imgclass.errors import ConfigError
from imgclass.evaluation.explain import Explanation, _cam_layer, _score_fn
from imgclass.models.deep import DeepClassifier
from imgclass.tasks.hierarchy import node_probabilities

SIZE, SQUARE = 32, 8
SQUARE_COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
RED, ORANGE, BLUE, GREEN = (210, 40, 40), (235, 150, 30), (40, 40, 210), (40, 190, 60)
SMALL = 16  # side of the two-tone images (multi-label, hierarchical)


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _square_image(rgb, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    """Grey noise with a coloured ``SQUARE`` at a random position; returns the image and the square's
    top-left ``(row, column)``."""
    a = np.clip(rng.normal(128.0, 30.0, (SIZE, SIZE, 3)), 0, 255)
    r, c = (int(v) for v in rng.integers(0, SIZE - SQUARE + 1, 2))
    a[r:r + SQUARE, c:c + SQUARE] = np.clip(np.asarray(rgb, float) + rng.normal(0.0, 10.0, (SQUARE, SQUARE, 3)), 0, 255)
    return a.astype(np.uint8), (r, c)


def _square_mask(box: tuple[int, int]) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[box[0]:box[0] + SQUARE, box[1]:box[1] + SQUARE] = True
    return mask


def _inside_outside(heat: np.ndarray, mask: np.ndarray) -> float:
    """Mean heat inside the mask over mean heat outside it (1.0 for a uniform map)."""
    return float(heat[mask].mean() / max(float(heat[~mask].mean()), 1e-9))


def _noisy(rgb, rng, size: int = SMALL, noise: float = 20.0) -> np.ndarray:
    base = np.asarray(rgb, dtype=np.float64)[None, None, :]
    return np.clip(base + rng.normal(0.0, noise, (size, size, 3)), 0, 255).astype(np.uint8)


def _two_tone(left, right, rng) -> np.ndarray:
    out = _noisy(left, rng)
    out[:, SMALL // 2:] = _noisy(right, rng)[:, SMALL // 2:]
    return out


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _left_right(heat: np.ndarray) -> tuple[float, float]:
    return float(heat[:, :SMALL // 2].mean()), float(heat[:, SMALL // 2:].mean())


# --------------------------------------------------------------------------- shared models
@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    """20 training images per colour on disk, 5 held-out test images per colour in memory (with their
    square), a ``smallcnn`` and a ``pixels+logreg`` bundle trained on them."""
    base = tmp_path_factory.mktemp("squares")
    rng = np.random.default_rng(0)
    for name, rgb in SQUARE_COLOURS.items():
        for i in range(20):
            _save(base / "train" / name / f"{name}_{i:02d}.png", _square_image(rgb, rng)[0])
    rng = np.random.default_rng(1)
    test = [(name, *_square_image(rgb, rng)) for name, rgb in SQUARE_COLOURS.items() for _ in range(5)]
    with quiet_env(base, IMGCLASS_ORT_THREADS="1"):
        cnn = imgclass.train(base / "train", method="smallcnn", img_size=SIZE, val_split=0.2, n_jobs=1, seed=0,
                             train_config={"epochs": 6, "batch_size": 16, "lr": 3e-3, "augment": "light"})
        pixels = imgclass.train(base / "train", method="pixels+logreg", out=base / "pixels", val_split=0.2,
                                n_jobs=1, seed=0)
    return {"base": base, "test": test, "cnn": cnn, "pixels": pixels, "bundle": base / "pixels" / "model"}


# =========================================================================== deep CNN localisation
@pytest.mark.slow
def test_cnn_integrated_gradients_and_gradcam_point_at_the_square(squares):
    model = squares["cnn"]
    assert model.history_[-1]["val_accuracy"] >= 0.9  # the premise: it has learnt the task
    right, ig_inside, cam_ratios = 0, 0, []
    for name, img, box in squares["test"]:
        mask = _square_mask(box)
        (ig,) = imgclass.explain(model, img, method="integrated-gradients")
        (cam,) = imgclass.explain(model, img, method="gradcam")
        for e in (ig, cam):
            assert isinstance(e, Explanation) and e.image.shape == (SIZE, SIZE, 3) and e.image.dtype == np.uint8
            assert e.heatmap.shape == (SIZE, SIZE) and np.isfinite(e.heatmap).all()
            assert e.heatmap.min() >= 0.0 and e.heatmap.max() == pytest.approx(1.0)
            assert e.target == ig.target and 0.0 <= e.probability <= 1.0
        assert (ig.method, cam.method) == ("integrated-gradients", "gradcam")
        right += ig.target == name
        ig_inside += bool(mask[ig.peak])
        cam_ratios.append(_inside_outside(cam.heatmap, mask))
    n = len(squares["test"])
    assert right >= 0.9 * n  # the default target is the prediction, which is right
    assert ig_inside >= 0.8 * n, ig_inside  # measured: every peak inside the square
    # Grad-CAM is a coarse 4x4 map upsampled, so only "clearly more heat on the square than elsewhere"
    # (measured ratios 1.6-5.1 across data seeds, median above 2.2; uniform is 1.0)
    assert min(cam_ratios) > 1.25 and float(np.median(cam_ratios)) > 2.0, np.round(cam_ratios, 2)


def test_explaining_another_class_gives_its_probability(squares):
    """An explicit target is explained even when it is not the prediction, with its own probability."""
    model = squares["cnn"]
    name, img, _ = squares["test"][0]
    others = [c for c in model.classes_ if c != name]
    exps = imgclass.explain(model, img, target=[name, *others], method="gradcam++")
    assert [e.target for e in exps] == [name, *others]
    probs = [e.probability for e in exps]
    assert sum(probs) == pytest.approx(1.0, abs=1e-5)  # softmax over the three classes
    assert probs[0] > max(probs[1:])


# =========================================================================== classical occlusion
def test_classical_occlusion_points_at_the_square(squares):
    model = squares["pixels"]
    for name, img, box in squares["test"][::4]:  # 4 images: occlusion runs the pipeline ~225 times each
        (e,) = imgclass.explain(model, img, method="occlusion")
        assert e.target == name and e.method == "occlusion" and e.heatmap.shape == (SIZE, SIZE)
        ratio = _inside_outside(e.heatmap, _square_mask(box))
        assert ratio > 3.0, ratio  # measured 10-58


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "integrated-gradients"])
def test_gradient_methods_on_a_classical_pipeline_say_use_occlusion(squares, method):
    img = squares["test"][0][1]
    with pytest.raises(ConfigError, match="occlusion") as info:
        imgclass.explain(squares["pixels"], img, method=method)
    assert method in str(info.value) and "classical" in str(info.value)


def test_unknown_method_is_a_config_error(squares):
    with pytest.raises(ConfigError, match="shap") as info:
        imgclass.explain(squares["cnn"], squares["test"][0][1], method="shap")
    assert "occlusion" in str(info.value) and "gradcam" in str(info.value)


# =========================================================================== ViT
def test_vit_gradcam_reshapes_patch_tokens_into_their_grid():
    """timm's tiny ``test_vit`` (160 px, 16 px patches: a 10x10 token grid plus a class token), untrained."""
    torch.manual_seed(0)
    model = DeepClassifier("test_vit", pretrained=None)
    model.build_network(2)
    model.classes_ = ["a", "b"]
    net = model.model_.eval()
    layer, reshape = _cam_layer(net, torch.zeros(1, 3, 160, 160))
    assert layer is net.blocks[-1].norm1
    tokens = torch.randn(2, 1 + 100, 7)
    grid = reshape(tokens)
    assert grid.shape == (2, 7, 10, 10)
    torch.testing.assert_close(grid[:, :, 3, 4], tokens[:, 1 + 3 * 10 + 4])  # row-major, class token dropped
    torch.testing.assert_close(grid[:, :, 0, 0], tokens[:, 1])

    img = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    heats = {}
    for method in ("gradcam", "gradcam++"):
        (e,) = imgclass.explain(model, img, method=method)
        assert e.image.shape == (160, 160, 3) and e.heatmap.shape == (160, 160)
        assert np.isfinite(e.heatmap).all() and e.heatmap.min() >= 0.0 and e.heatmap.max() == pytest.approx(1.0)
        assert e.heatmap.std() > 0.02  # not a constant map
        assert e.target in ("a", "b")
        heats[method] = e.heatmap
    assert not np.allclose(heats["gradcam"], heats["gradcam++"])


# =========================================================================== multi-label
@pytest.fixture(scope="module")
def multilabel(tmp_path_factory):
    """``pixels+logreg`` on single-colour (one label) and left/right two-tone (both labels) 16 px images."""
    base = tmp_path_factory.mktemp("explain-ml")
    colours = {"red": RED, "green": GREEN, "blue": BLUE}
    rng = np.random.default_rng(0)
    rows = ["path,labels"]
    for c, rgb in colours.items():
        for i in range(8):
            _save(base / "img" / f"{c}_{i}.png", _noisy(rgb, rng))
            rows.append(f"img/{c}_{i}.png,{c}")
    for a, b in [("red", "green"), ("red", "blue"), ("green", "blue")]:
        for i in range(8):
            left, right = (colours[a], colours[b]) if i % 2 else (colours[b], colours[a])
            _save(base / "img" / f"{a}_{b}_{i}.png", _two_tone(left, right, rng))
            rows.append(f"img/{a}_{b}_{i}.png,{a}|{b}")
    (base / "ml.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    with quiet_env(base, IMGCLASS_ORT_THREADS="1"):
        model = imgclass.train(base / "ml.csv", method="pixels+logreg", val_split=0.25, n_jobs=1, seed=0)
    assert model.task_ == "multilabel"
    return model


def test_multilabel_explains_each_label_where_it_is(multilabel, tmp_path):
    img = _two_tone(RED, BLUE, np.random.default_rng(5))  # red left, blue right
    pred = multilabel.predict([img])[0]
    assert {lab for lab, _ in pred.labels} == {"red", "blue"}  # the premise: both labels are predicted

    default = imgclass.explain(multilabel, img, method="occlusion")  # one per predicted label
    assert [e.target for e in default] == [lab for lab, _ in pred.labels]
    for e, (_, p) in zip(default, pred.labels):
        assert e.probability == pytest.approx(p)

    exps = imgclass.explain(multilabel, img, target=["red", "blue"], method="occlusion", out=tmp_path / "x.png")
    red, blue = exps
    assert (red.target, blue.target) == ("red", "blue")
    left, right = _left_right(red.heatmap)
    assert left > 3 * right, (left, right)
    left, right = _left_right(blue.heatmap)
    assert right > 3 * left, (left, right)
    assert np.abs(red.heatmap - blue.heatmap).mean() > 0.2

    assert not (tmp_path / "x.png").exists()
    for e in exps:
        path = tmp_path / f"x-{e.target}.png"
        assert e.path == str(path) and path.is_file()
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100 and im.size[1] > 100


# =========================================================================== hierarchical
@pytest.fixture(scope="module")
def hier(tmp_path_factory):
    """Flat-strategy ``pixels+logreg`` on warm/{red,orange} and cool/{blue,green} folders of 16 px images."""
    base = tmp_path_factory.mktemp("explain-hier")
    rng = np.random.default_rng(0)
    for cls, rgb in {"warm/red": RED, "warm/orange": ORANGE, "cool/blue": BLUE, "cool/green": GREEN}.items():
        for i in range(10):
            _save(base / "data" / cls / f"{cls.split('/')[1]}_{i}.png", _noisy(rgb, rng))
    with quiet_env(base, IMGCLASS_ORT_THREADS="1"):
        model = imgclass.train(base / "data", method="pixels+logreg", val_split=0.25, n_jobs=1, seed=0)
    assert model.task_ == "hierarchical"
    return model


def test_hierarchical_internal_nodes_are_explained(hier):
    img = _two_tone(RED, BLUE, np.random.default_rng(7))  # warm left, cool right
    warm, cool = imgclass.explain(hier, img, target=["warm", "cool"], method="occlusion")
    assert (warm.target, cool.target) == ("warm", "cool")
    P = hier.predict_proba([img])[0]
    idx = {c: i for i, c in enumerate(hier.classes_)}
    assert warm.probability == pytest.approx(P[idx["warm/red"]] + P[idx["warm/orange"]], abs=1e-9)
    assert cool.probability == pytest.approx(P[idx["cool/blue"]] + P[idx["cool/green"]], abs=1e-9)
    left, right = _left_right(warm.heatmap)
    assert left > 3 * right, (left, right)
    left, right = _left_right(cool.heatmap)
    assert right > 3 * left, (left, right)
    (default,) = imgclass.explain(hier, img, method="occlusion")  # the prediction: a leaf or a node
    pred = hier.predict([img])[0]
    assert default.target == pred.label and default.probability == pytest.approx(pred.probability)


def test_unknown_target_is_a_config_error_naming_it(hier, squares):
    img = _two_tone(RED, BLUE, np.random.default_rng(7))
    with pytest.raises(ConfigError, match="animal") as info:
        imgclass.explain(hier, img, target="animal", method="occlusion")
    assert "warm" in str(info.value)  # the choices include the taxonomy's nodes
    with pytest.raises(ConfigError, match="purple"):
        imgclass.explain(squares["cnn"], squares["test"][0][1], target=["red", "purple"], method="gradcam")


@pytest.mark.parametrize("strategy", ["flat", "local"])
def test_deep_hierarchical_score_is_the_node_log_probability(strategy):
    """What the gradient methods differentiate for a taxonomy node: log P(node) (flat and local heads),
    checked against the model's own probabilities; ``explain`` then reports that node's probability."""
    torch.manual_seed(0)
    model = DeepClassifier("smallcnn", pretrained=None, img_size=SMALL, engine="torch", train_config={"tta": False})
    model.classes_ = ["warm/red", "warm/orange", "cool/blue", "cool/green"]
    model.task_ = "hierarchical"
    model.taxonomy_ = {"warm": None, "cool": None, **{c: c.split("/")[0] for c in model.classes_}}
    model.hierarchy = strategy
    model.build_network(model.n_outputs)
    tree = model._tree()
    z = torch.randn(4, model.n_outputs) * 2
    node_p = node_probabilities(tree, model.proba_from_logits(z.numpy()))
    for node in ("warm", "cool") if strategy == "flat" else tree.nodes:
        got = _score_fn(model, node)(z).exp().numpy()
        np.testing.assert_allclose(got, node_p[:, tree.index[node]], rtol=1e-4, atol=1e-6)

    img = _two_tone(RED, BLUE, np.random.default_rng(7))
    (e,) = imgclass.explain(model, img, target="warm", method="integrated-gradients")
    assert e.target == "warm" and e.heatmap.shape == (SMALL, SMALL) and np.isfinite(e.heatmap).all()
    P = model.predict_proba([img])
    assert e.probability == pytest.approx(float(node_probabilities(tree, P)[0, tree.index["warm"]]), abs=1e-5)


# =========================================================================== CLI
def test_cli_explain_writes_png_and_json(squares, tmp_path):
    name, img, box = squares["test"][0]
    image = _save(tmp_path / "in.png", img)
    out = tmp_path / "heat.png"
    rc, stdout, err = _run(["explain", str(squares["bundle"]), str(image), "--method", "occlusion",
                            "--out", str(out), "--json"])
    assert rc == 0, err
    (doc,) = json.loads(stdout)
    assert doc["target"] == name and doc["method"] == "occlusion"
    assert 0.5 < doc["probability"] <= 1.0
    assert doc["path"] == str(out) and doc["source"] == str(image) and doc["size"] == [SIZE, SIZE]
    r, c = doc["peak"]
    assert box[0] - 2 <= r < box[0] + SQUARE + 2 and box[1] - 2 <= c < box[1] + SQUARE + 2  # on the square
    with Image.open(out) as im:
        assert im.format == "PNG"


def test_cli_explain_user_errors_exit_2_with_one_line(squares, tmp_path):
    bundle = str(squares["bundle"])
    image = str(_save(tmp_path / "in.png", squares["test"][0][1]))
    missing = str(tmp_path / "missing.png")
    _assert_one_line_error(*_run(["explain", bundle, missing, "--method", "occlusion"]), "missing.png")
    _assert_one_line_error(*_run(["explain", bundle, image, "--method", "occlusion", "--target", "purple",
                                  "--out", str(tmp_path / "o.png")]), "purple")
    _assert_one_line_error(*_run(["explain", bundle, image, "--out", str(tmp_path / "o.png")]), "occlusion")
    assert not (tmp_path / "o.png").exists()
