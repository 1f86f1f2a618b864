"""Deep backbones: offline EfficientNet-Lite weights, frozen embeddings (ONNX Runtime), the embedding
cache, bundles with backbone weights, and ``imagenet:lite0``. Uses timm's 99k-parameter
``test_efficientnet`` at 32 px so everything stays fast; nothing is downloaded."""

from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest
import torch
from PIL import Image

import imgclass
from imgclass.errors import ConfigError, ModelFormatError
from imgclass.features import extract_features, make_extractor
from imgclass.features.backbones import (
    LITE,
    backbone_config,
    convert_lite_state_dict,
    create_backbone,
    imagenet_classes,
    lite_weights_file,
)
from imgclass.features.deep import DeepEmbedding, EmbeddingCache
from imgclass.transforms import Preprocess


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A saved state dict of timm's tiny test_efficientnet (seeded), as a local weights file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", num_classes=0)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def tiny(pretrained, **kw):
    return DeepEmbedding("test_efficientnet", pretrained=str(pretrained), size=32, **kw)


@pytest.mark.parametrize("name", ["lite0", "lite1", "lite2"])
def test_packaged_lite_weights_load_strictly_into_timm(name):
    sd = torch.load(str(lite_weights_file(name)), map_location="cpu", weights_only=True)
    converted = convert_lite_state_dict(sd, name)
    import timm

    model = timm.create_model(LITE[name][0], pretrained=False)
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert torch.equal(model.conv_stem.weight, sd["_conv_stem.weight"])
    last = sum(LITE[name][1]) - 1
    assert torch.equal(model.blocks[6][0].conv_pwl.weight, sd[f"_blocks.{last}._project_conv.weight"])


def test_lite_config_matches_the_port():
    cfg = backbone_config("lite1")
    assert cfg.arch == "tf_efficientnet_lite1" and cfg.input_size == 240
    assert cfg.mean == (0.5, 0.5, 0.5) and cfg.std == (0.5, 0.5, 0.5) and cfg.interpolation == "bicubic"


def test_unknown_backbone_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown backbone"):
        create_backbone("no_such_net_xyz", pretrained=None)
    with pytest.raises(ConfigError, match="unknown features"):
        make_extractor("no_such_net_xyz")


def test_local_weights_file_is_loaded(tiny_weights):
    from safetensors.torch import load_file

    model = create_backbone("test_efficientnet", pretrained=str(tiny_weights), num_classes=0)
    ref = load_file(str(tiny_weights))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ref.items())
    with pytest.raises(ConfigError, match="not found"):
        create_backbone("test_efficientnet", pretrained="/no/such/file.safetensors")


def test_imagenet_class_names():
    names = imagenet_classes()
    assert len(names) == 1000 and "tabby" in names[281]


