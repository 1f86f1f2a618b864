"""Readers: folders, pre-split folders, CSV, JSONL, taxonomies, task inference and overrides."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgclass.data import load_dataset
from imgclass.errors import ConfigError, DataError


def _img(path: Path, rgb=(120, 60, 30), size=(8, 8), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, rgb).save(path, format=fmt)
    return path


def _names(ds):
    return sorted(Path(s).name for s in ds.sources)


# --------------------------------------------------------------------------- folders
def test_folder_per_class(colour_folder):
    ds = load_dataset(colour_folder)
    assert len(ds) == 36
    assert ds.classes == ["blue", "green", "red"]
    assert ds.task == "multiclass"
    assert ds.targets.shape == (36,)
    assert ds.class_counts() == {"blue": 12, "green": 12, "red": 12}
    # every item's label is the folder it lives in
    for src, label in zip(ds.sources, ds.labels()):
        assert Path(src).parent.name == label
        assert os.path.isabs(src)
    assert ds.splits is None


def test_pre_split_folders(tmp_path):
    root = tmp_path / "pre"
    counts = {"train": 4, "val": 2, "test": 3}
    for split, n in counts.items():
        for cls in ("cat", "dog"):
            for i in range(n):
                _img(root / split / cls / f"{i}.png")
    ds = load_dataset(root)
    assert ds.classes == ["cat", "dog"]
    assert ds.task == "binary"
    assert set(ds.splits) == {"train", "val", "test"}
    for split, n in counts.items():
        idx = ds.splits[split]
        assert len(idx) == 2 * n
        assert all(Path(ds.sources[i]).parts[-3] == split for i in idx)
    parts = ds.split(val=0.5, seed=3)
    assert len(parts) == 3
    train, val, test = parts
    assert (len(train), len(val), len(test)) == (8, 4, 6)
    assert all("/train/" in s for s in train.sources)
    assert all("/val/" in s for s in val.sources)
    assert all("/test/" in s for s in test.sources)
    assert ds.relpath(int(ds.splits["val"][0])).startswith("val/")


def test_hidden_and_junk_files_ignored(tmp_path):
    root = tmp_path / "ds"
    for cls in ("cat", "dog"):
        for i in range(2):
            _img(root / cls / f"{i}.png")
    _img(root / "cat" / ".ipynb_checkpoints" / "x.png")
    _img(root / ".ipynb_checkpoints" / "y.png")
    _img(root / "__MACOSX" / "cat" / "._0.png")
    _img(root / "cat" / ".hidden.png")
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "cat" / "Thumbs.db").write_bytes(b"junk")
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "dog" / "labels.csv").write_text("a,b\n")
    (root / "dog" / "vector.svg").write_text("<svg/>")
    ds = load_dataset(root)
    assert len(ds) == 4
    assert ds.classes == ["cat", "dog"]
    assert ds.task == "binary"   # .ipynb_checkpoints did not make it hierarchical
    assert _names(ds) == ["0.png", "0.png", "1.png", "1.png"]


def test_extensions_case_insensitive(tmp_path):
    root = tmp_path / "ds"
    _img(root / "a" / "A.JPG", fmt="JPEG")
    _img(root / "a" / "b.PnG", fmt="PNG")
    _img(root / "b" / "c.Jpeg", fmt="JPEG")
    _img(root / "b" / "d.TIF", fmt="TIFF")
    (root / "b" / "e.PNGX").write_bytes(b"x")
    ds = load_dataset(root)
    assert _names(ds) == ["A.JPG", "b.PnG", "c.Jpeg", "d.TIF"]


def test_flat_folder_is_unlabelled(tmp_path):
    for i in range(3):
        _img(tmp_path / "flat" / f"{i}.png")
    ds = load_dataset(tmp_path / "flat")
    assert ds.task is None
    assert ds.targets is None
    assert ds.classes == []
    assert len(ds) == 3
    assert not ds.is_labelled


def test_nested_folders_are_hierarchical(tmp_path):
    root = tmp_path / "tree"
    for leaf in ("animal/cat", "animal/dog", "vehicle/car"):
        for i in range(2):
            _img(root / leaf / f"{i}.png")
    ds = load_dataset(root)
    assert ds.task == "hierarchical"
    assert ds.classes == ["animal/cat", "animal/dog", "vehicle/car"]
    assert ds.taxonomy["animal/cat"] == "animal"
    assert ds.taxonomy["animal/dog"] == "animal"
    assert ds.taxonomy["vehicle/car"] == "vehicle"
    assert ds.taxonomy["animal"] is None and ds.taxonomy["vehicle"] is None


@pytest.mark.parametrize("n_classes, task", [(2, "binary"), (3, "multiclass"), (4, "multiclass")])
def test_task_inferred_from_class_count(tmp_path, n_classes, task):
    for c in range(n_classes):
        _img(tmp_path / "ds" / f"c{c}" / "0.png")
    assert load_dataset(tmp_path / "ds").task == task


# --------------------------------------------------------------------------- taxonomy files
@pytest.fixture
def flat_animals(tmp_path):
    root = tmp_path / "animals"
    for cls in ("cat", "dog", "car"):
        for i in range(2):
            _img(root / cls / f"{i}.png")
    return root


def test_taxonomy_json_child_to_parent(tmp_path, flat_animals):
    tax = tmp_path / "tax.json"
    tax.write_text(json.dumps({"cat": "mammal", "dog": "mammal", "mammal": "animal", "car": "vehicle"}))
    ds = load_dataset(flat_animals, taxonomy=tax)
    assert ds.task == "hierarchical"
    assert ds.taxonomy["cat"] == "mammal"
    assert ds.taxonomy["mammal"] == "animal"
    assert ds.taxonomy["animal"] is None
    assert ds.taxonomy["vehicle"] is None


def test_taxonomy_yaml_nested_tree(tmp_path, flat_animals):
    tax = tmp_path / "tax.yaml"
    tax.write_text("animal:\n  mammal:\n    - cat\n    - dog\nvehicle:\n  - car\n")
    ds = load_dataset(flat_animals, taxonomy=tax)
    assert ds.task == "hierarchical"
    assert ds.taxonomy == {"animal": None, "mammal": "animal", "cat": "mammal", "dog": "mammal",
                           "vehicle": None, "car": "vehicle"}


def test_taxonomy_missing_class_and_cycle(tmp_path, flat_animals):
    tax = tmp_path / "tax.json"
    tax.write_text(json.dumps({"cat": "animal", "dog": "animal"}))
    with pytest.raises(DataError, match="car"):
        load_dataset(flat_animals, taxonomy=tax)
    cyc = tmp_path / "cyc.json"
    cyc.write_text(json.dumps({"cat": "dog", "dog": "cat", "car": None}))
    with pytest.raises(DataError, match="cycle"):
        load_dataset(flat_animals, taxonomy=cyc)


# --------------------------------------------------------------------------- CSV / JSONL
@pytest.fixture
def table_dir(tmp_path):
    """Images under tmp/data/pics/; the CSV/JSONL files go to tmp/data/; cwd is elsewhere."""
    data = tmp_path / "data"
    for n in ("a", "b", "c", "d"):
        _img(data / "pics" / f"{n}.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    return data, elsewhere


def test_csv_path_label_relative_to_csv_folder(table_dir, monkeypatch):
    data, elsewhere = table_dir
    (data / "labels.csv").write_text("path,label\npics/a.png,cat\npics/b.png,dog\npics/c.png,cat\npics/d.png,bird\n")
    monkeypatch.chdir(elsewhere)
    ds = load_dataset(data / "labels.csv")
    assert ds.task == "multiclass"
    assert ds.classes == ["bird", "cat", "dog"]
    assert ds.labels() == ["cat", "dog", "cat", "bird"]
    assert [Path(s) for s in ds.sources] == [data / "pics" / f"{n}.png" for n in "abcd"]
    assert all(os.path.exists(s) for s in ds.sources)


def test_csv_binary(table_dir):
    data, _ = table_dir
    (data / "labels.csv").write_text("file,class\npics/a.png,yes\npics/b.png,no\n")
    ds = load_dataset(data / "labels.csv")
    assert ds.task == "binary"
    assert ds.labels() == ["yes", "no"]


def test_csv_pipe_separated_labels(table_dir):
    data, _ = table_dir
    (data / "tags.csv").write_text("path,labels\npics/a.png,cat|dog\npics/b.png,dog\npics/c.png,bird|cat|dog\n")
    ds = load_dataset(data / "tags.csv")
    assert ds.task == "multilabel"
    assert ds.classes == ["bird", "cat", "dog"]
    assert ds.targets.tolist() == [[0, 1, 1], [0, 0, 1], [1, 1, 1]]
    assert ds.labels() == [["cat", "dog"], ["dog"], ["bird", "cat", "dog"]]


def test_csv_quoted_comma_separated_labels(table_dir):
    data, _ = table_dir
    (data / "tags.csv").write_text('path,labels\npics/a.png,"cat, dog"\npics/b.png,dog\npics/c.png,"bird,cat"\n')
    ds = load_dataset(data / "tags.csv")
    assert ds.task == "multilabel"
    assert ds.classes == ["bird", "cat", "dog"]
    assert ds.labels() == [["cat", "dog"], ["dog"], ["bird", "cat"]]
    assert len(ds) == 3


def test_csv_one_hot_columns(table_dir):
    data, _ = table_dir
    (data / "onehot.csv").write_text("path,cat,dog,bird\npics/a.png,1,0,0\npics/b.png,1,1,0\npics/c.png,0,0,1\n")
    ds = load_dataset(data / "onehot.csv")
    assert ds.task == "multilabel"
    assert ds.classes == ["cat", "dog", "bird"]
    assert ds.targets.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]


def test_csv_one_hot_bad_value(table_dir):
    data, _ = table_dir
    csv_path = data / "onehot.csv"
    csv_path.write_text("path,cat,dog\npics/a.png,1,0\npics/b.png,2,1\n")
    with pytest.raises(DataError) as info:
        load_dataset(csv_path)
    assert str(csv_path) in str(info.value)
    assert "'2'" in str(info.value)


def test_csv_split_column(table_dir):
    data, _ = table_dir
    (data / "s.csv").write_text("path,label,split\npics/a.png,x,train\npics/b.png,y,train\n"
                                "pics/c.png,x,validation\npics/d.png,y,test\n")
    ds = load_dataset(data / "s.csv")
    assert {k: v.tolist() for k, v in ds.splits.items()} == {"train": [0, 1], "val": [2], "test": [3]}


def test_images_sibling_fallback(tmp_path, monkeypatch):
    root = tmp_path / "kaggle"
    for n in ("a", "b"):
        _img(root / "images" / f"{n}.png")
    (root / "labels.csv").write_text("image,label\na.png,cat\nb.png,dog\n")
    monkeypatch.chdir(tmp_path)
    ds = load_dataset(root / "labels.csv")
    assert [Path(s) for s in ds.sources] == [root / "images" / "a.png", root / "images" / "b.png"]


def test_jsonl_label(table_dir, monkeypatch):
    data, elsewhere = table_dir
    lines = [{"path": "pics/a.png", "label": "cat"}, {"path": "pics/b.png", "label": "dog"},
             {"path": "pics/c.png", "label": "fox"}]
    (data / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    monkeypatch.chdir(elsewhere)
    ds = load_dataset(data / "d.jsonl")
    assert ds.task == "multiclass"
    assert ds.labels() == ["cat", "dog", "fox"]
    assert Path(ds.sources[0]) == data / "pics" / "a.png"


def test_jsonl_labels_list(table_dir):
    data, _ = table_dir
    lines = [{"path": "pics/a.png", "labels": ["cat", "dog"]}, {"path": "pics/b.png", "labels": ["dog"]},
             {"path": "pics/c.png", "labels": []}]
    (data / "d.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    ds = load_dataset(data / "d.jsonl")
    assert ds.task == "multilabel"
    assert ds.classes == ["cat", "dog"]
    assert ds.targets.tolist() == [[1, 1], [0, 1], [0, 0]]


def test_jsonl_invalid_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"path": "a.png", "label": "x"}\nnot json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        load_dataset(p)


# --------------------------------------------------------------------------- task override
def _multilabel_csv(data, rows):
    p = data / "ml.csv"
    p.write_text("path,labels\n" + "".join(f"pics/{n}.png,{labs}\n" for n, labs in rows))
    return p


def test_task_override_multilabel_to_multiclass(table_dir):
    data, _ = table_dir
    p = _multilabel_csv(data, [("a", "cat"), ("b", "dog"), ("c", "fox")])
    assert load_dataset(p).task == "multilabel"
    ds = load_dataset(p, task="multiclass")
    assert ds.task == "multiclass"
    assert ds.targets.ndim == 1
    assert ds.labels() == ["cat", "dog", "fox"]


def test_task_override_multilabel_to_multiclass_refused_with_two_labels(table_dir):
    data, _ = table_dir
    p = _multilabel_csv(data, [("a", "cat|dog"), ("b", "dog"), ("c", "fox")])
    with pytest.raises(ConfigError, match="exactly one label"):
        load_dataset(p, task="multiclass")


def test_task_override_binary_needs_two_classes(colour_folder, tmp_path):
    with pytest.raises(ConfigError, match="2 classes"):
        load_dataset(colour_folder, task="binary")
    for c in ("a", "b"):
        _img(tmp_path / "two" / c / "0.png")
    ds = load_dataset(tmp_path / "two", task="multiclass")
    assert ds.task == "multiclass"
    assert load_dataset(tmp_path / "two", task="binary").task == "binary"


def test_task_override_to_multilabel_and_hierarchical(colour_folder):
    ml = load_dataset(colour_folder, task="multilabel")
    assert ml.task == "multilabel"
    assert ml.targets.shape == (36, 3)
    assert (ml.targets.sum(axis=1) == 1).all()
    h = load_dataset(colour_folder, task="hierarchical")
    assert h.task == "hierarchical"
    assert h.taxonomy == {"blue": None, "green": None, "red": None}


def test_task_override_errors_are_config_errors(tmp_path, colour_folder):
    with pytest.raises(ConfigError):
        load_dataset(colour_folder, task="regression")
    for i in range(2):
        _img(tmp_path / "flat" / f"{i}.png")
    with pytest.raises(ConfigError, match="no labels"):
        load_dataset(tmp_path / "flat", task="multiclass")


# --------------------------------------------------------------------------- errors
def test_missing_folder(tmp_path):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(DataError) as info:
        load_dataset(missing)
    assert str(missing) in str(info.value)


def test_empty_folder(tmp_path):
    empty = tmp_path / "empty"
    (empty / "cat").mkdir(parents=True)
    (empty / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError) as info:
        load_dataset(empty)
    assert str(empty) in str(info.value)
    assert "no images" in str(info.value)


def test_not_a_dataset_file(tmp_path):
    p = tmp_path / "thing.bin"
    p.write_bytes(b"\0")
    with pytest.raises(DataError, match="thing.bin"):
        load_dataset(p)


def test_csv_empty_path_cell(table_dir):
    data, _ = table_dir
    p = data / "e.csv"
    p.write_text("path,label\npics/a.png,cat\n,dog\n")
    with pytest.raises(DataError, match="line 3 has an empty"):
        load_dataset(p)


def test_group_by_on_folder_is_config_error(colour_folder):
    with pytest.raises(ConfigError):
        load_dataset(colour_folder, group_by="site")


def test_fingerprint_tracks_labels(colour_folder):
    a = load_dataset(colour_folder)
    b = load_dataset(colour_folder)
    assert a.fingerprint() == b.fingerprint()
    b.targets = np.roll(b.targets, 1)
    assert a.fingerprint() != b.fingerprint()


def test_symlinked_class_folders_are_followed_once(tmp_path):
    from conftest import write_colour_dataset

    src = write_colour_dataset(tmp_path / "src", n_per_class=3, size=8)
    data = tmp_path / "data"
    data.mkdir()
    for c in ("red", "blue"):
        (data / c).symlink_to(src / c, target_is_directory=True)
    (src / "red" / "loop").symlink_to(src / "red", target_is_directory=True)  # a cycle must not hang
    ds = load_dataset(data)
    assert ds.classes == ["blue", "red"] and len(ds) == 6
