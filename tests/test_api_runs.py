"""The API's run folders: the default ``runs/<data>-<what>`` names, claimed atomically, and given back
when a run fails before it writes anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from imgclass import api


def test_new_run_dir_gives_the_default_folder_back_when_the_run_fails(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError), api.new_run_dir("photos/", "hog+svm") as out:
        assert out == Path("runs/photos-hog-svm") and out.is_dir()
        raise RuntimeError("the run failed")
    assert not (tmp_path / "runs").exists()
    with api.new_run_dir("photos/", "hog+svm") as out:
        pass
    assert out.is_dir()
    assert api.default_run_dir("photos/", "hog+svm") == Path("runs/photos-hog-svm-2")


def test_a_given_out_is_used_as_it_is(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with api.new_run_dir("photos/", "curate", tmp_path / "mine") as out:
        assert out == tmp_path / "mine" and not out.exists()
    assert not (tmp_path / "runs").exists()


def test_run_dir_next_to_a_bundle(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert api.run_dir_next_to("runs/cats/model", "pruned") == Path("runs/cats-pruned")
    assert api.run_dir_next_to("runs/cats/model", "pruned") == Path("runs/cats-pruned-2")


def test_train_method_names_the_run_after_the_method_train_uses():
    assert api.train_method() == "hog+svm"
    assert api.train_method("lbp+rf") == "lbp+rf"
