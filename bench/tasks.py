"""The four kinds of classification on real data (the four-kinds issue's acceptance numbers).

    .venv/bin/python bench/tasks.py miml        # multi-label, lite0 fine-tuned: macro-F1, mAP, tuned vs 0.5
    .venv/bin/python bench/tasks.py omniglot    # hierarchical alphabet > character, flat vs local, fallback
    .venv/bin/python bench/tasks.py taxonomy    # cifar10-12k with bench/cifar10_taxonomy.yaml, flat vs local
    .venv/bin/python bench/tasks.py binary      # cat vs dog from cifar10-12k, lite0: ROC AUC, precision=0.95
    .venv/bin/python bench/tasks.py imbalance   # 6 of 10 classes cut to 10%: balance none / weights / sampler

Each sub-benchmark goes through ``imgclass.train`` exactly as ``imgclass train`` does (the CLI
equivalent is printed), prints a table and saves ``bench/results/tasks_<name>.json``. Options after
the name are ``--method M`` and, for deep methods, ``--epochs N``, ``--unfreeze N``, ``--img-size N``;
``--out NAME`` replaces the results file's name.
"""

from __future__ import annotations

import csv
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import HERE, Bench, Timer, dataset_path, table

import imgclass
from imgclass.tasks import metrics

CIFAR_VEHICLES = ("airplane", "automobile", "ship", "truck")


