"""Scale-out on PyTorch's engine: DDP training on 2 CPU processes (gloo) with rank-0-only writes and
resume, sharded batch prediction merged in input order, the launcher and device selection."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import run_cli, write_colour_dataset

from imgclass.errors import ConfigError
from imgclass.training import distributed

OPTS = ["--method", "smallcnn", "--epochs", "3", "--batch-size", "16", "--augment", "light", "--seed", "1",
        "--img-size", "24"]


def _env():
    return {**os.environ, "IMGCLASS_JOBS": "1", "IMGCLASS_PROGRESS": "0", "OMP_NUM_THREADS": "1"}


def _cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "imgclass", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True, **kw)


def _epochs(run):
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["epoch"] for r in recs if "epoch" in r]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_colour_dataset(tmp_path_factory.mktemp("ddp") / "data", n_per_class=40, size=24, seed=3)


@pytest.mark.slow
def test_ddp_two_processes_train_only_rank0_writes_and_resume_matches(data, tmp_path):
    # the reference: 3 epochs on 2 processes, uninterrupted
    ref = _cli(["train", str(data), *OPTS, "--nproc", "2", "--out", str(tmp_path / "ref"), "--json"])
    out, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err
    printed = json.loads(out)  # rank 0 alone prints: one JSON document
    assert printed["metrics"]["accuracy"] >= 0.6
    # only rank 0 writes: one run folder, each epoch logged once, one set of checkpoints
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ref"]
    assert _epochs(tmp_path / "ref") == [1, 2, 3]
    log = (tmp_path / "ref" / "log.txt").read_text()
    assert log.count("saved bundle") == 1 and log.count("epoch 1:") == 1
    assert sorted(p.name for p in (tmp_path / "ref" / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    # the same global batch as one process: each of the 2 ranks takes 8 images a step from its half of the
    # training images, so an epoch has as many optimiser steps as one process with batches of 16
    n_train = len(json.loads((tmp_path / "ref" / "split.json").read_text())["splits"]["train"])
    st = torch.load(str(tmp_path / "ref" / "checkpoints" / "last.pt"), weights_only=True)
    assert n_train % 16 == 0 and st["scheduler"]["last_epoch"] == 3 * n_train // 16
    # the victim: the whole job (launcher and both ranks) is SIGKILLed inside epoch 2
    victim = _cli(["train", str(data), *OPTS, "--nproc", "2", "--out", str(tmp_path / "run")])
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and '"epoch": 1' in metrics.read_text()):
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait(timeout=30)
    st = torch.load(str(tmp_path / "run" / "checkpoints" / "last.pt"), weights_only=True)
    assert st["epoch"] == 1, "the kill must land in epoch 2"
    assert not (tmp_path / "run" / "model").exists()
    # resume on 2 processes continues from epoch 1 and ends where the uninterrupted run ended
    resumed = _cli(["train", "--resume", str(tmp_path / "run"), "--nproc", "2", "--json"])
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert _epochs(tmp_path / "run") == [1, 2, 3]
    meta = json.loads((tmp_path / "run" / "model" / "model.json").read_text())
    ref_meta = json.loads((tmp_path / "ref" / "model" / "model.json").read_text())
    assert [h["epoch"] for h in meta["history"]] == [1, 2, 3]
    assert meta["history"][-1]["train_loss"] == pytest.approx(ref_meta["history"][-1]["train_loss"], rel=1e-4)
    assert meta["history"][-1]["val_accuracy"] == pytest.approx(ref_meta["history"][-1]["val_accuracy"], abs=1e-6)


@pytest.mark.slow
def test_sharded_prediction_merges_in_input_order(tmp_path, trained):
    model_dir, data_dir = trained["bundle"], trained["data"]
    one = tmp_path / "one.csv"
    assert run_cli(["predict", str(model_dir), str(data_dir), "--out", str(one)])[0] == 0
    two = tmp_path / "two.csv"
    p = _cli(["predict", str(model_dir), str(data_dir), "--out", str(two), "--nproc", "2", "--json"])
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert json.loads(out)["predicted"] == len(one.read_text().splitlines()) - 1
    assert two.read_text() == one.read_text()
    assert sorted(x.name for x in tmp_path.iterdir()) == ["one.csv", "two.csv"]  # part files removed
    # resumable: a half-finished CSV is completed, each image once, in input order
    lines = one.read_text().splitlines(keepends=True)
    half = tmp_path / "half.csv"
    half.write_text("".join(lines[: len(lines) // 2]) + lines[len(lines) // 2][:7])  # a cut-off last line
    p = _cli(["predict", str(model_dir), str(data_dir), "--out", str(half), "--nproc", "2"])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert half.read_text() == one.read_text()


@pytest.mark.slow
def test_bad_distributed_options_are_one_line_errors(data, tmp_path):
    code, _, err = run_cli(["train", str(data), "--nproc", "zero"])
    assert code == 2 and "--nproc zero" in err
    p = _cli(["train", str(data), "--method", "pixels+logreg", "--nproc", "2", "--out", str(tmp_path / "c")])
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "distributed training is for deep methods" in lines[0], err
    code, _, err = run_cli(["train", str(data), *OPTS, "--device", "tpu", "--out", str(tmp_path / "d")])
    assert code == 2 and "--device tpu" in err
    # commands without --nproc are not re-run on several processes: the option is refused
    code, _, err = run_cli(["evaluate", str(tmp_path / "x"), str(data), "--nproc", "2"])
    assert code == 2 and "--nproc" in err


def test_devices_and_helpers():
    assert distributed.resolve_device("auto") in ("cpu", "cuda", "mps")
    assert distributed.resolve_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            distributed.resolve_device("cuda")
    assert distributed.autocast_dtype("cpu") is None
    assert distributed.autocast_dtype("cuda", "bf16") == torch.bfloat16
    blocks = [distributed.shard_range(10, r, 3) for r in range(3)]
    assert blocks == [(0, 3), (3, 6), (6, 10)]
    assert distributed.strip_option(["train", "d", "--nproc", "2", "--nproc=3", "--out", "x"], "--nproc") == \
        ["train", "d", "--out", "x"]
    one = distributed.info()
    assert (one.rank, one.world, one.is_main, one.enabled) == (0, 1, True, False)
    assert distributed.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
    assert distributed.broadcast({"a": 1}) == {"a": 1}
