"""Hostile data: devices and FIFOs listed as images, labels that are not labels, files listed twice."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_one_line_error
from conftest import run_cli as _run

import imgclass
from imgclass.data import decode as decode_mod
from imgclass.data import load_dataset
from imgclass.data.check import check_dataset
from imgclass.data.decode import load_image, source_bytes
from imgclass.data.readers import from_paths, read_csv
from imgclass.errors import DataError, DataWarning, ImageLoadError


@pytest.fixture
def colours(tmp_path, make_colour_dataset):
    return make_colour_dataset(tmp_path / "c", n_per_class=8, size=16, seed=3)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.png"))


# --------------------------------------------------------------------------- bytes read per file
@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="needs /dev/zero")
def test_data_check_refuses_dev_zero_a_fifo_and_a_folder(tmp_path, colours):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    (tmp_path / "dir.png").mkdir()
    good = _files(colours)[:3]
    rows = [f"{p},red" for p in good] + ["/dev/zero,red", f"{fifo},red", f"{tmp_path / 'dir.png'},red"]
    (tmp_path / "t.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    ds = load_dataset(tmp_path / "t.csv")
    rep = check_dataset(ds, n_jobs=1)
    reasons = {Path(b["path"]).name: b["reason"] for b in rep["bad_files"]}
    assert "a device" in reasons["zero"] and "FIFO" in reasons["pipe.png"] and "a folder" in reasons["dir.png"]
    assert len(rep["bad_files"]) == 3
    for src in ("/dev/zero", fifo):
        with pytest.raises(ImageLoadError, match="not a regular file"):
            load_image(src)
    rc, out, err = _run(["data", "check", tmp_path / "t.csv", "--json"])
    assert rc == 0, err
    assert len(json.loads(out)["bad_files"]) == 3


def test_files_above_the_byte_budget_are_refused(tmp_path, monkeypatch, colours):
    big = tmp_path / "big.png"
    big.write_bytes(_files(colours)[0].read_bytes() + b"\0" * 5000)
    with pytest.raises(OSError) as e:
        source_bytes(big, max_bytes=1000)
    assert e.value.errno == errno.EFBIG
    assert decode_mod.max_file_bytes(10**9) > decode_mod.max_file_bytes(10**6) >= decode_mod.MIN_FILE_BYTES_LIMIT
    from imgclass.data import check as check_mod

    budget = {}  # the budget follows --max-pixels

    def tiny(max_pixels=None):
        budget["max_pixels"] = max_pixels
        return 1000

    monkeypatch.setattr(decode_mod, "max_file_bytes", tiny)
    monkeypatch.setattr(check_mod, "max_file_bytes", tiny)
    with pytest.raises(ImageLoadError, match="more than the limit"):
        load_image(big, max_pixels=5000)
    rep = check_dataset(from_paths([big]), max_pixels=5000, n_jobs=1)
    assert "more than the limit" in rep["bad_files"][0]["reason"] and budget["max_pixels"] == 5000


def test_a_table_that_is_a_device_is_refused(tmp_path):
    with pytest.raises(DataError, match="not a regular file"):
        read_csv("/dev/null" if os.path.exists("/dev/null") else tmp_path)


# --------------------------------------------------------------------------- labels that are not labels
def test_empty_label_cells_are_reported_with_line_numbers(tmp_path, colours):
    files = _files(colours)
    rows = [f"{p},{p.parent.name}" for p in files[:6]] + [f"{files[6]},", f"{files[7]},  "]
    (tmp_path / "t.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    with pytest.warns(DataWarning, match=r"2 rows with an empty 'label' cell \(lines 8, 9\)"):
        ds = load_dataset(tmp_path / "t.csv")
    assert len(ds) == 8 and int((~ds.labelled_mask).sum()) == 2


def test_jsonl_objects_lists_and_null_are_skipped_not_classes(tmp_path, colours):
    files = _files(colours)
    lines = [json.dumps({"path": str(p), "label": p.parent.name}) for p in files[:6]]
    lines += [json.dumps({"path": str(files[6]), "label": {"x": 1}}),
              "",
              json.dumps({"path": str(files[7]), "label": ["a", "b"]}),
              json.dumps({"path": str(files[8]), "label": None})]
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(DataWarning) as rec:
        ds = load_dataset(tmp_path / "t.jsonl")
    msgs = " | ".join(str(w.message) for w in rec)
    assert "2 rows whose 'label' is not a single label" in msgs and "lines 7, 9" in msgs
    assert "1 row with an empty 'label' cell (line 10)" in msgs
    assert all("{" not in c and "[" not in c for c in ds.classes)
    assert ds.task in ("binary", "multiclass") and int((~ds.labelled_mask).sum()) == 3


def test_multilabel_rows_with_objects_are_left_out(tmp_path, colours):
    files = _files(colours)
    lines = [json.dumps({"path": str(p), "labels": [p.parent.name, "any"]}) for p in files[:4]]
    lines.append(json.dumps({"path": str(files[4]), "labels": [{"x": 1}]}))
    lines.append(json.dumps({"path": str(files[5]), "labels": []}))  # no labels: a valid row
    (tmp_path / "t.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.warns(DataWarning, match=r"1 row whose 'labels' is not a list of labels .*line 5"):
        ds = load_dataset(tmp_path / "t.jsonl")
    assert ds.task == "multilabel" and len(ds) == 5


def test_cli_prints_skipped_label_lines_as_one_warning(tmp_path, colours):
    files = _files(colours)
    rows = [f"{p},{p.parent.name}" for p in files] + [f"{files[0]},"]
    (tmp_path / "t.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    rc, out, err = _run(["data", "check", tmp_path / "t.csv", "--json"])
    assert rc == 0, err
    warn = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert any("empty 'label' cell (line 26)" in ln for ln in warn), err


# --------------------------------------------------------------------------- the same file twice
def _table(tmp_path, colours, extra_rows, header="path,label"):
    files = _files(colours)
    rows = [f"{p},{p.parent.name}" + (",train" if "split" in header else "") for p in files] + extra_rows
    (tmp_path / "t.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return tmp_path / "t.csv", files


def _other(p: Path) -> str:
    return "red" if p.parent.name != "red" else "green"


def test_conflicting_labels_drop_keep_error(tmp_path, colours):
    t, files = _table(tmp_path, colours, [])
    twice = files[0]
    t.write_text(t.read_text() + f"{twice},{_other(twice)}\n")
    logs: list[str] = []
    imgclass.train(t, method="pixels+knn", n_jobs=1, log=logs.append)
    assert any("listed with conflicting labels" in m and twice.name in m and "--duplicates drop" in m for m in logs)
    with pytest.raises(DataError, match="conflicting labels"):
        imgclass.train(t, method="pixels+knn", n_jobs=1, duplicates="error")
    logs.clear()
    imgclass.train(t, method="pixels+knn", n_jobs=1, duplicates="keep", log=logs.append)
    assert any("--duplicates keep" in m for m in logs)


def test_drop_takes_conflicting_files_out_of_the_split(tmp_path, colours):
    t, files = _table(tmp_path, colours, [])
    t.write_text(t.read_text() + f"{files[0]},{_other(files[0])}\n")
    imgclass.train(t, method="pixels+knn", n_jobs=1, out=tmp_path / "run")
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    listed = [p for part in split["splits"].values() for p in part]
    assert len(listed) == len(set(listed)) == len(files) - 1
    assert not any(p.endswith(files[0].name) and files[0].parent.name in p for p in listed)


def test_a_file_in_train_and_val_stays_in_train(tmp_path, colours):
    files = _files(colours)
    rows = [f"{p},{p.parent.name},{'val' if i % 4 == 0 else 'train'}" for i, p in enumerate(files)]
    rows.append(f"{files[1]},{files[1].parent.name},val")  # files[1] is train above
    (tmp_path / "t.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    logs: list[str] = []
    imgclass.train(tmp_path / "t.csv", method="pixels+knn", n_jobs=1, out=tmp_path / "run", log=logs.append)
    assert any("in more than one split" in m and "train, val" in m for m in logs)
    split = json.loads((tmp_path / "run" / "split.json").read_text())["splits"]
    assert not set(split["train"]) & set(split["val"])
    assert any(p.endswith(files[1].name) for p in split["train"])


def test_explicit_val_overlap_is_left_out_of_val(tmp_path, colours):
    ds = load_dataset(colours)
    val = ds.subset(np.arange(0, len(ds), 3))
    logs: list[str] = []
    model = imgclass.train(ds, method="pixels+knn", val=val, n_jobs=1, log=logs.append)
    assert model is not None
    assert any(f"{len(val)} validation images are also in the training split" in m for m in logs)
    with pytest.raises(DataError, match="also in the training split"):
        imgclass.train(ds, method="pixels+knn", val=val, n_jobs=1, duplicates="error")


def test_cli_duplicates_error_and_bad_policy(tmp_path, colours):
    t, files = _table(tmp_path, colours, [])
    t.write_text(t.read_text() + f"{files[0]},{_other(files[0])}\n")
    rc, out, err = _run(["train", t, "--method", "pixels+knn", "--duplicates", "error", "--out", tmp_path / "r"])
    assert_one_line_error(rc, out, err, "conflicting labels", files[0].name, "--duplicates")
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
    rc, out, err = _run(["train", t, "--method", "pixels+knn", "--duplicates", "maybe", "--out", tmp_path / "r"])
    assert_one_line_error(rc, out, err, "--duplicates 'maybe'")
