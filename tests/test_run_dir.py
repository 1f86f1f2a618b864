"""Run folders and result files under hostile conditions: two writers, an existing --out, umask, full disks."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from imgclass._util import atomic_dir, atomic_write_bytes, atomic_write_text, current_umask
from imgclass.errors import ConfigError, OutputError
from imgclass.training.run import RunDir


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


# --------------------------------------------------------------------------- claiming a folder
def test_second_claim_of_a_run_folder_is_refused_while_the_first_holds_it(tmp_path):
    first = RunDir.create(tmp_path / "r")
    with pytest.raises(ConfigError, match=r"r: in use by another imgclass run \(pid \d+\)"):
        RunDir.create(tmp_path / "r")
    with pytest.raises(OutputError, match="in use"):
        RunDir.open(tmp_path / "r")  # --resume is refused too
    first.release()
    RunDir.open(tmp_path / "r").release()  # free again once the first run ends


@pytest.mark.subprocess
def test_claim_from_another_process_is_refused(tmp_path):
    run = RunDir.create(tmp_path / "r")
    code = ("import sys; from imgclass.training.run import RunDir\n"
            "try:\n    RunDir.create(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e); sys.exit(3)")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], capture_output=True, text=True)
    assert p.returncode == 3 and "OutputError" in p.stdout and "in use" in p.stdout, p.stdout + p.stderr
    run.release()


def test_existing_folder_with_files_is_refused_not_renamed(tmp_path):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="already holds 1 file.*--overwrite"):
        RunDir.create(tmp_path / "r")
    assert not (tmp_path / "r-2").exists()
    with pytest.raises(OutputError, match="not an imgclass run folder"):  # --overwrite never empties other folders
        RunDir.create(tmp_path / "r", overwrite=True)
    assert (tmp_path / "r" / "notes.txt").read_text() == "mine"


def test_overwrite_empties_a_run_folder(tmp_path):
    run = RunDir.create(tmp_path / "r")
    run.write_config({"a": 1})
    run.log_metrics({"epoch": 1})
    (run.plots_dir / "x.png").write_bytes(b"x")
    run.release()
    again = RunDir.create(tmp_path / "r", overwrite=True)
    assert sorted(p.name for p in again.path.iterdir()) == [".lock"]


def test_empty_existing_folder_is_used_and_a_file_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    RunDir.create(tmp_path / "empty").release()
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        RunDir.create(tmp_path / "f")


def test_default_names_are_claimed_one_each(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = [RunDir.create(None, hint="cats").path for _ in range(3)]
    assert names == [Path("runs/cats"), Path("runs/cats-2"), Path("runs/cats-3")]
    assert RunDir.claim_name("runs/cats") == Path("runs/cats-4")


# --------------------------------------------------------------------------- modes
def test_current_umask_is_read_without_changing_it(umask022):
    assert current_umask() == 0o022
    assert os.umask(0o022) == 0o022


def test_atomic_files_and_folders_get_the_umask(tmp_path, umask022):
    atomic_write_text(tmp_path / "a.txt", "x")
    with atomic_dir(tmp_path / "bundle") as d:
        atomic_write_bytes(d / "w.bin", b"1")
    assert _mode(tmp_path / "a.txt") == 0o644
    assert _mode(tmp_path / "bundle") == 0o755 and _mode(tmp_path / "bundle" / "w.bin") == 0o644
    os.umask(0o077)
    atomic_write_text(tmp_path / "b.txt", "x")
    assert _mode(tmp_path / "b.txt") == 0o600


# --------------------------------------------------------------------------- refused writes
def _fail_replace(errno_):
    def replace(src, dst):
        raise OSError(errno_, os.strerror(errno_))
    return replace


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_refused_write_is_an_output_error_and_keeps_the_old_file(tmp_path, monkeypatch, code):
    target = tmp_path / "metrics.json"
    target.write_text("old")
    monkeypatch.setattr(os, "replace", _fail_replace(code))
    with pytest.raises(OutputError, match=f"cannot write {target}: {os.strerror(code)}"):
        atomic_write_text(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]  # no temp file left


def test_refused_bundle_write_keeps_the_old_bundle(tmp_path, monkeypatch):
    with atomic_dir(tmp_path / "model") as d:
        (d / "model.json").write_text("old")
    real = os.replace

    def replace(src, dst):  # moving the old bundle aside works, putting the new one in place fails
        if ".tmp-" in str(src):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OutputError, match="No space left"), atomic_dir(tmp_path / "model") as d:
        (d / "model.json").write_text("new")
    assert (tmp_path / "model" / "model.json").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_writing_under_a_file_is_an_output_error(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        atomic_write_text(tmp_path / "f" / "report.html", "x")
    with pytest.raises(OutputError, match="cannot write"):
        RunDir.claim_name(tmp_path / "f" / "run")


def test_full_disk_while_appending_metrics_keeps_earlier_lines(tmp_path, monkeypatch):
    run = RunDir.create(tmp_path / "r")
    run.log_metrics({"epoch": 1})
    real = os.write

    def write(fd, data):  # half a line gets out, then the disk is full
        real(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", write)
    with pytest.raises(OutputError, match="metrics.jsonl: No space left"):
        run.log_metrics({"epoch": 2})
    monkeypatch.undo()
    lines = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1]
