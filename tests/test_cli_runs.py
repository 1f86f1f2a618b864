"""The CLI's run folders and result files: one writer per folder, no silent renames, 0644 files, one-line
errors for refused writes, and batch-prediction resume on resolved paths."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import assert_one_line_error
from conftest import run_cli as _run


@pytest.fixture
def photos(tmp_path, make_colour_dataset):
    return make_colour_dataset(tmp_path / "photos", n_per_class=8, size=16, seed=5)


def _train(photos, out, *extra):
    return _run(["train", photos, "--method", "pixels+knn", "--jobs", "1", "--out", out, "--json", *extra])


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_trains_started_together_with_one_out_exactly_one_proceeds(photos, tmp_path):
    env = {**os.environ, "IMGCLASS_JOBS": "1", "IMGCLASS_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "imgclass", "train", str(photos), "--method", "pixels+knn", "--jobs", "1",
           "--out", str(tmp_path / "r")]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    err = next(e for rc, e in results if rc == 2)
    assert str(tmp_path / "r") in err and ("in use by another imgclass run" in err or "already holds" in err), err
    assert not (tmp_path / "r-2").exists()
    records = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in records if r.get("final") and r["split"] == "train") == 1  # one run's metrics only


def test_overwrite_replaces_a_run_folder(photos, tmp_path):
    assert _train(photos, tmp_path / "r")[0] == 0
    rc, out, err = _train(photos, tmp_path / "r")
    assert_one_line_error(rc, out, err, "already holds", "--overwrite")
    rc, out, err = _train(photos, tmp_path / "r", "--overwrite", "--seed", "3")
    assert rc == 0, err
    assert "seed: 3" in (tmp_path / "r" / "config.yaml").read_text()
    finals = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert sum(1 for r in finals if r.get("final") and r["split"] == "train") == 1


def test_default_run_folder_takes_the_next_free_name(photos, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dirs = []
    for _ in range(2):
        rc, out, err = _run(["train", photos, "--method", "pixels+knn", "--jobs", "1", "--json"])
        assert rc == 0, err
        dirs.append(Path(json.loads(out)["run_dir"]))
    assert dirs == [Path("runs/photos-pixels-knn"), Path("runs/photos-pixels-knn-2")]
    rc, out, err = _run(["train", photos, "--method", "nope+svm"])
    assert rc == 2 and not Path("runs/photos-nope-svm").exists()  # a refused run leaves no folder behind


def test_report_and_bundle_files_are_0644_under_umask_022(photos, tmp_path):
    old = os.umask(0o022)
    try:
        rc, out, err = _train(photos, tmp_path / "r")
    finally:
        os.umask(old)
    assert rc == 0, err
    run = tmp_path / "r"
    files = [p for p in run.rglob("*") if p.is_file()]
    names = {p.relative_to(run).as_posix() for p in files}
    assert {"report.html", "metrics.json", "config.yaml", "model/model.json"} <= names
    assert any(n.startswith("plots/") for n in names)
    bad = {p.relative_to(run).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
           if stat.S_IMODE(p.stat().st_mode) != 0o644}
    assert not bad
    assert all(stat.S_IMODE(d.stat().st_mode) == 0o755 for d in [run, *[p for p in run.rglob("*") if p.is_dir()]])


def test_out_under_a_file_is_one_line_exit_2(photos, tmp_path):
    (tmp_path / "f").write_text("x")
    rc, out, err = _train(photos, tmp_path / "f" / "run")
    assert_one_line_error(rc, out, err, str(tmp_path / "f" / "run"))


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC])
def test_refused_report_write_is_one_line_exit_2_and_keeps_the_bundle(photos, tmp_path, monkeypatch, code):
    real = os.replace

    def replace(src, dst):
        if str(dst).endswith("report.html"):
            raise OSError(code, os.strerror(code))
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    rc, out, err = _train(photos, tmp_path / "r")
    assert_one_line_error(rc, out, err, f"cannot write {tmp_path / 'r' / 'report.html'}", os.strerror(code))
    assert (tmp_path / "r" / "model" / "model.json").is_file()  # what was written before stays valid
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.endswith(".tmp")]


def test_batch_predict_resume_matches_the_resolved_path(photos, tmp_path, monkeypatch):
    assert _train(photos, tmp_path / "r")[0] == 0
    monkeypatch.chdir(tmp_path)
    rc, out, err = _run(["predict", "r/model", "photos", "--out", "preds.csv"])
    assert rc == 0 and "24 predicted" in out, err
    rc, out, err = _run(["predict", "r/model", str(photos.resolve()), "--out", "preds.csv"])
    assert rc == 0 and "0 predicted, 24 already there" in out, (out, err)
    rc, out, err = _run(["predict", "r/model", "./photos/../photos", "--out", "preds.csv"])
    assert rc == 0 and "0 predicted" in out, (out, err)
    assert len((tmp_path / "preds.csv").read_text().splitlines()) == 25
