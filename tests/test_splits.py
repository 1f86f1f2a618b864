"""Seeded stratified splits, split.json round trips and ``imgclass train --split``."""

from __future__ import annotations

import json

import numpy as np
import pytest

from imgclass.cli import main
from imgclass.data import ImageDataset, load_dataset
from imgclass.errors import ConfigError, DataError


def _dataset(tmp_path, counts=(10, 20, 31), name="mem"):
    """An in-memory dataset (splitting never opens the files, so they need not exist)."""
    sources, targets = [], []
    for c, n in enumerate(counts):
        for i in range(n):
            sources.append(str(tmp_path / f"c{c}" / f"{i}.png"))
            targets.append(c)
    return ImageDataset(sources=sources, targets=np.asarray(targets, dtype=np.int64),
                        classes=[f"c{c}" for c in range(len(counts))], task="multiclass",
                        root=str(tmp_path), name=name)


def _as_lists(idx):
    return {k: np.asarray(v).tolist() for k, v in idx.items()}


def test_same_seed_same_split(tmp_path):
    ds = _dataset(tmp_path)
    a = ds.split_indices(val=0.25, seed=7)
    b = ds.split_indices(val=0.25, seed=7)
    assert _as_lists(a) == _as_lists(b)
    # also via the subset API
    ta, va = ds.split(val=0.25, seed=7)
    tb, vb = ds.split(val=0.25, seed=7)
    assert ta.sources == tb.sources and va.sources == vb.sources


def test_different_seed_different_split(tmp_path):
    ds = _dataset(tmp_path)
    a = ds.split_indices(val=0.25, seed=0)
    b = ds.split_indices(val=0.25, seed=1)
    assert a["val"].tolist() != b["val"].tolist()
    assert len(a["val"]) == len(b["val"])


@pytest.mark.parametrize("val, test", [(0.25, 0.0), (0.2, 0.1), (0.5, 0.0)])
def test_split_is_stratified_and_a_partition(tmp_path, val, test):
    counts = (10, 20, 31)
    ds = _dataset(tmp_path, counts)
    idx = ds.split_indices(val=val, test=test, seed=3)
    everything = np.concatenate(list(idx.values()))
    assert sorted(everything.tolist()) == list(range(len(ds)))   # disjoint and complete
    for part, frac in (("val", val), ("test", test)):
        if frac == 0:
            assert part not in idx
            continue
        per_class = np.bincount(ds.targets[idx[part]], minlength=len(counts))
        for c, n in enumerate(counts):
            assert abs(per_class[c] - n * frac) <= 1, (part, c, per_class[c], n * frac)


def test_single_image_class_stays_in_train(tmp_path):
    ds = _dataset(tmp_path, counts=(1, 12, 12))
    for seed in range(5):
        for val in (0.2, 0.5, 0.9):
            idx = ds.split_indices(val=val, seed=seed)
            assert 0 in idx["train"].tolist()
            assert 0 not in idx["val"].tolist()


def test_every_class_keeps_training_images(tmp_path):
    ds = _dataset(tmp_path, counts=(2, 3, 4))
    idx = ds.split_indices(val=0.6, test=0.3, seed=0)
    assert set(ds.targets[idx["train"]].tolist()) == {0, 1, 2}


@pytest.mark.parametrize("val, test", [(-0.1, 0.0), (1.0, 0.0), (0.6, 0.5)])
def test_bad_fractions(tmp_path, val, test):
    with pytest.raises(ConfigError):
        _dataset(tmp_path).split_indices(val=val, test=test)