def test_embeddings_match_torch_and_are_cached(tmp_path, tiny_weights, colour_folder):
    ex = tiny(tiny_weights, tta=False)
    pre = Preprocess(size=32)
    sources = imgclass.load_dataset(colour_folder).sources[:6]
    first = extract_features(ex, sources, pre)
    assert first.X.shape == (6, 256) and first.X.dtype == np.float32 and first.ok.all()
    # the ONNX Runtime result equals the torch model's
    model = create_backbone("test_efficientnet", pretrained=str(tiny_weights), num_classes=0).eval()
    arr = np.stack([np.asarray(Image.open(s).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
                    for s in sources]).astype(np.float32)
    mean = np.asarray(ex.config.mean, np.float32).reshape(1, 3, 1, 1) * 255
    std = np.asarray(ex.config.std, np.float32).reshape(1, 3, 1, 1) * 255
    with torch.no_grad():
        ref = model(torch.from_numpy((arr.transpose(0, 3, 1, 2) - mean) / std)).numpy()
    assert np.abs(ref - first.X).max() < 1e-4
    # flip TTA averages the embeddings of the image and its mirror
    with torch.no_grad():
        ref_flip = model(torch.from_numpy((arr[:, :, ::-1].copy().transpose(0, 3, 1, 2) - mean) / std)).numpy()
    tta = extract_features(tiny(tiny_weights, tta=True), sources, pre)
    assert np.abs((ref + ref_flip) / 2 - tta.X).max() < 1e-4
    # the second pass reads the cache: poison the stored rows and see them come back
    cache = EmbeddingCache(ex.namespace(pre.to_dict()))
    assert cache.path.exists()
    with sqlite3.connect(cache.path) as con:
        assert con.execute("SELECT COUNT(*) FROM emb").fetchone()[0] == 6
        con.execute("UPDATE emb SET vec = ?", (np.full(256, 7.0, np.float32).tobytes(),))
    again = extract_features(ex, sources, pre)
    assert np.all(again.X == 7.0)
    # other pre-processing → another namespace → computed afresh
    other = extract_features(ex, sources, Preprocess(size=32, grayscale=True))
    assert not np.all(other.X == 7.0)
    # cache off → computed afresh
    assert np.abs(extract_features(tiny(tiny_weights, cache=False, tta=False), sources, pre).X - first.X).max() < 1e-6


def test_bad_files_are_skipped_with_deep_features(tmp_path, tiny_weights, colour_folder):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    sources = imgclass.load_dataset(colour_folder).sources[:3] + [str(bad)]
    feats = extract_features(tiny(tiny_weights), sources, Preprocess(size=32))
    assert feats.ok.tolist() == [True, True, True, False]
    assert feats.X.shape[0] == 3 and feats.errors[0][0] == str(bad)


def test_parallel_workers_give_the_same_embeddings(tmp_path, tiny_weights, colour_folder):
    from imgclass.data.samples import write_digits  # noqa: F401  (import check only)

    ds = imgclass.load_dataset(colour_folder)
    sources = (ds.sources * 3)[:70]
    single = extract_features(tiny(tiny_weights, cache=False), sources, Preprocess(size=32), n_jobs=1)
    multi = extract_features(tiny(tiny_weights, cache=False), sources, Preprocess(size=32), n_jobs=2)
    assert np.abs(single.X - multi.X).max() < 1e-5


def test_frozen_embedding_pipeline_trains_and_round_trips(tmp_path, tiny_weights, colour_folder):
    ds = imgclass.load_dataset(colour_folder)
    train, val = ds.split(val=0.25, seed=0)
    from imgclass.models import FeaturePipeline

    model = FeaturePipeline(tiny(tiny_weights), "logreg", preprocess=Preprocess(size=32))
    model.fit(train)
    P = model.predict_proba(val)
    assert np.allclose(P.sum(axis=1), 1.0)
    model.save(tmp_path / "bundle")
    # the local weights travel inside the bundle, so deleting the original does not matter
    meta = json.loads((tmp_path / "bundle" / "model.json").read_text())
    assert meta["feature_params"]["test_efficientnet"]["pretrained"] == "bundle:backbone-test_efficientnet.safetensors"
    moved = tmp_path / "elsewhere.safetensors"
    tiny_weights.rename(moved)
    try:
        loaded = imgclass.load_model(tmp_path / "bundle")
        assert np.allclose(loaded.predict_proba(val), P, atol=1e-6)
    finally:
        moved.rename(tiny_weights)
    (tmp_path / "bundle" / "backbone-test_efficientnet.safetensors").unlink()
    with pytest.raises(ModelFormatError, match="missing"):
        imgclass.load_model(tmp_path / "bundle")


def test_method_spec_accepts_backbones():
    from imgclass.models import parse_spec

    assert parse_spec("lite0+logreg").features == ("lite0",)
    assert parse_spec("hog,lite0+svm").features == ("hog", "lite0")
    ex = make_extractor("lite0")
    assert isinstance(ex, DeepEmbedding) and ex.size == 224
    assert ex.preprocess_defaults()["mean"] == [0.5, 0.5, 0.5]


def test_imagenet_lite0_recognises_the_cat(tmp_path):
    import skimage.data

    path = tmp_path / "chelsea.png"
    Image.fromarray(skimage.data.chelsea()).save(path)
    model = imgclass.load_model("imagenet:lite0")
    (top,) = model.predict([str(path)], top_k=3)
    labels = [label for label, _ in top.top]
    assert any("cat" in lab for lab in labels), labels
    assert top.probability > 0.3


def test_cli_predict_imagenet(tmp_path, capsys):
    import skimage.data

    from imgclass.cli import main

    path = tmp_path / "coffee.png"
    Image.fromarray(skimage.data.coffee()).save(path)
    assert main(["predict", "imagenet:lite0", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["label"] == "espresso"
    assert main(["predict", "imagenet:", str(path)]) == 2
