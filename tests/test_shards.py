"""Tar shards: packing, lazy reading through index offsets, streaming, bad members, CLI."""

from __future__ import annotations

import json
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

import imgclass
from imgclass.data import load_dataset, load_image
from imgclass.data.shards import ShardMember, pack_shards, parse_size
from imgclass.errors import ConfigError, DataError
from imgclass.training.shard_stream import ShardStream
from imgclass.transforms import Preprocess


@pytest.fixture(scope="module")
def presplit(tmp_path_factory, make_colour_dataset):
    """A pre-split folder (train 3x10, val 3x4) and its shards (several per split: 6 KB each)."""
    base = tmp_path_factory.mktemp("shards")
    data = base / "colours"
    make_colour_dataset(data / "train", n_per_class=10, seed=1)
    make_colour_dataset(data / "val", n_per_class=4, seed=2)
    summary = pack_shards(load_dataset(data), base / "shards", "12KB", seed=0)
    return {"data": data, "shards": base / "shards", "summary": summary}


def test_parse_size():
    assert parse_size("256MB") == 256_000_000
    assert parse_size("1GB") == 10**9
    assert parse_size("500KB") == 500_000
    assert parse_size("64MiB") == 64 * 2**20
    assert parse_size(4096) == 4096
    for bad in ("lots", "12XB", "1KB"):  # 1KB: smaller than a few tar blocks
        with pytest.raises(ConfigError, match="--shard-size"):
            parse_size(bad)


def test_pack_writes_index_with_counts_and_offsets(presplit):
    root, s = presplit["shards"], presplit["summary"]
    index = json.loads((root / "index.json").read_text())
    assert index["format"] == "imgclass.shards/1"
    assert index["task"] == "multiclass" and index["classes"] == ["blue", "green", "red"]
    assert index["num_items"] == s["items"] == 42
    assert index["counts"] == {"blue": 14, "green": 14, "red": 14}
    assert index["splits"] == {"train": 30, "val": 12}
    assert s["shards"] == len(index["shards"]) > 2
    files = sorted(p.name for p in root.glob("shard-*.tar"))
    assert files == [e["file"] for e in index["shards"]] and files[0] == "shard-000000.tar"
    assert sum(e["count"] for e in index["shards"]) == 42
    data = presplit["data"]
    for e in index["shards"]:
        raw = (root / e["file"]).read_bytes()
        assert e["bytes"] == len(raw)
        with tarfile.open(root / e["file"]) as tar:
            assert len(tar.getnames()) == 3 * e["count"]  # .png, .json, .cls per item
        for it in e["items"]:
            off, size = it["members"]["png"]
            assert raw[off:off + size] == (data / it["path"]).read_bytes()  # untouched bytes, random access
            off, size = it["members"]["json"]
            assert json.loads(raw[off:off + size])["label"] == it["label"] == Path(it["path"]).parent.name
            assert it["split"] == Path(it["path"]).parts[0]
    with pytest.raises(DataError, match="--overwrite"):
        pack_shards(load_dataset(data), root)


def test_shards_load_like_the_folder(presplit):
    folder, shards = load_dataset(presplit["data"]), load_dataset(presplit["shards"])
    assert len(shards) == len(folder) == 42
    assert shards.classes == folder.classes and shards.task == folder.task
    assert np.array_equal(shards.targets, folder.targets)
    assert [shards.relpath(i) for i in range(42)] == [folder.relpath(i) for i in range(42)]
    assert {k: v.tolist() for k, v in shards.splits.items()} == {k: v.tolist() for k, v in folder.splits.items()}
    assert shards.fingerprint() == folder.fingerprint()
    src = shards.sources[3]
    assert isinstance(src, ShardMember) and src.endswith(folder.relpath(3))
    assert pickle.loads(pickle.dumps(src)).read_bytes() == Path(folder.sources[3]).read_bytes()
    assert np.array_equal(np.asarray(load_image(src)), np.asarray(load_image(folder.sources[3])))
    # subset / without / split.json work on the path-like strings
    sub = shards.subset([0, 5])
    assert [sub.relpath(i) for i in range(2)] == [folder.relpath(0), folder.relpath(5)]
    rest, removed = shards.without([folder.relpath(0)])
    assert removed == 1 and len(rest) == 41 and len(rest.splits["train"]) == 29
    # a glob and a single .tar read the matching shards through the same index
    some = load_dataset(str(presplit["shards"] / "shard-00000[01].tar"))
    one = load_dataset(presplit["shards"] / "shard-000000.tar")
    assert 0 < len(one) < len(some) < 42
    assert one.classes == folder.classes and set(one.sources) <= set(shards.sources)


