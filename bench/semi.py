"""Semi-supervised learning on CIFAR-10 12k (the few-labels issue): 25 labels per class.

250 labelled training images (25 per class, seeded), the other 9,750 training images as the
unlabelled pool (their labels only score the pseudo-labels), validated on the 2,000 val images.
The baseline in the same run is the same method trained on the 250 labels alone.

    .venv/bin/python bench/semi.py [CIFAR_DIR] [--method lite0+logreg] [--per-class 25]
        [--semi self-training,label-spreading,balanced-self-training] [--seed 0] [--out NAME]
    .venv/bin/python bench/semi.py --method lite0 --semi fixmatch --img-size 64 \
        --train-config '{"epochs": 100, "unlabeled_ratio": 4}'

Each row goes through ``imgclass.train(..., unlabeled=..., semi=...)`` exactly as
``imgclass train LABELLED.csv --unlabeled POOL.csv --semi S`` does. Results: ``bench/results/semi.json``.
``--pseudo-threshold`` goes to every method; for ``balanced-self-training`` it is the share of the pool
pseudo-labelled in the last round (default 0.6), not a probability: leave it out to get each default.
"""

from __future__ import annotations

import csv
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import Bench, Timer, table

import imgclass


def _write(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows(rows)
    return path


def main() -> None:
    b = Bench("semi", __doc__, data="cifar10-12k", seed=0)
    ap = b.parser
    ap.add_argument("--method", default="lite0+logreg")
    ap.add_argument("--per-class", type=int, default=25)
    ap.add_argument("--semi", default="self-training,label-spreading,balanced-self-training")
    ap.add_argument("--pseudo-threshold", type=float, default=None)
    ap.add_argument("--img-size", type=int, default=None, help="deep methods: input size")
    ap.add_argument("--train-config", default=None,
                    help='deep methods: TrainConfig fields as JSON, e.g. \'{"epochs": 40, "unlabeled_ratio": 4}\'')
    args = b.parse()
    deep = {}
    if args.img_size:
        deep["img_size"] = args.img_size
    if args.train_config:
        deep["train_config"] = json.loads(args.train_config)
    root = b.dataset()
    rng = np.random.default_rng(args.seed)
    labelled, pool = [], []
    for cdir in sorted((root / "train").iterdir()):
        files = sorted(str(f) for f in cdir.glob("*.jpg"))
        pick = set(rng.choice(len(files), args.per_class, replace=False).tolist())
        labelled += [(f, cdir.name) for i, f in enumerate(files) if i in pick]
        pool += [(f, cdir.name) for i, f in enumerate(files) if i not in pick]
    val = imgclass.load_dataset(root / "val")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lab_csv = _write(Path(tmp) / "labelled.csv", labelled)
        pool_csv = _write(Path(tmp) / "pool.csv", pool)  # labels here only score the pseudo-labels
        for semi in [None, *args.semi.split(",")]:
            with Timer() as t:
                model = imgclass.train(lab_csv, method=args.method, val=val, seed=args.seed,
                                       unlabeled=pool_csv if semi else None, semi=semi,
                                       pseudo_threshold=args.pseudo_threshold if semi else None, **deep,
                                       log=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
            acc = model.meta_["metrics"]["val"]["accuracy"]
            rep = dict(model.meta_.get("semi") or {})
            if rep.get("method") == "fixmatch":  # per-epoch counts: the last epoch's pseudo-labels and accuracy
                last = (rep.get("rounds") or [{}])[-1]
                rep["pseudo_labels"], rep["pseudo_accuracy"] = last.get("added", 0), last.get("accuracy")
            rows.append({"training": f"{len(labelled)} labels" + (f" + {len(pool)} unlabelled, {semi}" if semi else " only"),
                         "val_accuracy": acc, "pseudo_labels": rep.get("pseudo_labels", 0),
                         "pseudo_accuracy": rep.get("pseudo_accuracy") if rep.get("pseudo_accuracy") is not None
                         else float("nan"), "wall_s": t.s})
    base = rows[0]["val_accuracy"]
    for r in rows:
        r["gain_points"] = 100 * (r["val_accuracy"] - base)
    print(table(rows, list(rows[0]), f"CIFAR-10 12k, {args.method}, {args.per_class} labels per class"))
    b.target("best semi-supervised gain over the labels alone", max(r["gain_points"] for r in rows[1:]), ">=", 5,
             ".2f", " points")
    b.save({"rows": rows, "method": args.method, "per_class": args.per_class,
            "command": "python bench/semi.py " + " ".join(sys.argv[1:])},
           "semi" if args.method == "lite0+logreg" else f"semi_{args.method.replace('+', '_')}")


if __name__ == "__main__":
    main()
