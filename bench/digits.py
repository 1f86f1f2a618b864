"""Digits as PNG files, stratified 50/50 split (seed 0): imgclass classical methods vs scikit-learn's
own example (SVC gamma=0.001 on the raw 8x8 arrays, same split).

Target (Foundation issue): the best classical method reaches >= 0.98 accuracy.

    .venv/bin/python bench/digits.py [CACHE_DIR] [--seed 0] [--out NAME]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _common import Bench, Timer, table

import imgclass
from imgclass.data.samples import write_digits

METHODS = ["pixels+svm", "hog+svm", "hog,pixels+svm", "hog+logreg", "pixels+knn", "lbp+rf"]


def sklearn_example(train, val):
    """scikit-learn's "Recognizing hand-written digits" example on the same split: a function that fits
    and scores it (only that part is timed), returning the accuracy."""
    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    digits = load_digits()
    index = {f"{y}/{i:04d}.png": i for i, y in enumerate(digits.target)}
    tr = np.array([index[train.relpath(i)] for i in range(len(train))])
    va = np.array([index[val.relpath(i)] for i in range(len(val))])
    X = digits.images.reshape(len(digits.images), -1)

    def fit_and_score() -> float:
        clf = SVC(gamma=0.001).fit(X[tr], digits.target[tr])
        return float((clf.predict(X[va]) == digits.target[va]).mean())
    return fit_and_score


def main() -> None:
    b = Bench("digits", __doc__, seed=0)
    b.parser.add_argument("cache", nargs="?", type=Path, default=Path.home() / ".cache" / "imgclass",
                          help="folder the digits PNGs are written to (default ~/.cache/imgclass)")
    args = b.parse()
    folder = write_digits(args.cache / "digits")
    ds = imgclass.load_dataset(folder)
    train, val = ds.split(val=0.5, seed=args.seed)

    # no ours/baseline speed ratio: six methods decoding PNG files against one SVC on in-memory arrays
    with Timer() as t:
        board = imgclass.compare(ds, METHODS, val_split=0.5, seed=args.seed)
    compare_s = t.s
    rows = [{"method": f"imgclass {r['method']}", "accuracy": r["accuracy"], "macro_f1": r["macro_f1"],
             "fit_s": r["fit_s"]} for r in board]
    with Timer() as t:
        acc = sklearn_example(train, val)()
    base_s = t.s
    rows.append({"method": "scikit-learn example SVC(gamma=0.001)", "accuracy": acc, "macro_f1": float("nan"),
                 "fit_s": base_s})

    best = max(r["accuracy"] for r in board)
    print(table(rows, ["method", "accuracy", "macro_f1", "fit_s"],
                f"digits as PNG, 50/50 stratified split seed {args.seed}: {len(train)} train / {len(val)} val"))
    print(f"\ncompare wall time {compare_s:.1f}s")
    b.target("best imgclass accuracy", best, ">=", 0.98)
    b.save({"rows": rows, "best": best, "target": 0.98, "compare_s": compare_s})


if __name__ == "__main__":
    main()
