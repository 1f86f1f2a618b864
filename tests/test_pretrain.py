"""Self-supervised pretraining (``imgclass pretrain``): the three objectives, checkpoints and exact resume,
the run directory as a backbone name (linear probe, fine-tuning, caches kept apart), the batch
augmentations and losses, and the CLI's one-line errors. Tiny generated images and smallcnn at 16 px."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_colour_dataset
from safetensors.torch import load_file

import imgclass
from imgclass.cli import main
from imgclass.errors import ConfigError
from imgclass.features import make_extractor
from imgclass.features.backbones import backbone_config
from imgclass.learning.pretrain import pretrain
from imgclass.learning.selfsup import (
    ViewAugment,
    init_backbone,
    mine_neighbors,
    nt_xent,
    save_backbone,
    scan_loss,
)
from imgclass.models import parse_spec

FAST = {"epochs": 2, "batch_size": 12, "img_size": 16}


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: faster for these tiny tensors (and immune to a busy machine); restored after."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _weights(folder) -> dict:
    return load_file(str(Path(folder) / "backbone.safetensors"))


def _epochs(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]


class Killed(Exception):
    """Raised after epoch 1 by ``_run_killed_after_epoch_1``: the run stops like an interrupted process."""


def _run_killed_after_epoch_1(data, run, **opts) -> None:
    """Start ``pretrain(data, out=run, **opts)`` and stop it once epoch 1 is checkpointed and logged."""

    def kill_after_epoch_1(rec):
        if rec["epoch"] == 1:
            raise Killed

    with pytest.raises(Killed):
        pretrain(data, out=run, on_epoch=kill_after_epoch_1, **opts)


@pytest.fixture(scope="module")
def simclr(tmp_path_factory):
    """One 3-epoch SimCLR run (shared read-only); the folders have capitals to check that case is kept."""
    base = tmp_path_factory.mktemp("pretrain")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLASS_JOBS", "1")
        mp.setenv("IMGCLASS_PROGRESS", "0")
        torch.set_num_threads(1)
        data = write_colour_dataset(base / "Colours", n_per_class=8, size=20)
        res = pretrain(data, method="simclr", backbone="smallcnn", out=base / "SimCLR-Run", epochs=3, batch_size=24,
                       img_size=16)
        torch.set_num_threads(threads)
    return {"data": data, "run": base / "SimCLR-Run", "res": res}


# --------------------------------------------------------------------------- building blocks
def test_views_are_seeded_in_range_and_differ_per_image():
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    a = ViewAugment(torch.Generator().manual_seed(1), 12)(x)
    b = ViewAugment(torch.Generator().manual_seed(1), 12)(x)
    assert a.shape == (8, 3, 12, 12) and a.dtype == torch.float32 and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 255
    # one image repeated: every copy gets its own crop and colours
    same = ViewAugment(torch.Generator().manual_seed(2), 16)(x[:1].repeat(8, 1, 1, 1))
    assert all(not torch.allclose(same[0], same[i]) for i in range(1, 8))
    gray = ViewAugment(torch.Generator().manual_seed(3), 16, p_gray=1.0)(x)
    assert torch.allclose(gray[:, 0], gray[:, 1]) and torch.allclose(gray[:, 1], gray[:, 2])
    # no colour change and whole-image crops of a flat image leave it as it was
    flat = torch.full((4, 3, 16, 16), 90, dtype=torch.uint8)
    out = ViewAugment(torch.Generator().manual_seed(4), 16, crop_scale=1.0, p_jitter=0.0, p_gray=0.0)(flat)
    assert torch.allclose(out, flat.float(), atol=1e-3)
    # strong views: RandAugment after the crop, seeded, in range, and not the plain view
    opts = {"crop_scale": 1.0, "p_jitter": 0.0, "p_gray": 0.0, "hflip": False}
    plain = ViewAugment(torch.Generator().manual_seed(5), 16, **opts)(x)
    strong = ViewAugment(torch.Generator().manual_seed(5), 16, randaugment=3, **opts)(x)
    assert torch.equal(strong, ViewAugment(torch.Generator().manual_seed(5), 16, randaugment=3, **opts)(x))
    assert float(strong.min()) >= 0 and float(strong.max()) <= 255
    assert sum(not torch.allclose(strong[i], plain[i].round(), atol=1.0) for i in range(8)) >= 4


def test_nt_xent_matches_the_definition_and_rewards_matching_pairs():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    z = torch.nn.functional.normalize(torch.cat([z1, z2]), dim=1)
    losses = []
    for i in range(10):
        j = (i + 5) % 10
        logits = torch.tensor([float(z[i] @ z[k]) / 0.5 for k in range(10) if k != i])
        pos = [k for k in range(10) if k != i].index(j)
        losses.append(-(logits[pos] - torch.logsumexp(logits, 0)))
    assert float(nt_xent(z1, z2, 0.5)) == pytest.approx(float(torch.stack(losses).mean()), rel=1e-5)
    aligned = torch.eye(5, 8)
    assert float(nt_xent(aligned, aligned, 0.5)) < float(nt_xent(z1, z2, 0.5))


def test_scan_loss_rewards_confident_agreement_and_punishes_an_empty_cluster():
    g = torch.Generator().manual_seed(0)
    a, n = torch.randn(2, 6, 3, generator=g), torch.randn(2, 6, 3, generator=g)
    pa, pn = a.softmax(-1), n.softmax(-1)
    mean = pa.mean(1)
    expected = -torch.log((pa * pn).sum(-1)).mean(-1) + 2.0 * (mean * mean.log()).sum(-1)
    assert torch.allclose(scan_loss(a, n, 2.0), expected, atol=1e-6)  # one loss per head
    sure = torch.eye(3).repeat(2, 1)[None] * 20  # 6 images, confident, all 3 clusters used
    assert scan_loss(sure, sure)[0] < scan_loss(sure, sure.roll(1, dims=-1))[0]  # neighbour in the same cluster
    collapsed = torch.zeros(1, 6, 3)
    collapsed[..., 0] = 20  # everyone in cluster 0: agreeing, but the entropy term forbids it
    assert scan_loss(collapsed, collapsed)[0] > scan_loss(sure, sure)[0]


def test_mine_neighbors_matches_brute_force_cosine_and_never_picks_the_image_itself():
    from sklearn.neighbors import NearestNeighbors

    f = torch.randn(50, 8, generator=torch.Generator().manual_seed(1))
    nb = mine_neighbors(f, 4)
    ref = NearestNeighbors(n_neighbors=5, metric="cosine").fit(f.numpy()).kneighbors(f.numpy())[1][:, 1:]
    assert nb.shape == (50, 4) and (nb != torch.arange(50)[:, None]).all()
    assert np.array_equal(np.sort(nb.numpy(), 1), np.sort(ref, 1))


# --------------------------------------------------------------------------- runs
@pytest.mark.parametrize("hflip", [True, False])
def test_scan_mines_in_flip_averaged_features_like_cluster_unless_flips_are_off(simclr, hflip):
    """The features SCAN mines its neighbours in: the image and its mirror image averaged (as
    ``imgclass cluster`` embeds), or the image alone with --no-hflip."""
    from imgclass.learning.selfsup import PretrainConfig, SelfSupervisedTrainer
    from imgclass.learning.selfsup.heads import _ssl_net

    cfg = PretrainConfig.for_method("scan", backbone=str(simclr["run"]), clusters=3, hflip=hflip, **FAST)
    net, _, bcfg = init_backbone(cfg.backbone)
    x = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    trainer = SelfSupervisedTrainer(_ssl_net(net, cfg), x, cfg, bcfg.mean, bcfg.std)
    got = trainer.features(batch_size=2)
    net.eval()
    with torch.no_grad():
        xn = trainer._normalize(x.float())
        plain, mirrored = net(xn), net(xn.flip(-1))
    assert not torch.allclose(plain, mirrored, atol=1e-4)
    assert torch.allclose(got, (plain + mirrored) / 2 if hflip else plain, atol=1e-5)


def test_simclr_run_trains_and_writes_checkpoints_backbone_and_logs(simclr):
    run, res = simclr["run"], simclr["res"]
    assert res.epochs == 3 and len(res.losses) == 3 and all(np.isfinite(res.losses))
    assert res.losses[2] < res.losses[1] < res.losses[0]
    assert _epochs(run) == [1, 2, 3] and (run / "plots" / "training_curves.png").exists()
    st = torch.load(str(run / "checkpoints" / "last.pt"), map_location="cpu", weights_only=True)
    assert st["epoch"] == 3 and "optimizer" in st and "rng" in st
    info = json.loads((run / "backbone.json").read_text())
    assert (info["arch"], info["input_size"], info["method"], info["epochs"]) == ("smallcnn", 16, "simclr", 3)
    assert info["images"] == 24 and len(info["mean"]) == 3
    trained = _weights(run)
    start = init_backbone("smallcnn", seed=0)[0].state_dict()  # the weights the run started from
    assert set(trained) == set(start)
    changed = [k for k in start if start[k].is_floating_point() and not torch.allclose(start[k], trained[k])]
    assert len(changed) > len(start) // 2


@pytest.mark.parametrize("method", ["byol", "rotation"])
def test_byol_and_rotation_train_the_backbone(tmp_path, method):
    data = write_colour_dataset(tmp_path / "data", n_per_class=8, size=16)
    res = pretrain(data, method=method, out=tmp_path / "run", **FAST)
    assert len(res.losses) == 2 and all(np.isfinite(res.losses))
    start = init_backbone("smallcnn", seed=0)[0].state_dict()
    trained = _weights(tmp_path / "run")
    assert not torch.allclose(start["stem.0.weight"], trained["stem.0.weight"])
    st = torch.load(str(tmp_path / "run" / "checkpoints" / "last.pt"), weights_only=True)
    assert (st["ema"] is not None) == (method == "byol")  # BYOL's target network is checkpointed too


def test_resume_continues_after_the_last_finished_epoch_exactly(tmp_path):
    data = write_colour_dataset(tmp_path / "data", n_per_class=8, size=16, seed=5)
    opts = {**FAST, "epochs": 3}
    ref = pretrain(data, out=tmp_path / "ref", **opts)

    run = tmp_path / "run"
    _run_killed_after_epoch_1(data, run, **opts)
    assert torch.load(str(run / "checkpoints" / "last.pt"), weights_only=True)["epoch"] == 1
    assert not (run / "backbone.json").exists()
    with pytest.raises(ConfigError, match="has not finished.*--resume"):
        parse_spec(f"{run}+logreg")
    with pytest.raises(ConfigError, match="own options"):
        pretrain(resume=run, epochs=5)
    lines: list[str] = []
    res = pretrain(resume=run, log=lines.append)
    assert res.resumed_from == 1 and any("after epoch 1" in m for m in lines)
    assert [r["epoch"] for r in res.history] == [1, 2, 3] and _epochs(run) == [1, 2, 3]  # epoch 1 not redone
    assert res.losses == pytest.approx(ref.losses, rel=1e-4)
    a, b = _weights(run), _weights(tmp_path / "ref")
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-5) for k in a)
    # a finished run is not trained again
    again = pretrain(resume=run)
    assert again.resumed_from == 3 and again.epochs == 3 and _epochs(run) == [1, 2, 3]


def test_unfreeze_trains_only_the_last_blocks_on_a_bank_of_cached_views(simclr, tmp_path):
    """--unfreeze 1 continues a pretrained backbone: the trunk's weights stay exactly as they were, the last
    block and the head train on pairs of views cached once through the trunk, and the run is seeded."""
    start = _weights(simclr["run"])
    lines: list[str] = []
    opts = {"method": "simclr", "backbone": str(simclr["run"]), "unfreeze": 1, "view_bank": 3, **FAST}
    res = pretrain(simclr["data"], out=tmp_path / "run", log=lines.append, **opts)
    assert len(res.losses) == 2 and all(np.isfinite(res.losses))
    assert any(m.startswith("view bank: 3 views of 24 images") for m in lines)
    trained = _weights(tmp_path / "run")
    n_blocks = 1 + max(int(k.split(".")[1]) for k in start if k.startswith("blocks."))
    last = f"blocks.{n_blocks - 1}."
    frozen = [k for k in start if not k.startswith(last)]
    assert frozen and all(torch.equal(start[k], trained[k]) for k in frozen)  # stem and earlier blocks untouched
    assert any(not torch.allclose(start[k], trained[k]) for k in start if k.startswith(last) and k.endswith("weight"))
    again = pretrain(simclr["data"], out=tmp_path / "again", **opts)
    assert again.losses == pytest.approx(res.losses, rel=1e-5)
    # views at the full 16 px with crops down to 20 % of the area: frozen embeddings at FixRes's 22 -> 24 px
    info = json.loads((tmp_path / "run" / "backbone.json").read_text())
    assert (info["input_size"], info["test_size"]) == (16, 24)
    ex = make_extractor([str(tmp_path / "run")])
    assert ex.size == 24 and ex.preprocess_defaults()["size"] == 24


def test_view_bank_is_kept_and_reused_by_the_next_run_only_when_trunk_images_and_views_match(simclr, tmp_path,
                                                                                              monkeypatch):
    """The bank is kept in the run under a key; a run started from it with the same trunk, images and
    view options takes it (hard-linked, the trunk never runs), other view options or a damaged file
    make the trunk compute a new one."""
    import os

    from safetensors import safe_open

    import imgclass.training.frozen as frozen

    opts = {"method": "simclr", "unfreeze": 1, "view_bank": 3, **FAST}
    first = tmp_path / "first"
    pretrain(simclr["data"], backbone=str(simclr["run"]), out=first, **opts)
    kept = first / "checkpoints" / "view_bank.safetensors"
    with safe_open(str(kept), framework="pt") as f:
        assert f.get_tensor("bank").shape[:2] == (24, 3) and len(f.metadata()["key"]) == 64

    computed = frozen.ActivationCache.compute

    def trunk_must_not_run(*a, **k):
        raise AssertionError("the trunk ran although the bank could be reused")

    monkeypatch.setattr(frozen.ActivationCache, "compute", trunk_must_not_run)
    lines: list[str] = []
    res = pretrain(simclr["data"], backbone=str(first), out=tmp_path / "second", log=lines.append, **opts)
    assert any(m == f"view bank: 3 views of 24 images reused from {kept} (same frozen trunk, images and view "
               "options)" for m in lines)
    assert all(np.isfinite(res.losses)) and os.path.samefile(kept, tmp_path / "second/checkpoints/view_bank.safetensors")
    with pytest.raises(AssertionError, match="the trunk ran"):  # other views: another bank
        pretrain(simclr["data"], backbone=str(first), out=tmp_path / "third", **{**opts, "crop_scale": 0.5})
    with pytest.raises(AssertionError, match="the trunk ran"):  # strong views: another bank too
        pretrain(simclr["data"], backbone=str(first), out=tmp_path / "third-b", **{**opts, "randaugment": 2})

    monkeypatch.setattr(frozen.ActivationCache, "compute", computed)
    (first / "checkpoints" / "junk").write_bytes(b"not a safetensors file")
    os.replace(first / "checkpoints" / "junk", kept)  # a damaged bank: computed again, the second run's intact
    lines.clear()
    pretrain(simclr["data"], backbone=str(first), out=tmp_path / "fourth", log=lines.append, **opts)
    assert any(m.startswith("view bank: 3 views of 24 images through the frozen trunk") for m in lines)
    with safe_open(str(tmp_path / "second/checkpoints/view_bank.safetensors"), framework="pt") as f:
        assert f.get_tensor("bank").shape[:2] == (24, 3)


@pytest.mark.parametrize("case", ["random", "byol", "too_many", "bank"])
def test_unfreeze_refuses_what_it_cannot_do_with_one_line(simclr, tmp_path, case):
    run = str(simclr["run"])
    opts, expected = {
        "random": ({"backbone": "smallcnn", "unfreeze": 1}, "needs trained weights: use --backbone smallcnn@imagenet"),
        "byol": ({"method": "byol", "backbone": run, "unfreeze": 1}, "only simclr"),
        "too_many": ({"backbone": run, "unfreeze": 50}, "cannot train only the last 50 blocks"),
        "bank": ({"backbone": run, "unfreeze": 1, "view_bank": 1}, "--view-bank 1"),
    }[case]
    with pytest.raises(ConfigError, match=expected):
        pretrain(simclr["data"], out=tmp_path / "run", **{**FAST, **opts})


@pytest.mark.parametrize("unfreeze", [None, 1])
def test_scan_trains_cluster_heads_to_agree_with_mined_neighbours_and_resumes_with_them(simclr, tmp_path, monkeypatch,
                                                                                        unfreeze):
    """SCAN from the SimCLR run: neighbours mined once in its features (kept in the run, labels only
    reported), the backbone (or with --unfreeze its last block, on the view bank) and the cluster heads
    train, and a resumed run reuses the kept neighbours instead of mining them again with its new weights."""
    import imgclass.learning.pretrain as pt

    opts = {"method": "scan", "backbone": str(simclr["run"]), "clusters": 3, "neighbors": 4, **FAST, "epochs": 3,
            **({"unfreeze": 1, "view_bank": 3} if unfreeze else {})}
    ref = pretrain(simclr["data"], out=tmp_path / "ref", **opts)

    lines: list[str] = []
    run = tmp_path / "run"
    _run_killed_after_epoch_1(simclr["data"], run, log=lines.append, **opts)
    nb = np.load(run / "checkpoints" / "neighbors.npy")
    assert nb.shape == (24, 4) and (nb != np.arange(24)[:, None]).all()
    agreement = [m for m in lines if m.startswith("neighbours: 4 per image")]
    assert agreement and "share the image's label 1.000 of the time (labels not used)" in agreement[0]
    if unfreeze:  # the bank holds 3 augmented views + the images as they are + mirrored
        assert any(m.startswith("view bank: 5 views of 24 images") for m in lines)

    def no_mining(*a, **k):
        raise AssertionError("a resumed run mined its neighbours again")

    monkeypatch.setattr(pt, "mine_neighbors", no_mining)
    lines.clear()
    res = pretrain(resume=run, log=lines.append)
    if unfreeze:  # and the bank kept in the run, not the trunk again
        assert any(m.startswith(f"view bank: 5 views of 24 images reused from {run / 'checkpoints'}") for m in lines)
    assert res.resumed_from == 1 and res.losses == pytest.approx(ref.losses, rel=1e-4)
    assert all(np.isfinite(res.losses)) and res.losses[-1] < res.losses[0]
    start, trained = _weights(simclr["run"]), _weights(run)
    changed = [k for k in start if k.endswith("weight") and not torch.allclose(start[k], trained[k])]
    assert changed and (all(k.startswith("blocks.") for k in changed) if unfreeze else "stem.0.weight" in changed)
    st = torch.load(str(run / "checkpoints" / "last.pt"), weights_only=True)
    heads = [k for k in st["model"] if k.startswith("head.heads.")]
    assert len(heads) == 2 * 5 and st["model"]["head.heads.0.weight"].shape[0] == 3  # 5 heads x 3 clusters
    # the run clusters unlabelled images into its own number of clusters unless told otherwise
    from imgclass.learning.cluster import cluster

    photos = sorted(str(p) for p in Path(simclr["data"]).rglob("*") if p.is_file())
    res = cluster(photos, features=str(run), seed=0)
    assert res.k == 3 and any(n.startswith(f"k = 3: the --clusters of the pretrain run {run}") for n in res.notes)


@pytest.mark.parametrize("case", ["random", "no_k", "one_k"])
def test_scan_refuses_what_it_cannot_do_with_one_line(simclr, tmp_path, case):
    run = str(simclr["run"])
    opts, expected = {
        "random": ({"backbone": "smallcnn", "clusters": 3}, "needs trained weights: use --backbone smallcnn@imagenet"),
        "no_k": ({"backbone": run}, "--clusters None: --method scan needs the number of clusters"),
        "one_k": ({"backbone": run, "clusters": 1}, "--clusters 1"),
    }[case]
    with pytest.raises(ConfigError, match=expected):
        pretrain(simclr["data"], method="scan", out=tmp_path / "run", **{**FAST, **opts})
    assert not (tmp_path / "run").exists()


def test_selflabel_relabel_keeps_the_most_confident_share_of_each_cluster_and_balances_them(simclr):
    """relabel(): each image to its most probable cluster (centred cosine to the directions), the top
    ``confident`` share of each cluster by probability kept, the rest -1, clusters weighted by 1/count."""
    from imgclass.learning.selfsup import PretrainConfig, SelfSupervisedTrainer
    from imgclass.learning.selfsup.heads import _ssl_net

    cfg = PretrainConfig.for_method("selflabel", backbone=str(simclr["run"]), clusters=2, confident=0.5, **FAST)
    net, _, bcfg = init_backbone(cfg.backbone)
    trainer = SelfSupervisedTrainer(_ssl_net(net, cfg), torch.zeros((8, 3, 16, 16), dtype=torch.uint8), cfg,
                                    bcfg.mean, bcfg.std)
    # 6 images near direction A (the nearer the more confident), 2 near B; feature mean = the centre
    f = torch.tensor([[4.0, 0.1], [4.0, 0.5], [4.0, 1.0], [4.0, 1.5], [4.0, 2.0], [4.0, 2.5], [-4.0, 0.2], [-4.0, 1.0]])
    d = net.num_features
    feats = torch.zeros(8, d)
    feats[:, :2] = f
    trainer.features = lambda batch_size=256: feats + 10.0  # a common offset: removed by the centring
    with torch.no_grad():
        trainer.model.head.weight.zero_()
        trainer.model.head.weight[0, 0], trainer.model.head.weight[1, 0] = 1.0, -1.0
    trainer.truth = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    rec = trainer.relabel()
    assert trainer.targets.tolist() == [0, 0, 0, -1, -1, -1, 1, -1]  # top 3 of 6 and top 1 of 2
    assert torch.allclose(trainer.model.head.centre, feats.mean(0) + 10.0)
    assert torch.allclose(trainer.weights, torch.tensor([4 / (2 * 3), 4 / (2 * 1)]))  # inverse counts
    assert rec["confident"] == 0.5 and rec["clusters_used"] == 2 and rec["confident_accuracy"] == 1.0


@pytest.mark.parametrize("unfreeze", [None, 1])
def test_selflabel_starts_from_kmeans_trains_on_its_confident_clusters_and_resumes_exactly(simclr, tmp_path, unfreeze):
    """selflabel from the SimCLR run: k-means of its features sets the classifier (labels only reported),
    each epoch trains on the confident half of each cluster (recorded in metrics.jsonl), the backbone
    (or with --unfreeze its last block, on the bank, which also caches the plain images) changes, and a
    run killed after epoch 1 resumes to the same losses without k-means again."""
    import imgclass.learning.pretrain as pt

    opts = {"method": "selflabel", "backbone": str(simclr["run"]), "clusters": 3, **FAST, "epochs": 3,
            "batch_size": 6, **({"unfreeze": 1, "view_bank": 3} if unfreeze else {})}
    lines: list[str] = []
    ref = pretrain(simclr["data"], out=tmp_path / "ref", log=lines.append, **opts)
    assert any(m.startswith("self-labelling starts from k-means into 3 clusters of the starting features (ACC ")
               for m in lines)
    picks = [m for m in lines if m.startswith("self-labelling: 50% of the images in 3 clusters, ")]
    assert len(picks) == 3 and all("right under the best cluster-to-class matching (labels not used)" in m for m in picks)
    if unfreeze:  # 3 augmented views + the images as they are + mirrored
        assert any(m.startswith("view bank: 5 views of 24 images") for m in lines)
    recs = [json.loads(line) for line in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [r["confident"] for r in recs] == [0.5] * 3 and all(r["clusters_used"] == 3 for r in recs)
    assert all(np.isfinite(ref.losses)) and len(ref.losses) == 3

    run = tmp_path / "run"
    _run_killed_after_epoch_1(simclr["data"], run, **opts)

    def no_kmeans(*a, **k):
        raise AssertionError("a resumed run ran k-means again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pt.SelfSupervisedTrainer, "init_clusters", no_kmeans)
        res = pretrain(resume=run)
    assert res.resumed_from == 1 and res.losses == pytest.approx(ref.losses, rel=1e-4)
    start, trained = _weights(simclr["run"]), _weights(run)
    changed = [k for k in start if k.endswith("weight") and not torch.allclose(start[k], trained[k])]
    assert changed and (all(k.startswith("blocks.") for k in changed) if unfreeze else "stem.0.weight" in changed)
    st = torch.load(str(run / "checkpoints" / "last.pt"), weights_only=True)
    assert st["model"]["head.weight"].shape[0] == 3 and "head.centre" in st["model"]
    from imgclass.learning.cluster import cluster

    photos = sorted(str(p) for p in Path(simclr["data"]).rglob("*") if p.is_file())
    assert cluster(photos, features=str(run), seed=0).k == 3  # the run's --clusters


@pytest.mark.parametrize("case", ["random", "no_k", "share", "too_many"])
def test_selflabel_refuses_what_it_cannot_do_with_one_line(simclr, tmp_path, case):
    run = str(simclr["run"])
    opts, expected = {
        "random": ({"backbone": "smallcnn", "clusters": 3}, "takes its first clusters from k-means with the features "
                   "of smallcnn, which needs trained weights"),
        "no_k": ({"backbone": run}, "--clusters None: --method selflabel needs the number of clusters"),
        "share": ({"backbone": run, "clusters": 3, "confident": 0.0}, "--confident 0.0: give the share"),
        "too_many": ({"backbone": run, "clusters": 30}, "--clusters 30: Colours has only 24 readable images; "
                     "choose at most 24"),
    }[case]
    with pytest.raises(ConfigError, match=expected):
        pretrain(simclr["data"], method="selflabel", out=tmp_path / "run", **{**FAST, **opts})
    assert (tmp_path / "run").exists() == (case == "too_many")  # that one is known once the images are read


# --------------------------------------------------------------------------- the run directory as a backbone
def test_run_dir_is_a_backbone_for_a_linear_probe(simclr, tmp_path):
    run = simclr["run"]
    spec = parse_spec(f"{run}+logreg")
    assert spec.kind == "features" and spec.features == (str(run.resolve()),)  # capitals kept, absolute
    model = imgclass.train(simclr["data"], method=f"{run}+logreg", val_split=0.25)
    assert model.meta_["metrics"]["val"]["accuracy"] >= 0.9  # colours are easy
    imgs = sorted(str(p) for p in (simclr["data"] / "green").iterdir())[:3]
    assert [p.label for p in model.predict(imgs)] == ["green"] * 3
    model.save(tmp_path / "probe")
    loaded = imgclass.load_model(tmp_path / "probe")
    assert np.allclose(loaded.predict_proba(imgs), model.predict_proba(imgs), atol=1e-5)


def test_fixres_size_matches_whole_images_to_the_magnification_of_the_crops_trained_on():
    from imgclass.features.backbones import fixres_size, pretrain_test_size

    # mean of 1/sqrt(s) for s uniform in [c, 1] is 2 (1 - sqrt(c)) / (1 - c): 1.29 for c = 0.3
    assert fixres_size(128, 0.3) == 164 and fixres_size(128, 1.0) == 128 and fixres_size(24, 0.2) == 32
    assert fixres_size(12, 0.2) == 16  # 3/4-size views with the default crops give back the input size
    assert pretrain_test_size({"img_size": 128, "unfreeze": 2, "crop_scale": 0.3}, 128) == 164
    assert pretrain_test_size({"img_size": 32, "crop_scale": 0.2}, 32) == 32  # 24 px views
    assert pretrain_test_size({"img_size": 32, "view_size": 32, "crop_scale": 0.2}, 32) == 44
    assert pretrain_test_size({}, 32) is None  # not a pretrain config: the input size stays


def test_two_pretrained_folders_never_share_cached_features(simclr, tmp_path):
    from imgclass.features import extract_features
    from imgclass.transforms import Preprocess

    other = tmp_path / "other"
    net, arch, cfg = init_backbone("smallcnn", seed=1)
    save_backbone(other, net.eval(), arch, 16, cfg.mean, cfg.std, method="simclr")
    run = simclr["run"]
    assert backbone_config(str(run)).arch != backbone_config(str(other)).arch  # the ONNX/embedding cache key
    assert backbone_config(str(run)).input_size == 16
    imgs = sorted(str(p) for p in (simclr["data"] / "red").iterdir())[:4]
    feats = []
    for folder in (run, other):
        ex = make_extractor([str(folder)])
        feats.append(extract_features(ex, imgs, Preprocess.from_dict(ex.preprocess_defaults())).X)
    assert feats[0].shape == (4, 384) and not np.allclose(feats[0], feats[1])


def test_fine_tuning_from_the_run_dir_starts_from_its_weights_and_bundles_alone(simclr, tmp_path):
    run = simclr["run"]
    spec = parse_spec(str(run))
    assert (spec.kind, spec.backbone) == ("deep", "smallcnn") and spec.pretrained.endswith("backbone.safetensors")
    # one epoch = the head-only epoch of a pretrained backbone: the backbone must still be the pretrained one
    model = imgclass.train(simclr["data"], method=str(run), out=tmp_path / "ft", img_size=16, val_split=0.25,
                           train_config={"epochs": 1, "batch_size": 8})
    sd = model.model_.state_dict()
    pre = _weights(run)
    assert all(torch.allclose(sd[k].float(), pre[k].float()) for k in pre)
    meta = json.loads((tmp_path / "ft" / "model" / "model.json").read_text())
    assert meta["backbone"] == "smallcnn" and meta["method"] == str(run)
    # the bundle holds every weight: it loads and predicts with the pretraining folder gone
    img = str(sorted((simclr["data"] / "red").iterdir())[0])
    moved = run.with_name("moved-away")
    run.rename(moved)
    try:
        loaded = imgclass.load_model(tmp_path / "ft" / "model")
        assert np.allclose(loaded.predict_proba([img]), model.predict_proba([img]), atol=1e-5)
    finally:
        moved.rename(run)


# --------------------------------------------------------------------------- CLI
def test_cli_pretrains_resumes_a_finished_run_without_training_and_prints_json(tmp_path, capsys):
    data = write_colour_dataset(tmp_path / "data", n_per_class=6, size=16)
    run = tmp_path / "run"
    args = ["--epochs", "1", "--batch-size", "12", "--img-size", "16"]
    assert main(["pretrain", str(data), "--method", "rotation", *args, "--out", str(run), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["method"], out["arch"], out["epochs"], out["images"]) == ("rotation", "smallcnn", 1, 18)
    assert out["backbone"] == str(run) and (run / "backbone.safetensors").exists()
    assert main(["pretrain", "--resume", str(run), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["resumed_after"] == 1 and again["epochs"] == 1 and _epochs(run) == [1]
    assert main(["pretrain", "--resume", str(run)]) == 0
    assert f"backbone: {run} (smallcnn, 16 px)" in capsys.readouterr().out


@pytest.mark.parametrize("case", ["empty", "method", "resume", "spec", "backbone", "not_pretrain", "unfreeze",
                                  "view_bank", "randaugment", "scan", "selflabel"])
def test_cli_user_errors_are_one_line_with_exit_2(tmp_path, capsys, monkeypatch, case):
    monkeypatch.chdir(tmp_path)
    data = write_colour_dataset(tmp_path / "data", n_per_class=2, size=16)
    (tmp_path / "empty").mkdir()
    (tmp_path / "train_run").mkdir()
    (tmp_path / "train_run" / "config.yaml").write_text("method: smallcnn\n")
    argv, expected = {
        "empty": (["pretrain", str(tmp_path / "empty")], "no images found"),
        "method": (["pretrain", str(data), "--method", "moco"], "choose one of simclr, byol, rotation"),
        "resume": (["pretrain", "--resume", str(tmp_path / "missing")], "no such run directory"),
        "spec": (["train", str(data), "--method", f"{tmp_path / 'missing'}+logreg"], "no such folder"),
        "backbone": (["pretrain", str(data), "--backbone", str(tmp_path / "empty")], "not a pretrained backbone"),
        "not_pretrain": (["pretrain", "--resume", str(tmp_path / "train_run")], "not an 'imgclass pretrain' run"),
        "unfreeze": (["pretrain", str(data), "--unfreeze", "1"], "needs trained weights"),
        "view_bank": (["pretrain", str(data), "--unfreeze", "1", "--view-bank", "1"], "--view-bank 1: give at least 2"),
        "randaugment": (["pretrain", str(data), "--randaugment", "20"], "--randaugment 20: give a number of operations"),
        "scan": (["pretrain", str(data), "--method", "scan", "--clusters", "3"], "finds each image's neighbours"),
        "selflabel": (["pretrain", str(data), "--method", "selflabel", "--clusters", "3"],
                      "takes its first clusters from k-means"),
    }[case]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imgclass: error:") and expected in err and "\n" not in err
    assert not (tmp_path / "runs").exists()  # refused before any run directory is made