def test_shards_without_index_are_scanned(presplit, tmp_path):
    import shutil

    for p in presplit["shards"].glob("shard-*.tar"):
        shutil.copy(p, tmp_path / p.name)
    ds = load_dataset(str(tmp_path / "shard-*.tar"))
    folder = load_dataset(presplit["data"])
    assert [ds.relpath(i) for i in range(len(ds))] == [folder.relpath(i) for i in range(len(folder))]
    assert np.array_equal(ds.targets, folder.targets) and ds.splits.keys() == folder.splits.keys()


def test_train_from_shards_equals_folder(presplit):
    kw = {"method": "pixels+logreg", "seed": 0, "n_jobs": 1}
    a = imgclass.train(str(presplit["data"]), **kw)
    b = imgclass.train(str(presplit["shards"]), **kw)
    val_a = load_dataset(presplit["data"]).split()[1]
    val_b = load_dataset(presplit["shards"]).split()[1]
    assert np.array_equal(a.predict_proba(val_a), b.predict_proba(val_b))
    assert a.meta_["data_fingerprint"] == b.meta_["data_fingerprint"]


def test_memory_url(colour_folder):
    ds = load_dataset(colour_folder)
    url = "memory://imgclass-test/colours-shards"
    s = pack_shards(ds, url, "8KB", val_split=0.25, seed=3)
    assert s["splits"] == {"train": 27, "val": 9} and s["shards"] > 1
    back = load_dataset(url)
    assert np.array_equal(back.targets, ds.targets) and back.root.startswith("memory://")
    assert np.array_equal(np.asarray(load_image(back.sources[7])), np.asarray(load_image(ds.sources[7])))
    assert len(load_dataset(url + "/shard-*.tar")) == 36
    keys = [k for k, _, _ in ShardStream(url, split="val")]
    assert len(keys) == 9


def test_stream_order_is_seeded_and_ranks_cover_disjoint_parts(presplit):
    def keys(**kw):
        return [k for k, _, _ in ShardStream(presplit["shards"], **kw)]

    every = keys(shuffle_shards=False)
    assert sorted(every) == sorted(f"{i:09d}" for i in range(42))
    a = ShardStream(presplit["shards"], shuffle_buffer=10, seed=5)
    first = [k for k, _, _ in a]
    assert first == [k for k, _, _ in a]  # same seed + epoch: same order
    a.set_epoch(1)
    second = [k for k, _, _ in a]
    assert second != first and sorted(second) == sorted(first)
    for split_by in ("shard", "item"):
        for world in (2, 3):
            parts = [keys(rank=r, world_size=world, seed=5, shuffle_buffer=4, split_by=split_by) for r in range(world)]
            assert sum(len(p) for p in parts) == 42 and set().union(*parts) == set(every)
            if split_by == "item":
                assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 1
    assert len(keys(split="val")) == 12
    key, x, y = next(iter(ShardStream(presplit["shards"], preprocess=Preprocess(size=16), split="train")))
    assert x.shape == (3, 16, 16) and x.dtype == np.uint8 and y in (0, 1, 2)
    with pytest.raises(ConfigError):
        ShardStream(presplit["shards"], rank=2, world_size=2)


