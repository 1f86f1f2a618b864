"""Frozen ImageNet embeddings + logistic regression on CIFAR-10 12k (train 10k -> val 2k), through
the real CLI: cold (empty embedding cache) and warm (cache filled by the cold run), per backbone.
The scikit-learn baseline in the same run is hog+svm, the best classical method.

Target (Deep-learning issue): lite0+logreg >= 0.80 in <= 8 min.

    .venv/bin/python bench/cifar_frozen.py [CIFAR_DIR] [BACKBONES, default lite0,lite1,lite2] [--out NAME]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import Bench, Timer, table


def run(cmd, env):
    with Timer() as t:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out), t.s


def main() -> None:
    b = Bench("cifar_frozen", __doc__, data="cifar10-12k")
    b.parser.add_argument("backbones", nargs="?", default="lite0,lite1,lite2", help="comma-separated backbones")
    args = b.parse()
    root = b.dataset()
    backbones = args.backbones.split(",")
    exe = str(Path(sys.executable).with_name("imgclass"))
    rows = []
    with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as runs:
        env = {**os.environ, "IMGCLASS_CACHE": cache}
        for bb in backbones:
            method = f"{bb}+logreg"
            cmd = [exe, "train", str(root), "--method", method, "--out", f"{runs}/{bb}", "--json"]
            print("$ IMGCLASS_CACHE=<empty> " + " ".join(cmd[:6]), flush=True)
            res, cold = run(cmd, env)
            print(f"  {method}: accuracy {res['metrics']['accuracy']:.4f}, cold {cold:.0f}s", flush=True)
            cmd[6] = f"{runs}/{bb}-warm"
            res2, warm = run(cmd, env)
            rows.append({"method": method, "accuracy": res["metrics"]["accuracy"], "cold_s": cold, "warm_s": warm})
        cmd = [exe, "train", str(root), "--method", "hog+svm", "--out", f"{runs}/hog", "--json"]
        res, secs = run(cmd, env)
        rows.append({"method": "hog+svm (classical baseline)", "accuracy": res["metrics"]["accuracy"], "cold_s": secs,
                     "warm_s": float("nan")})
    print(table(rows, ["method", "accuracy", "cold_s", "warm_s"], "CIFAR-10 12k, train 10,000 -> val 2,000"))
    lite0 = next((r for r in rows if r["method"] == "lite0+logreg"), None)
    if lite0:
        print()
        b.target("lite0+logreg accuracy", lite0["accuracy"], ">=", 0.80)
        b.target("lite0+logreg cold wall time", lite0["cold_s"], "<=", 480, ".0f", " s")
    b.save({"rows": rows})


if __name__ == "__main__":
    main()
