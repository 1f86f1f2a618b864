"""Streaming training data (``training.streaming``): tar shards read in order through a shuffle buffer,
other sources decoded per batch in the engine's order; equal batches per DDP rank; bad images skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error, run_cli, write_colour_dataset

import imgclass
from imgclass.data import load_dataset
from imgclass.data.shards import pack_shards
from imgclass.training.shard_stream import ShardStream
from imgclass.training.streaming import StreamingImages
from imgclass.transforms import Preprocess


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """3 colours x 20 images of 16 px, no split recorded, in many small shards (~4 items each)."""
    base = tmp_path_factory.mktemp("stream")
    data = write_colour_dataset(base / "data", n_per_class=20, size=16, seed=4)
    pack_shards(load_dataset(data), base / "shards", "8KB", seed=0)
    return {"data": data, "shards": base / "shards", "ds": load_dataset(base / "shards")}


def _epoch(stream, epoch=0, bs=16, rank=0, world=1, order=None):
    got = [(idx.clone(), x.clone()) for idx, x in stream.batches(epoch, order, bs, rank, world)]
    return [i for i, _ in got], [x for _, x in got]


def test_shard_stream_covers_every_item_once_in_full_batches(shards):
    ds = shards["ds"]
    s = StreamingImages(ds.sources, Preprocess(size=16), workers=1, shuffle_buffer=8, seed=3)
    assert s.sequential and len(s) == 60
    idx, xs = _epoch(s)
    assert [len(i) for i in idx] == [16, 16, 16, 12]  # full batches, then what is left of the epoch
    assert sorted(torch.cat(idx).tolist()) == list(range(60))
    assert xs[0].dtype == torch.uint8 and xs[0].shape == (16, 3, 16, 16)
    # the decoded images are the items the indices name
    for k in (0, 7):
        i = int(idx[0][k])
        want = Preprocess(size=16).to_array(imgclass.data.load_image(ds.sources[i])).transpose(2, 0, 1)
        assert np.array_equal(xs[0][k].numpy(), want)
    again, _ = _epoch(s)
    assert all(torch.equal(a, b) for a, b in zip(idx, again))  # same seed and epoch: same order
    other, _ = _epoch(s, epoch=1)
    assert torch.cat(other).tolist() != torch.cat(idx).tolist()  # a new order each epoch
    assert s.steps(None, 16, 1) == 4


def test_ranks_get_the_same_number_of_equal_batches(shards):
    s = StreamingImages(shards["ds"].sources, Preprocess(size=16), workers=2, shuffle_buffer=4, seed=0)
    parts = [_epoch(s, bs=8, rank=r, world=2)[0] for r in range(2)]
    assert [len(b) for b in parts[0]] == [len(b) for b in parts[1]] == [8, 8, 8, 6]  # quota 60 // 2
    assert s.steps(None, 8, 2) == 4
    seen = [set(torch.cat(p).tolist()) for p in parts]
    assert len(seen[0] | seen[1]) >= 50  # the two parts cover (nearly) all items; whole shards per part


def test_select_keeps_only_the_given_items_with_their_targets(shards):
    ds = shards["ds"]
    pick = {(s.url, s.key): 1000 + i for i, s in enumerate(ds.sources) if i % 3 == 0}
    got = list(ShardStream(shards["shards"], select=pick, shuffle_shards=False))
    assert sorted(t for _, _, t in got) == sorted(pick.values())


def test_files_stream_in_the_engine_order(shards):
    ds = load_dataset(shards["data"])
    s = StreamingImages(ds.sources, Preprocess(size=16), workers=0)
    assert not s.sequential
    order = torch.randperm(60, generator=torch.Generator().manual_seed(0))
    idx, _ = _epoch(s, order=order, bs=25)
    assert torch.cat(idx).tolist() == order.tolist() and [len(i) for i in idx] == [25, 25, 10]


def test_unreadable_images_are_skipped_listed_and_the_quota_still_filled(tmp_path, make_bad_files):
    data = write_colour_dataset(tmp_path / "data", n_per_class=8, size=16, seed=5)
    make_bad_files(data / "red")
    pack_shards(load_dataset(data), tmp_path / "shards", "6KB", seed=0)
    ds = load_dataset(tmp_path / "shards")
    s = StreamingImages(ds.sources, Preprocess(size=16), workers=1, max_pixels=5000)
    idx, _ = _epoch(s, bs=8)
    assert sum(len(i) for i in idx) == len(ds) == 30  # 24 readable images fill a quota of 30
    bad = {os.path.basename(p) for p, _ in s.errors}
    assert bad == {"zero.png", "truncated.jpg", "truncated.png", "corrupt.jpg", "notes.png", "bomb.png"}
    assert not {int(i) for b in idx for i in b} & {ds.sources.index(p) for p, _ in s.errors}
    model = imgclass.train(ds, method="smallcnn", img_size=16, n_jobs=1, max_pixels=5000,
                           train_config={"epochs": 1, "batch_size": 8, "stream": "on", "workers": 1})
    skipped = dict(model.meta_["train_skipped"] + model.meta_["val_skipped"])
    assert {os.path.basename(p) for p in skipped} == bad


@pytest.mark.slow
def test_training_from_streamed_shards_learns_and_records_the_option(shards, tmp_path):
    kw = {"method": "smallcnn", "img_size": 16, "n_jobs": 1, "seed": 0}
    cfg = {"epochs": 6, "batch_size": 8, "lr": 5e-3, "augment": "light", "workers": 1}
    said: list[str] = []
    streamed = imgclass.train(str(shards["shards"]), out=tmp_path / "s", train_config={**cfg, "stream": "on"},
                              log=said.append, **kw)
    assert streamed.meta_["metrics"]["val"]["accuracy"] >= 0.9  # colours: easy when every image is seen
    assert any(m.startswith("streaming 48 training images (tar shards") for m in said)
    assert "stream: 'on'" in (tmp_path / "s" / "config.yaml").read_text()  # --resume streams again
    assert imgclass.training.TrainConfig(stream=True).stream == "on"  # YAML 1.1 reads on as true
    st = torch.load(str(tmp_path / "s" / "checkpoints" / "last.pt"), weights_only=True)
    assert st["scheduler"]["last_epoch"] == 6 * 6  # 48 / 8 steps per epoch
    said.clear()
    memory = imgclass.train(str(shards["shards"]), out=tmp_path / "m", train_config={**cfg, "stream": "off"},
                            log=said.append, **kw)
    assert memory.meta_["metrics"]["val"]["accuracy"] >= 0.9
    assert not any("streaming" in m for m in said)


def test_stream_options_are_one_line_errors(shards, tmp_path):
    assert_one_line_error(*run_cli(["train", str(shards["shards"]), "--method", "smallcnn", "--stream", "maybe",
                                    "--out", str(tmp_path / "a")]), "--stream 'maybe'")
    assert_one_line_error(*run_cli(["train", str(shards["shards"]), "--method", "smallcnn", "--img-size", "16",
                                    "--epochs", "1", "--stream", "on", "--balance", "sampler",
                                    "--out", str(tmp_path / "b")]), "--balance sampler", "--balance weights")


@pytest.mark.subprocess
@pytest.mark.slow
def test_ddp_two_processes_stream_shards(shards, tmp_path):
    env = {**os.environ, "IMGCLASS_JOBS": "1", "IMGCLASS_PROGRESS": "0", "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "imgclass", "train", str(shards["shards"]), "--method", "smallcnn",
                        "--img-size", "16", "--epochs", "2", "--batch-size", "16", "--stream", "on", "--nproc", "2",
                        "--out", str(tmp_path / "run"), "--json"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["metrics"]["accuracy"] >= 0.6
    st = torch.load(str(tmp_path / "run" / "checkpoints" / "last.pt"), weights_only=True)
    assert st["scheduler"]["last_epoch"] == 2 * 3  # each rank: 48 // 2 = 24 images in batches of 8
