"""``imgclass.compare``: several methods on one split, a leaderboard best first."""

from __future__ import annotations

import json

import pytest

import imgclass
from imgclass.errors import ConfigError


def test_compare_leaderboard(colour_folder):
    methods = ["pixels+logreg", "pixels+knn", "hog+logreg"]
    rows = imgclass.compare(colour_folder, methods, val_split=0.3)
    assert len(rows) == 3
    assert sorted(r["method"] for r in rows) == sorted(methods)
    accs = [r["accuracy"] for r in rows]
    assert accs == sorted(accs, reverse=True)
    for r in rows:
        assert {"method", "accuracy", "macro_f1", "fit_s", "predict_ips", "size_bytes"} <= set(r)
        assert 0.0 <= r["accuracy"] <= 1.0
        assert r["fit_s"] >= 0 and r["predict_ips"] > 0
        assert isinstance(r["size_bytes"], int) and r["size_bytes"] > 0
        assert r["metrics"]["n"] == 12      # 30 % of 12 per class, 3 classes
    assert rows[0]["accuracy"] >= 0.9


def test_compare_out_keeps_bundles(colour_folder, tmp_path):
    rows = imgclass.compare(colour_folder, ["pixels+logreg"], val_split=0.3, out=tmp_path / "cmp")
    assert (tmp_path / "cmp" / "split.json").exists()
    board = json.loads((tmp_path / "cmp" / "leaderboard.json").read_text())
    assert [r["method"] for r in board] == [r["method"] for r in rows]
    assert (tmp_path / "cmp" / "models" / "pixels+logreg" / "model.json").exists()


@pytest.mark.parametrize("methods, kw, needle", [
    ([], {}, "empty"),
    (["pixels+logreg", "pixels+logreg"], {}, "twice"),
    (["pixels+logreg"], {"val_split": 0.0}, "validation"),
    (["pixels+nope"], {}, "nope"),
])
def test_compare_errors(colour_folder, methods, kw, needle):
    with pytest.raises(ConfigError, match=needle):
        imgclass.compare(colour_folder, methods, **kw)


@pytest.mark.slow
def test_compare_ranks_deep_and_classical_methods_together(tmp_path):
    from conftest import write_colour_dataset

    import imgclass

    data = write_colour_dataset(tmp_path / "data", n_per_class=10, size=32)
    rows = imgclass.compare(data, ["pixels+logreg", "smallcnn"], val_split=0.3)
    assert {r["method"] for r in rows} == {"pixels+logreg", "smallcnn"}
    deep = next(r for r in rows if r["method"] == "smallcnn")
    assert deep["size_bytes"] > 100_000 and deep["fit_s"] > 0 and 0 <= deep["accuracy"] <= 1
