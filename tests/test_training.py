"""The deep training engine: smallcnn end to end, deep bundles, checkpoints and exact resume after
SIGKILL, augmentation and options. Tiny generated images and a tiny network keep it fast."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_colour_dataset

import imgclass
from imgclass.errors import ConfigError
from imgclass.models import parse_spec
from imgclass.training.config import TrainConfig
from imgclass.transforms.augment import BatchAugment

FAST = {"epochs": 2, "batch_size": 16, "augment": "light", "lr": 3e-3}


def test_deep_specs_parse():
    s = parse_spec("resnet18@scratch")
    assert (s.kind, s.backbone, s.pretrained) == ("deep", "resnet18", None)
    assert parse_spec("lite0").pretrained == "imagenet"
    assert parse_spec("smallcnn").pretrained is None
    with pytest.raises(ConfigError, match="after '@'"):
        parse_spec("lite0@nowhere")


def test_train_config_is_validated():
    with pytest.raises(ConfigError, match="optimizer"):
        TrainConfig(optimizer="adam9")
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(schedule="zigzag")
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig(epochs=0)
    assert TrainConfig.from_dict(TrainConfig(epochs=3).to_dict()).epochs == 3


def test_batch_augment_keeps_shape_and_is_seeded():
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    for preset in ("none", "light", "standard", "strong"):
        a = BatchAugment(preset, torch.Generator().manual_seed(1))(x)
        b = BatchAugment(preset, torch.Generator().manual_seed(1))(x)
        assert a.shape == (8, 3, 16, 16) and a.dtype == torch.float32
        assert torch.equal(a, b)
        assert float(a.min()) >= 0 and float(a.max()) <= 255
    light = BatchAugment("light", torch.Generator().manual_seed(0))(x)
    flipped = [torch.equal(light[i], x[i].flip(2).float()) for i in range(8)]
    same = [torch.equal(light[i], x[i].float()) for i in range(8)]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped)
    with pytest.raises(ConfigError):
        BatchAugment("wild", torch.Generator())


def test_batch_augment_rotates_and_zooms_about_the_centre():
    x = torch.zeros(16, 3, 32, 32, dtype=torch.uint8)
    x[:, :, 15:17, 4:28] = 255  # a horizontal bar through the centre
    same = BatchAugment("light", torch.Generator().manual_seed(0), hflip=False)(x)
    assert torch.equal(same, x.float())  # no rotation or zoom asked: untouched
    rot = BatchAugment("light", torch.Generator().manual_seed(0), hflip=False, degrees=40)(x)
    again = BatchAugment("light", torch.Generator().manual_seed(0), hflip=False, degrees=40)(x)
    assert torch.equal(rot, again)
    assert (rot[:, :, 15:17, 15:17] > 200).all()  # the centre stays on the bar
    tilted = [(rot[i, 0, :, 6] > 100).nonzero().flatten() for i in range(16)]  # where the bar meets column 6
    assert sum(len(t) == 0 or not set(t.tolist()) <= {15, 16} for t in tilted) >= 12  # moved off its row
    zoom = BatchAugment("light", torch.Generator().manual_seed(0), hflip=False, scale=0.5)(x)
    lengths = (zoom[:, 0, 16, :] > 100).sum(dim=1)  # the bar's length along its own row
    assert (zoom[:, :, 15:17, 15:17] > 100).all() and len(set(lengths.tolist())) > 3
    assert lengths.min() < 24 < lengths.max()  # shrunk in some images, magnified in others
    with pytest.raises(ConfigError, match="degrees"):
        TrainConfig(degrees=-5)
    with pytest.raises(ConfigError, match="scale"):
        TrainConfig(scale=1.5)


@pytest.mark.slow
def test_smallcnn_trains_saves_and_reloads(tmp_path):
    data = write_colour_dataset(tmp_path / "data", n_per_class=16, size=32)
    model = imgclass.train(data, method="smallcnn", out=tmp_path / "run", val_split=0.25, train_config=FAST)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "best.pt").exists()
    assert (run / "model" / "weights.safetensors").exists() and (run / "plots" / "training_curves.png").exists()
    meta = json.loads((run / "model" / "model.json").read_text())
    assert meta["kind"] == "deep" and meta["backbone"] == "smallcnn" and len(meta["history"]) == 2
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if "epoch" in r] == [1, 2]
    assert model.meta_["metrics"]["val"]["accuracy"] >= 0.9  # colours are easy
    val = sorted(str(p) for p in (data / "red").iterdir())[:4]
    P = model.predict_proba(val)
    loaded = imgclass.load_model(run / "model")
    assert np.allclose(loaded.predict_proba(val), P, atol=1e-5)
    assert [r.label for r in loaded.predict(val)] == ["red"] * 4
    # torch and ONNX Runtime inference agree
    loaded.engine = "torch"
    assert np.allclose(loaded.predict_proba(val), P, atol=1e-4)


def test_checkpoints_are_weights_only_loadable(tmp_path):
    data = write_colour_dataset(tmp_path / "data", n_per_class=6, size=16)
    imgclass.train(data, method="smallcnn", out=tmp_path / "run", train_config={**FAST, "epochs": 1})
    st = torch.load(str(tmp_path / "run" / "checkpoints" / "last.pt"), weights_only=True)
    assert st["epoch"] == 1 and "optimizer" in st and "rng" in st


def _run_cli(args, env):
    return subprocess.Popen([sys.executable, "-c", "from imgclass.cli import main; main()", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
def test_sigkill_during_epoch_two_then_resume_matches_uninterrupted_run(tmp_path):
    data = write_colour_dataset(tmp_path / "data", n_per_class=60, size=32, seed=3)
    env = {**os.environ, "IMGCLASS_JOBS": "1", "IMGCLASS_PROGRESS": "0"}
    opts = ["--method", "smallcnn", "--epochs", "3", "--batch-size", "4", "--augment", "standard", "--seed", "1"]
    # the reference: uninterrupted
    ref = _run_cli(["train", str(data), *opts, "--out", str(tmp_path / "ref"), "--json"], env)
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    ref_acc = json.loads(out)["metrics"]["accuracy"]
    # the victim: killed with SIGKILL once epoch 1 is logged, i.e. inside epoch 2
    victim = _run_cli(["train", str(data), *opts, "--out", str(tmp_path / "run")], env)
    log = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if log.exists() and '"epoch": 1' in log.read_text():
            break
        time.sleep(0.02)
    time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    st = torch.load(str(tmp_path / "run" / "checkpoints" / "last.pt"), weights_only=True)
    assert st["epoch"] == 1, "the kill must land in epoch 2"
    assert not (tmp_path / "run" / "model").exists()
    resumed = _run_cli(["train", "--resume", str(tmp_path / "run"), "--json"], env)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    acc = json.loads(out)["metrics"]["accuracy"]
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert abs(acc - ref_acc) <= 0.05
    ref_meta = json.loads((tmp_path / "ref" / "model" / "model.json").read_text())
    assert meta["history"][-1]["train_loss"] == pytest.approx(ref_meta["history"][-1]["train_loss"], rel=0.05)


def test_a_loss_hook_replaces_the_step_loss_and_trains_the_weights(tmp_path):
    """``loss_fn(net, batch)`` is the loss of every step: called once per batch with the items' images and
    targets, and its gradient moves the weights through the engine's optimiser; checkpoints still written."""
    from imgclass.features.smallcnn import SmallCNN
    from imgclass.training.config import TrainData
    from imgclass.training.engine import Trainer

    torch.manual_seed(0)
    net = SmallCNN(num_classes=3, widths=(4, 8, 8, 8))
    x = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8)
    y = torch.arange(12) % 3
    calls = []

    def loss_fn(model, batch):
        calls.append((len(batch), tuple(batch.x.shape[1:]), batch.y.tolist()))
        assert batch.x.dtype == torch.uint8 and torch.equal(batch.x, x[batch.idx])
        return model(batch.x.float() / 255).pow(2).mean()  # a label-free objective: shrink the outputs

    before = {k: v.clone() for k, v in net.state_dict().items()}
    cfg = TrainConfig(epochs=1, batch_size=4, augment="none", ema=0.0, seed=0)
    trainer = Trainer(net, TrainData(x, y, []), None, cfg, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25),
                      ckpt_dir=tmp_path, loss_fn=loss_fn)
    history = trainer.fit()
    assert len(calls) == 3 and all(n == 4 and shape == (3, 16, 16) for n, shape, _ in calls)
    assert sorted(lab for _, _, labs in calls for lab in labs) == sorted(y.tolist())
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before if before[k].dtype.is_floating_point)
    assert len(history) == 1 and history[0]["train_loss"] > 0 and (tmp_path / "last.pt").exists()

    class Shrink(Trainer):  # the same hook as a subclass
        def compute_loss(self, batch):
            calls.append("subclass")
            return self.net(batch.x.float() / 255).pow(2).mean()

    Shrink(SmallCNN(num_classes=3, widths=(4, 8, 8, 8)), TrainData(x, y, []), None, cfg,
           (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).fit()
    assert calls.count("subclass") == 3


def test_resume_of_a_classical_run_is_refused(tmp_path, capsys):
    from imgclass.cli import main

    data = write_colour_dataset(tmp_path / "data", n_per_class=6, size=16)
    assert main(["train", str(data), "--method", "pixels+logreg", "--out", str(tmp_path / "run")]) == 0
    assert main(["train", "--resume", str(tmp_path / "run")]) == 2
    assert "only deep runs" in capsys.readouterr().err
    assert main(["train", "--resume", str(tmp_path / "nowhere")]) == 2


def test_unfreeze_trains_only_the_last_blocks():
    from imgclass.features.backbones import create_backbone
    from imgclass.training.optim import _blocks, set_trainable

    net = create_backbone("test_efficientnet", pretrained=None, num_classes=3)
    set_trainable(net, "head", None)
    assert all(p.requires_grad for p in net.get_classifier().parameters())
    assert not any(p.requires_grad for p in net.conv_stem.parameters())
    set_trainable(net, "all", 1)
    blocks = _blocks(net)
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert not any(p.requires_grad for p in blocks[0].parameters())
    set_trainable(net, "all", None)
    assert all(p.requires_grad for p in net.parameters())


def _local_weights(tmp_path):
    """A seeded timm test EfficientNet and its weights saved as a local ``.safetensors`` file."""
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet", num_classes=0)
    wfile = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(wfile))
    return net, wfile


