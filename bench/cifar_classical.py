"""CIFAR-10 12k (train -> val) with classical methods, through the real CLI.

Targets (Foundation issue): hog+svm >= 0.55 accuracy; ``imgclass compare`` over 4 classical
methods finishes in <= 10 minutes on 2 cores.

    .venv/bin/python bench/cifar_classical.py [CIFAR_DIR]
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from _common import Timer, dataset_path, save, table

METHODS = "hog+svm,hog,color_hist+svm,hog+logreg,lbp+rf"


def main() -> None:
    root = dataset_path("cifar10-12k", sys.argv[1] if len(sys.argv) > 1 else None)
    exe = Path(sys.executable).with_name("imgclass")
    cmd = [str(exe), "compare", str(root), "--methods", METHODS, "--json"]
    print("$ " + " ".join(cmd), flush=True)
    with Timer() as t:
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    rows = json.loads(out)
    for r in rows:
        r["predict_ips"] = round(r["predict_ips"])
        r["size_MB"] = r["size_bytes"] / 1e6
    print(table(rows, ["method", "accuracy", "macro_f1", "fit_s", "predict_ips", "size_MB"],
                "CIFAR-10 12k: train 10,000 -> val 2,000"))
    hog_svm = next(r["accuracy"] for r in rows if r["method"] == "hog+svm")
    print(f"\nhog+svm accuracy {hog_svm:.4f} (target >= 0.55: {'PASS' if hog_svm >= 0.55 else 'FAIL'})")
    print(f"compare over {len(rows)} methods: {t.s:.0f}s wall (target <= 600 s: {'PASS' if t.s <= 600 else 'FAIL'})")
    save("cifar_classical", {"rows": rows, "hog_svm": hog_svm, "compare_s": t.s, "command": " ".join(cmd)})


if __name__ == "__main__":
    main()