def test_corrupt_member_is_skipped(tmp_path, make_colour_dataset, make_bad_files):
    data = make_colour_dataset(tmp_path / "data", n_per_class=8, seed=5)
    make_bad_files(data / "red")
    pack_shards(load_dataset(data), tmp_path / "shards", seed=0)
    ds = load_dataset(tmp_path / "shards")
    assert len(ds) == 30
    model = imgclass.train(ds, method="pixels+logreg", n_jobs=1, max_pixels=5000)
    skipped = dict(model.meta_["train_skipped"] + model.meta_.get("val_skipped", []))
    assert sorted(Path(p).name for p in skipped) == sorted(["zero.png", "truncated.jpg", "truncated.png",
                                                           "corrupt.jpg", "notes.png", "bomb.png"])
    assert "empty" in next(r for p, r in skipped.items() if p.endswith("red/zero.png"))
    stream = ShardStream(tmp_path / "shards", preprocess=Preprocess(size=16), max_pixels=5000)
    assert len(list(stream)) == 24 and len(stream.skipped) == 6
    from imgclass.data.check import check_dataset

    rep = check_dataset(ds, max_pixels=5000, n_jobs=1)
    assert len(rep["bad_files"]) == 6


def test_cli_pack_and_train(tmp_path, colour_folder):
    rc, out, err = run_cli(["data", "pack", colour_folder, "--out", tmp_path / "sh", "--shard-size", "500KB",
                            "--val-split", "0.25", "--json"])
    assert rc == 0, err
    s = json.loads(out)
    assert s["items"] == 36 and s["shards"] == 1 and s["splits"] == {"train": 27, "val": 9}
    rc, out, err = run_cli(["data", "pack", colour_folder, "--out", tmp_path / "sh", "--overwrite"])
    assert rc == 0 and out.startswith("packed 36 images (3 classes) into 1 shard"), out + err
    rc, out, err = run_cli(["train", tmp_path / "sh", "--method", "pixels+logreg", "--out", tmp_path / "run", "--json"])
    assert rc == 0, err
    assert json.loads(out)["metrics"]["accuracy"] >= 0.9
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert all(p.split("/")[0] in ("red", "green", "blue") for p in split["splits"]["val"])


@pytest.mark.parametrize("what", ["glob", "tar", "garbage", "dir"])
def test_bad_shard_path_is_one_line_exit_2(tmp_path, what):
    target = {"glob": tmp_path / "nowhere" / "shard-*.tar", "tar": tmp_path / "missing.tar",
              "garbage": tmp_path / "garbage.tar", "dir": "memory://imgclass-test/nothing-here"}[what]
    if what == "garbage":
        target.write_bytes(b"this is not a tar file" * 40)
    rc, out, err = run_cli(["train", target, "--method", "pixels+logreg", "--out", tmp_path / "run"])
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgclass: error: ") and str(target).split("/")[-1] in lines[0]


def test_multilabel_and_hierarchical_round_trip(tmp_path, make_colour_dataset):
    data = make_colour_dataset(tmp_path / "tree" / "warm", n_per_class=3, classes={"red": (200, 40, 40)})
    make_colour_dataset(tmp_path / "tree" / "cold", n_per_class=3, seed=1)
    tree = load_dataset(tmp_path / "tree")
    assert tree.task == "hierarchical"
    pack_shards(tree, tmp_path / "tree-shards", seed=1)
    back = load_dataset(tmp_path / "tree-shards")
    assert back.task == "hierarchical" and back.taxonomy == tree.taxonomy and np.array_equal(back.targets, tree.targets)
    rows = ["path,labels"] + [f"{p.relative_to(data.parent.parent)},{'a|b' if k % 2 else 'b'}"
                              for k, p in enumerate(sorted((tmp_path / "tree").rglob("*.png")))]
    (tmp_path / "tags.csv").write_text("\n".join(rows) + "\n")
    tags = load_dataset(tmp_path / "tags.csv")
    pack_shards(tags, tmp_path / "tag-shards", "8KB", seed=1)
    back = load_dataset(tmp_path / "tag-shards")
    assert back.task == "multilabel" and back.classes == ["a", "b"] and np.array_equal(back.targets, tags.targets)
    assert [back.relpath(i) for i in range(len(back))] == [tags.relpath(i) for i in range(len(tags))]
    y = [t for _, _, t in ShardStream(tmp_path / "tag-shards", shuffle_shards=False)]
    assert all(t.shape == (2,) and t[1] == 1 for t in y)
    with pytest.raises(DataError, match="another folder"):
        pack_shards(back, tmp_path / "tag-shards", overwrite=True)