def test_fine_tune_from_local_weights_head_first(tmp_path):
    """A pretrained (local file) backbone: epoch 1 trains the head only, then everything."""
    net, wfile = _local_weights(tmp_path)
    data = write_colour_dataset(tmp_path / "data", n_per_class=8, size=32)
    model = imgclass.train(data, method="test_efficientnet", pretrained=str(wfile), img_size=32,
                           out=tmp_path / "run", train_config={**FAST, "head_epochs": 1})
    assert [h["phase"] for h in model.history_] == ["head", "all"]
    assert Path(tmp_path / "run" / "model" / "weights.safetensors").exists()


@pytest.mark.slow
def test_lr_find_suggests_a_learning_rate_and_plots(tmp_path, capsys):
    from imgclass.cli import main
    from imgclass.training.lr_find import suggest

    data = write_colour_dataset(tmp_path / "data", n_per_class=8, size=16)
    assert main(["lr-find", str(data), "--method", "smallcnn", "--steps", "30", "--out", str(tmp_path / "lr.png"),
                 "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert (tmp_path / "lr.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert 1e-6 <= res["suggestion"] <= 1.0 and res["lrs"] == sorted(res["lrs"])
    # the suggestion is where the loss falls fastest
    lrs = list(np.logspace(-5, 0, 50))
    losses = [2.0 if lr < 1e-3 else (1.0 if lr > 1e-2 else 2.0 - (np.log10(lr) + 3)) for lr in lrs]
    assert 1e-3 <= suggest(lrs, losses) <= 1e-2
    assert main(["lr-find", str(data), "--method", "pixels+logreg"]) == 2


@pytest.mark.parametrize("arch,unfreeze", [("test_efficientnet", 2), ("resnet18", 1), ("smallcnn", 1),
                                           ("convnext_atto", 1), ("mobilenetv3_small_050", 2)])
def test_split_network_reproduces_the_full_forward(arch, unfreeze):
    from imgclass.features.backbones import create_backbone
    from imgclass.training.frozen import split_network

    torch.manual_seed(0)
    net = create_backbone(arch, pretrained=None, num_classes=4).eval()
    trunk, tail = split_network(net, unfreeze)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(tail(trunk(x)), net(x), atol=1e-4, rtol=1e-3)
    assert split_network(net, 0) is None and split_network(net, 99) is None


def test_activation_cache_matches_the_trunk_and_mirrors_exactly():
    from imgclass.features.backbones import create_backbone
    from imgclass.training.frozen import ActivationCache, split_network

    torch.manual_seed(0)
    net = create_backbone("test_efficientnet", pretrained=None, num_classes=3).eval()
    trunk, _ = split_network(net, 2)
    x = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    cache = ActivationCache.compute(trunk, x, (0.5,) * 3, (0.5,) * 3)
    with torch.no_grad():
        ref = trunk((x.float() / 255 - 0.5) / 0.5)
        ref_m = trunk((x.flip(3).float() / 255 - 0.5) / 0.5)
    idx = torch.arange(5)
    torch.testing.assert_close(cache.batch(idx), ref, atol=2e-2, rtol=1e-2)  # float16 storage
    torch.testing.assert_close(cache.batch(idx, torch.ones(5, dtype=torch.bool)), ref_m, atol=2e-2, rtol=1e-2)
    shifted = cache.batch(idx, None, shift=1, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == ref.shape and not torch.equal(shifted, cache.batch(idx))


def test_partial_fine_tune_trains_the_tail_on_cached_activations(tmp_path):
    """--unfreeze with a pretrained backbone: the trunk runs once (cached), frozen weights stay
    untouched, the tail learns, and the saved bundle predicts like the trained network."""
    net, wfile = _local_weights(tmp_path)
    data = write_colour_dataset(tmp_path / "data", n_per_class=10, size=32)
    logs = []
    model = imgclass.train(data, method="test_efficientnet", pretrained=str(wfile), img_size=32,
                           out=tmp_path / "run", log=logs.append,
                           train_config={**FAST, "epochs": 4, "head_epochs": 1, "unfreeze": 1, "lr": 1e-2})
    assert sum("cached frozen-block activations" in m for m in logs) == 2  # train and val, once each
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    torch.testing.assert_close(trained["conv_stem.weight"], net.state_dict()["conv_stem.weight"])
    torch.testing.assert_close(trained["blocks.3.0.conv_pw.weight"], net.state_dict()["blocks.3.0.conv_pw.weight"])
    assert not torch.equal(trained["blocks.4.0.conv_pw.weight"], net.state_dict()["blocks.4.0.conv_pw.weight"])
    # scoring on cached activations during training agrees with the finished network on the images
    val = imgclass.load_dataset(data).subset(imgclass.load_dataset(data).load_split(tmp_path / "run" / "split.json")["val"])
    acc = float((np.nanargmax(model.predict_proba(val), axis=1) == val.targets).mean())
    best = max(h["val_accuracy"] for h in model.history_)
    assert acc == pytest.approx(best, abs=1e-6)
    again = imgclass.load_model(tmp_path / "run" / "model")
    files = sorted(str(p) for p in (tmp_path / "data").rglob("*.png"))[:6]
    np.testing.assert_allclose(again.predict_proba(files), model.predict_proba(files), atol=1e-5)


def test_rotation_or_zoom_turns_the_activation_cache_off(tmp_path):
    """Cached activations are fixed views; --degrees/--scale need the images, so the trunk runs each step."""
    net, wfile = _local_weights(tmp_path)
    data = write_colour_dataset(tmp_path / "data", n_per_class=6, size=32)
    logs = []
    model = imgclass.train(data, method="test_efficientnet", pretrained=str(wfile), img_size=32,
                           out=tmp_path / "run", log=logs.append,
                           train_config={**FAST, "epochs": 2, "unfreeze": 1, "degrees": 15, "scale": 0.1})
    assert not any("cached frozen-block activations" in m for m in logs)
    assert len(model.history_) == 2
    cfg = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    assert "degrees" in json.dumps(cfg)  # the augmentation is recorded with the run


def test_no_hflip_turns_off_flip_augmentation_cached_mirrors_and_flip_tta(tmp_path):
    """--no-hflip (handwriting, text): batches are never mirrored, the activation cache holds no
    mirror images, the bundle predicts without flip TTA and refuses --tta flip."""
    from imgclass.errors import ConfigError
    from imgclass.models.tta import predict_proba_tta
    from imgclass.training.frozen import ActivationCache
    from imgclass.transforms.augment import BatchAugment

    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    aug = BatchAugment("light", torch.Generator().manual_seed(0), hflip=False)
    for _ in range(5):
        torch.testing.assert_close(aug(x), x.float())
    flips = BatchAugment("light", torch.Generator().manual_seed(0))
    assert any(not torch.equal(flips(x), x.float()) for _ in range(10))

    trunk = torch.nn.Conv2d(3, 2, 1)
    img = torch.randint(0, 255, (3, 3, 8, 8), dtype=torch.uint8)
    one = ActivationCache.compute(trunk, img, (0.5,) * 3, (0.25,) * 3, mirrored=False)
    two = ActivationCache.compute(trunk, img, (0.5,) * 3, (0.25,) * 3)
    assert one.mirrored is None and two.nbytes == 2 * one.nbytes
    torch.testing.assert_close(one.batch(torch.arange(3)), two.batch(torch.arange(3)))
    with pytest.raises(ValueError):
        one.batch(torch.arange(3), torch.ones(3, dtype=torch.bool))

    data = write_colour_dataset(tmp_path / "data", n_per_class=6, size=16)
    model = imgclass.train(data, method="smallcnn", img_size=16, out=tmp_path / "run",
                           train_config={**FAST, "epochs": 1, "hflip": False})
    again = imgclass.load_model(tmp_path / "run" / "model")
    assert again.tta is False and again.train_config["hflip"] is False
    files = sorted(str(p) for p in (tmp_path / "data").rglob("*.png"))[:2]
    with pytest.raises(ConfigError, match="--no-hflip"):
        predict_proba_tta(again, files, "flip")
    assert model.tta is False


def test_corruption_augmentation_caches_one_corrupted_copy_per_image(tmp_path):
    """--augment corruptions keeps the activation cache: each training image also gets one corrupted
    copy through the frozen trunk, and batches draw it for about half of the rows."""
    from imgclass.training.frozen import ActivationCache
    from imgclass.transforms import RandomCorruption

    trunk = torch.nn.Conv2d(3, 2, 1)
    img = torch.randint(0, 255, (4, 3, 16, 16), dtype=torch.uint8)
    cache = ActivationCache.compute(trunk, img, (0.5,) * 3, (0.25,) * 3,
                                    corrupt=RandomCorruption(p=1.0, seed=0).apply_array)
    assert cache.corrupted.shape == cache.plain.shape and cache.nbytes == 3 * cache.plain.numel() * 2
    assert not torch.equal(cache.corrupted, cache.plain)
    idx = torch.arange(4)
    torch.testing.assert_close(cache.batch(idx, corrupt=torch.ones(4, dtype=torch.bool)), cache.corrupted.float())
    torch.testing.assert_close(cache.batch(idx, corrupt=torch.zeros(4, dtype=torch.bool)), cache.plain.float())

    import timm
    from safetensors.torch import save_file

    net = timm.create_model("test_efficientnet", num_classes=0)
    wfile = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(wfile))
    data = write_colour_dataset(tmp_path / "data", n_per_class=6, size=32)
    logs = []
    imgclass.train(data, method="test_efficientnet", pretrained=str(wfile), img_size=32, out=tmp_path / "run",
                   log=logs.append, train_config={**FAST, "epochs": 2, "unfreeze": 1, "augment": "corruptions"})
    cached = [m for m in logs if "cached frozen-block activations" in m]
    assert len(cached) == 2, logs
