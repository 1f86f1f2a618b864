"""DDP scaling: 1 process vs N processes (torchrun + DistributedDataParallel, gloo on CPU) with the same
global batch, on CIFAR-10 12k (train 10k, val 2k).

Both runs go through the real CLI (``imgclass train ... [--nproc N]``) with the same seed and options.
The single process uses every core (torch's intra-op threads); each of the N ranks gets cores / N
threads, so on one machine DDP can only win where one process leaves cores idle. The baseline is the
plain single-process run; the table reports training images/s (mean over epochs, from the run's own
metrics), wall time and final validation accuracy, which must agree within run-to-run noise.

    .venv/bin/python bench/ddp_scaling.py [CIFAR_DIR] [--nproc 2] [--method smallcnn] [--epochs 3] [--quick] [--out NAME]

``--quick``: 1 epoch.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import Bench, Timer, table


def run(exe: str, data: str, out: str, method: str, epochs: int, batch: int, nproc: int) -> dict:
    cmd = [exe, "train", data, "--method", method, "--epochs", str(epochs), "--batch-size", str(batch),
           "--seed", "0", "--out", out, "--json"] + (["--nproc", str(nproc)] if nproc > 1 else [])
    print("$ " + " ".join(cmd), flush=True)
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    with Timer() as t:
        proc = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    res = json.loads(proc.stdout)
    print("\n".join(ln for ln in proc.stderr.splitlines() if ln.startswith("epoch")), flush=True)
    hist = json.loads((Path(out) / "model" / "model.json").read_text())["history"]
    return {"processes": nproc, "img_per_s": sum(h["img_per_s"] for h in hist) / len(hist),
            "epoch_s": sum(h["train_s"] for h in hist) / len(hist), "wall_s": t.s,
            "val_accuracy": res["metrics"]["accuracy"], "epochs": len(hist)}


def main() -> None:
    b = Bench("ddp_scaling", __doc__, data="cifar10-12k", quick={"epochs": 1})
    ap = b.parser
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--method", default="smallcnn")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    a = b.parse()
    root = b.dataset()
    exe = str(Path(sys.executable).with_name("imgclass"))
    with tempfile.TemporaryDirectory() as tmp:
        one = run(exe, str(root), f"{tmp}/one", a.method, a.epochs, a.batch_size, 1)
        many = run(exe, str(root), f"{tmp}/ddp", a.method, a.epochs, a.batch_size, a.nproc)
    rows = [{**one, "setting": "1 process (baseline)"}, {**many, "setting": f"DDP {a.nproc} processes (gloo)"}]
    print(f"\n{a.method}, {a.epochs} epochs, global batch {a.batch_size}, {os.cpu_count()} cores")
    print(table(rows, ["setting", "img_per_s", "epoch_s", "wall_s", "val_accuracy"]))
    print(f"\nval accuracy difference {many['val_accuracy'] - one['val_accuracy']:+.4f}")
    b.record("ours", rate=many["img_per_s"], what=f"DDP {a.nproc} processes")
    b.record("baseline", rate=one["img_per_s"], what="1 process")
    b.save({"method": a.method, "epochs": a.epochs, "batch": a.batch_size, "rows": rows})


if __name__ == "__main__":
    main()