def _log(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def _deep_config(args) -> dict:
    cfg = {"epochs": args.epochs, "unfreeze": args.unfreeze, "batch_size": 64, "lr": 2e-3,
           "hflip": False if args.no_hflip else None, "degrees": args.degrees, "scale": args.scale,
           "ema": args.ema}
    return {k: v for k, v in cfg.items() if v is not None}


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def _cifar_rows(root: Path, keep=None, cut: dict | None = None, seed: int = 0) -> list[dict]:
    """``path,label,split`` rows of cifar10-12k (train -> train, val -> val), optionally only classes
    in ``keep`` and with training images of the classes in ``cut`` reduced to that fraction."""
    rng = np.random.default_rng(seed)
    rows = []
    for split in ("train", "val"):
        for cdir in sorted((root / split).iterdir()):
            if keep and cdir.name not in keep:
                continue
            files = sorted(cdir.glob("*.jpg"))
            if split == "train" and cut and cdir.name in cut:
                files = sorted(rng.choice(files, int(round(len(files) * cut[cdir.name])), replace=False))
            rows += [{"path": str(f), "label": cdir.name, "split": split} for f in files]
    return rows


def _train(data, method, args, out, **kw):
    from imgclass.models import parse_spec

    deep = parse_spec(method).kind == "deep"
    extra = {"train_config": _deep_config(args), "img_size": args.img_size} if deep else {}
    with Timer() as t:
        model = imgclass.train(data, method=method, out=out, log=_log, **extra, **kw)
    return model, t.s


def _val_eval(model, run: Path):
    import json

    return json.loads((run / "metrics.json").read_text())["metrics"]


# ----------------------------------------------------------------------------- multi-label
def bench_miml(args) -> dict:
    root = dataset_path("miml-scenes", args.data)
    method = args.method or "lite0"
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        model, wall = _train(root / "labels_onehot.csv", method, args, run, val_split=0.2, seed=0)
        m = _val_eval(model, run)
        # honest check of the per-class thresholds: tune on one half of validation, score the other (and swap)
        ev = imgclass.evaluate(run / "model", root / "labels_onehot.csv")
        ds = imgclass.load_dataset(root / "labels_onehot.csv")
        val_idx = ds.load_split(run / "split.json")["val"]
        P = model.predict_proba(ds.subset(val_idx))
        Y = ds.targets[val_idx]
        halves = np.array_split(np.random.default_rng(0).permutation(len(Y)), 2)
        from imgclass.tasks.thresholds import tune_multilabel_thresholds

        cross = []
        for a, b in (halves, halves[::-1]):
            t = tune_multilabel_thresholds(Y[a], P[a])
            cross.append(metrics("multilabel", Y[b], P[b], ds.classes, thresholds=t)["macro_f1"])
        del ev
    rows = [{"thresholds": "per class, tuned on val (stored in the bundle)", "macro_f1": m["macro_f1"],
             "micro_f1": m["micro_f1"], "mAP": m["mAP"], "subset_acc": m["subset_accuracy"]},
            {"thresholds": "one global 0.5", "macro_f1": m["at_0.5"]["macro_f1"], "micro_f1": m["at_0.5"]["micro_f1"],
             "mAP": m["mAP"], "subset_acc": m["at_0.5"]["subset_accuracy"]},
            {"thresholds": "per class, tuned on half of val, scored on the other half", "macro_f1": float(np.mean(cross)),
             "micro_f1": float("nan"), "mAP": m["mAP"], "subset_acc": float("nan")}]
    print(table(rows, ["thresholds", "macro_f1", "micro_f1", "mAP", "subset_acc"],
                f"MIML scenes, {method}, 80/20 split (iterative stratification, seed 0), {wall:.0f} s"))
    print("per-class thresholds: " + ", ".join(f"{c} {t:.2f}" for c, t in zip(model.classes_, m["thresholds"])))
    return {"rows": rows, "wall_s": wall, "method": method, "thresholds": m["thresholds"],
            "per_class": m["per_class"]}


# ----------------------------------------------------------------------------- hierarchical
def _hier_row(label, strategy, h, wall):
    at = h["fallback_at"]
    return {"data": label, "strategy": strategy, "level1_acc": h["level_accuracy"][0],
            "leaf_acc": h["leaf_accuracy"], "hier_f1": h["hierarchical_f1"],
            "severity": h["mistake_severity"], "p0.5_precision": at["precision"],
            "p0.5_coverage": at["coverage"], "p0.5_answered": at["answered"], "wall_s": wall}


def _hier_rows(data, method, args, split_kw, label, taxonomy=None):
    rows = []
    for strategy in args.strategies.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(args.keep) / strategy if args.keep else Path(tmp) / "run"
            if (run / "model").exists():  # kept by an earlier run with the same --keep: evaluate it again
                model, wall = imgclass.load_model(run / "model"), float("nan")
                _log(f"{run}: kept from an earlier run, not retrained")
            else:
                model, wall = _train(data, method, args, run, hierarchy=strategy, min_confidence=0.5,
                                     taxonomy=taxonomy, **split_kw)
            rows.append(_hier_row(label, strategy, _val_eval(model, run)["hierarchy"], wall))
            if args.tta:  # the same bundle and validation split, probabilities averaged over test-time views
                ds = imgclass.load_dataset(data, taxonomy=taxonomy)
                val = ds.subset(ds.load_split(run / "split.json")["val"])
            for mode in args.tta.split(",") if args.tta else []:
                with Timer() as t:
                    ev = imgclass.evaluate(run / "model", val, tta=mode)
                rows.append(_hier_row(label, f"{strategy}, --tta {mode}", ev.metrics["hierarchy"], t.s))
    return rows


def bench_omniglot(args) -> dict:
    root = dataset_path("omniglot-8", args.data)
    method = args.method or "hog+logreg"
    rows = _hier_rows(root, method, args, {"val_split": 0.25, "seed": 0}, "omniglot-8")
    print(table(rows, list(rows[0]), f"Omniglot-8 alphabet > character, {method}, 15 train / 5 val per character, "
                                     "fallback at p = 0.5"))
    return {"rows": rows, "method": method}


def bench_taxonomy(args) -> dict:
    root = dataset_path("cifar10-12k", args.data)
    method = args.method or "lite0+logreg"
    rows = _hier_rows(root, method, args, {}, "cifar10-12k", taxonomy=HERE / "cifar10_taxonomy.yaml")
    print(table(rows, list(rows[0]), f"CIFAR-10 12k with vehicle/animal taxonomy, {method}"))
    return {"rows": rows, "method": method}


# ----------------------------------------------------------------------------- binary
def bench_binary(args) -> dict:
    root = dataset_path("cifar10-12k", args.data)
    method = args.method or "lite0"
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = _write_csv(Path(tmp) / "catdog.csv", _cifar_rows(root, keep=("cat", "dog")))
        run = Path(tmp) / "run"
        model, wall = _train(csv_path, method, args, run, positive="cat", threshold_for="precision=0.95")
        m = _val_eval(model, run)
        tuned = model.decision_.tuned_on
    rows = [{"decision": f"threshold {m['threshold']:.4f} tuned for precision=0.95 (positive: cat)",
             "precision": m["precision"], "recall": m["recall"], "roc_auc": m["roc_auc"],
             "avg_precision": m["average_precision"], "accuracy": m["accuracy"]}]
    print(table(rows, list(rows[0]), f"cifar10-12k cat vs dog, {method}, train 2,000 -> val 400, {wall:.0f} s"))
    return {"rows": rows, "wall_s": wall, "method": method, "tuned_on": tuned}


# ----------------------------------------------------------------------------- imbalance
def bench_imbalance(args) -> dict:
    root = dataset_path("cifar10-12k", args.data)
    method = args.method or "lite0+logreg"
    cut = {c: 0.1 for c in ("bird", "cat", "deer", "dog", "frog", "horse")}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        csv_path = _write_csv(Path(tmp) / "imbalanced.csv", _cifar_rows(root, cut=cut))
        for balance in ("none", "weights", "sampler"):
            run = Path(tmp) / f"run-{balance}"
            model, wall = _train(csv_path, method, args, run, balance=balance)
            m = _val_eval(model, run)
            minority = [r["recall"] for r in m["per_class"] if r["class"] in cut]
            rows.append({"balance": balance, "balanced_acc": m["balanced_accuracy"], "accuracy": m["accuracy"],
                         "macro_f1": m["macro_f1"], "minority_recall": float(np.mean(minority)), "wall_s": wall})
    base = rows[0]["balanced_acc"]
    for r in rows:
        r["vs_none_points"] = 100 * (r["balanced_acc"] - base)
    print(table(rows, list(rows[0]), f"cifar10-12k, 6 classes cut to 10% of their training images, {method}; "
                                     "val = the full balanced 2,000"))
    return {"rows": rows, "method": method}


BENCHES = {"miml": bench_miml, "omniglot": bench_omniglot, "taxonomy": bench_taxonomy, "binary": bench_binary,
           "imbalance": bench_imbalance}


def main() -> None:
    b = Bench("tasks", __doc__)
    ap = b.parser
    ap.add_argument("name", choices=list(BENCHES))
    ap.add_argument("--data", default=None, help="dataset folder (default ../shared/datasets/...)")
    ap.add_argument("--method", default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--unfreeze", default=None, help="fine-tune the last N blocks, or all")
    ap.add_argument("--img-size", type=int, default=None)
    ap.add_argument("--strategies", default="flat,local", help="hierarchical strategies to run")
    ap.add_argument("--no-hflip", action="store_true", help="no flip augmentation / TTA (handwriting)")
    ap.add_argument("--degrees", type=float, default=None, help="random rotation (± degrees)")
    ap.add_argument("--scale", type=float, default=None, help="random zoom (1 ± scale)")
    ap.add_argument("--ema", type=float, default=None, help="EMA decay of the weights per step")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    ap.add_argument("--tta", default=None, help="hierarchical: also evaluate with these --tta modes (comma list)")
    ap.add_argument("--keep", default=None, help="keep the hierarchical runs (bundle, split) in KEEP/<strategy>; a run already "
                    "there is evaluated again instead of retrained")
    args = b.parse()
    t0 = time.perf_counter()
    res = BENCHES[args.name](args)
    res["command"] = "python bench/tasks.py " + " ".join(sys.argv[1:])
    res["total_s"] = time.perf_counter() - t0
    suffix = "_" + args.method.replace("+", "-").replace("@", "-") if args.method else ""
    b.save(res, f"tasks_{args.name}{suffix}{'_' + args.tag if args.tag else ''}")


if __name__ == "__main__":
    main()
