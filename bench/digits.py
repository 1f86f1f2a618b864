"""Digits as PNG files, stratified 50/50 split (seed 0): imgclass classical methods vs scikit-learn's
own example (SVC gamma=0.001 on the raw 8x8 arrays, same split).

Target (Foundation issue): the best classical method reaches >= 0.98 accuracy.

    .venv/bin/python bench/digits.py [CACHE_DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from _common import Timer, save, table

import imgclass
from imgclass.data.samples import write_digits

METHODS = ["pixels+svm", "hog+svm", "hog,pixels+svm", "hog+logreg", "pixels+knn", "lbp+rf"]


def main() -> None:
    cache = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.home() / ".cache" / "imgclass"
    folder = write_digits(cache / "digits")
    ds = imgclass.load_dataset(folder)
    train, val = ds.split(val=0.5, seed=0)

    rows = []
    with Timer() as t:
        board = imgclass.compare(ds, METHODS, val_split=0.5, seed=0)
    for r in board:
        rows.append({"method": f"imgclass {r['method']}", "accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
                     "fit_s": r["fit_s"]})

    # baseline: scikit-learn's "Recognizing hand-written digits" example on the same split
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    index = {f"{y}/{i:04d}.png": i for i, y in enumerate(digits.target)}
    tr = np.array([index[train.relpath(i)] for i in range(len(train))])
    va = np.array([index[val.relpath(i)] for i in range(len(val))])
    X = digits.images.reshape(len(digits.images), -1)
    with Timer() as tb:
        clf = SVC(gamma=0.001).fit(X[tr], digits.target[tr])
        acc = float((clf.predict(X[va]) == digits.target[va]).mean())
    rows.append({"method": "scikit-learn example SVC(gamma=0.001)", "accuracy": acc, "macro_f1": float("nan"),
                 "fit_s": tb.s})

    best = max(r["accuracy"] for r in board)
    print(table(rows, ["method", "accuracy", "macro_f1", "fit_s"],
                f"digits as PNG, 50/50 stratified split seed 0: {len(train)} train / {len(val)} val"))
    print(f"\nbest imgclass accuracy {best:.4f} (target >= 0.98: {'PASS' if best >= 0.98 else 'FAIL'}); "
          f"compare wall time {t.s:.1f}s")
    save("digits", {"rows": rows, "best": best, "target": 0.98, "compare_s": t.s})


if __name__ == "__main__":
    main()