def test_save_and_load_split_round_trip(tmp_path):
    ds = _dataset(tmp_path)
    idx = ds.split_indices(val=0.2, test=0.1, seed=11)
    path = tmp_path / "split.json"
    ds.save_split(path, idx, seed=11, val=0.2, test=0.1)
    doc = json.loads(path.read_text())
    assert doc["seed"] == 11
    assert doc["fingerprint"] == ds.fingerprint()
    assert doc["splits"]["val"][0].startswith("c")          # paths relative to the dataset root
    back = ds.load_split(path)
    assert _as_lists(back) == _as_lists(idx)
    # the same file maps onto the same items even when the dataset lists them in another order
    perm = np.random.default_rng(0).permutation(len(ds))
    shuffled = ImageDataset(sources=[ds.sources[i] for i in perm], targets=ds.targets[perm],
                            classes=ds.classes, task=ds.task, root=ds.root)
    back2 = shuffled.load_split(path)
    for k in idx:
        assert sorted(shuffled.sources[i] for i in back2[k]) == sorted(ds.sources[i] for i in idx[k])


def test_load_split_unknown_path(tmp_path):
    ds = _dataset(tmp_path)
    with pytest.raises(DataError, match="nope.json"):
        ds.load_split(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError):
        ds.load_split(bad)


def test_load_split_items_not_in_dataset(tmp_path):
    ds = _dataset(tmp_path)
    path = tmp_path / "split.json"
    ds.save_split(path, ds.split_indices(val=0.2, seed=0), seed=0, val=0.2, test=0.0)
    other = _dataset(tmp_path, counts=(3, 3, 3))   # a smaller dataset: most items are missing
    with pytest.raises(DataError, match="not in the dataset"):
        other.load_split(path)


def test_predefined_split_without_val_is_carved_from_train(tmp_path):
    ds = _dataset(tmp_path, counts=(10, 10))
    ds.splits = {"train": np.arange(0, 20, dtype=np.int64)[np.arange(20) % 5 != 0],
                 "test": np.arange(0, 20, 5, dtype=np.int64)}
    idx = ds.plan_split(val=0.25, seed=0)
    assert set(idx) == {"train", "val", "test"}
    assert idx["test"].tolist() == [0, 5, 10, 15]
    assert not set(idx["val"].tolist()) & set(idx["test"].tolist())
    assert len(idx["train"]) + len(idx["val"]) == 16


def test_cli_train_reuses_split_file(tmp_path, make_colour_dataset, capsys):
    data = make_colour_dataset(tmp_path / "colours", n_per_class=10, size=16)
    common = ["train", str(data), "--method", "pixels+logreg", "--val-split", "0.3", "--json"]
    assert main(common + ["--seed", "0", "--out", str(tmp_path / "run1")]) == 0
    assert main(common + ["--seed", "5", "--out", str(tmp_path / "run2"),
                          "--split", str(tmp_path / "run1" / "split.json")]) == 0
    assert main(common + ["--seed", "5", "--out", str(tmp_path / "run3")]) == 0
    capsys.readouterr()
    s1, s2, s3 = (json.loads((tmp_path / r / "split.json").read_text())
                  for r in ("run1", "run2", "run3"))
    assert s2["splits"] == s1["splits"]
    assert s2["fingerprint"] == s1["fingerprint"]
    # without --split, seed 5 gives another split: the equality above is not a coincidence
    assert s3["splits"]["val"] != s1["splits"]["val"]
    # and the reused split is really what run2 trained on (its config records the file)
    assert "run1" in (tmp_path / "run2" / "config.yaml").read_text()


def test_split_json_of_pre_split_folder_round_trips(tmp_path, make_colour_dataset):
    for split in ("train", "val"):
        make_colour_dataset(tmp_path / "pre" / split, n_per_class=3, size=8, seed=len(split))
    ds = load_dataset(tmp_path / "pre")
    idx = ds.plan_split()
    ds.save_split(tmp_path / "s.json", idx, seed=0, val=0.2, test=0.0)
    doc = json.loads((tmp_path / "s.json").read_text())
    assert all(p.startswith("train/") for p in doc["splits"]["train"])
    assert _as_lists(ds.load_split(tmp_path / "s.json")) == _as_lists(idx)
