"""Honest evaluation on CIFAR-10 12k val (the honest-evaluation issue): calibration, corruption
robustness with and without ``--augment corruptions``, and the time to write the report.

    .venv/bin/python bench/honest_eval.py [CIFAR_DIR] [--img-size 128] [--epochs 6] [--max-images 1000] [--only calib,robust,report]
                                        [--out NAME]

1. Trains ``lite0`` twice through ``imgclass.train`` exactly as ``imgclass train DATA --method lite0
   --img-size 128 --epochs 6 [--augment corruptions]`` does (kept in ``bench/runs/`` and reused when
   present). The two models differ only in the augmentation.
2. **Calibration**: ECE on val before and after the temperature stored in the bundle. The
   temperature is fitted on the same val set, so a 2-fold cross-fitted ECE (fit on one half, score on
   the other) is printed as well.
3. **Robustness**: ``imgclass.robustness`` on val for both models (9 corruptions x 5 severities,
   on a seeded sample of ``--max-images`` val images), both tables, the mean corruption accuracy and
   its gain.
4. **Report**: wall time of ``imgclass evaluate MODEL VAL --out DIR`` (prediction + report.html).

Baseline for calibration is the uncalibrated network (T = 1); for robustness, the model trained
without corruptions. Results: ``bench/results/honest_eval.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from _common import HERE, Bench, Timer, table

import imgclass


def _log(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def trained(root: Path, name: str, args, **cfg):
    run = HERE / "runs" / f"cifar_lite0_{args.img_size}px_{args.epochs}ep_{name}"
    if (run / "model" / "model.json").exists():
        _log(f"reusing {run}")
        return imgclass.load_model(run / "model"), run, None
    with Timer() as t:
        model = imgclass.train(root, method="lite0", img_size=args.img_size, out=run, log=_log,
                               train_config={"epochs": args.epochs, **cfg})
    return model, run, t.s


def calibration(model, val) -> dict:
    from imgclass.tasks.calibration import apply_temperature, calibration_bins, fit_temperature

    cal = model.meta_.get("calibration") or {}
    T = cal.get("temperature", 1.0)
    P_cal = model.predict_proba(val)
    P_raw = apply_temperature("multiclass", P_cal, 1.0 / T)  # undo the stored temperature
    y = val.targets
    rng = np.random.default_rng(0)
    half = rng.permutation(len(y)) < len(y) // 2
    cross = []
    for fit, score in ((half, ~half), (~half, half)):
        t = fit_temperature("multiclass", y[fit], P_raw[fit])
        cross.append(calibration_bins("multiclass", y[score], apply_temperature("multiclass", P_raw[score], t))["ece"])
    return {"temperature": T, "accuracy": float((P_cal.argmax(1) == y).mean()),
            "ece_before": calibration_bins("multiclass", y, P_raw)["ece"],
            "ece_after": calibration_bins("multiclass", y, P_cal)["ece"],
            "ece_after_cross_fitted": float(np.mean(cross))}


def main() -> None:
    b = Bench("honest_eval", __doc__, data="cifar10-12k")
    ap = b.parser
    ap.add_argument("--img-size", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--max-images", type=int, default=1000, help="robustness on a seeded sample of val")
    ap.add_argument("--only", default="calib,robust,report")
    args = b.parse()
    root = b.dataset()
    parts = set(args.only.split(","))
    res: dict = {"command": "python bench/honest_eval.py " + " ".join(sys.argv[1:])}
    val = imgclass.load_dataset(root / "val")

    std, std_run, std_s = trained(root, "standard", args)
    res["train_s"] = {"standard": std_s}
    if "calib" in parts:
        c = calibration(std, val)
        res["calibration"] = c
        print(table([{"model": "lite0 (standard augment)", **c}], ["model", "accuracy", "temperature", "ece_before",
                                                                      "ece_after", "ece_after_cross_fitted"],
                    "Calibration on cifar10-12k val"))
        b.target("ECE after calibration", c["ece_after"], "<=", 0.03)
    if "report" in parts:
        exe = str(Path(sys.executable).with_name("imgclass"))
        out = HERE / "runs" / "report_timing"
        cmd = [exe, "evaluate", str(std_run / "model"), str(root / "val"), "--out", str(out)]
        with Timer() as t:
            subprocess.run(cmd, check=True, capture_output=True)
        size = (out / "report.html").stat().st_size
        res["report"] = {"wall_s": t.s, "bytes": size, "command": " ".join(cmd[1:])}
        print(f"\nimgclass evaluate (predict {len(val):,} images + report.html of {size / 1e6:.1f} MB): {t.s:.1f} s")
        b.target("imgclass evaluate wall time", t.s, "<=", 30, ".1f", " s")
    if "robust" in parts:
        cor, _, cor_s = trained(root, "corruptions", args, augment="corruptions")
        res["train_s"]["corruptions"] = cor_s
        rows = []
        for name, model in (("standard", std), ("corruptions", cor)):
            with Timer() as t:
                r = imgclass.robustness(model, val, max_images=args.max_images,
                                        out=HERE / "runs" / f"robustness_{name}")
            res[f"robustness_{name}"] = {**r.to_dict(), "wall_s": t.s}
            trows = [{"corruption": k, **{f"s{s}": a for s, a in zip(r.severities, v)}, "mean": float(np.mean(v))}
                     for k, v in r.table.items()]
            print(table(trows, list(trows[0]), f"\n--augment {name}: clean {r.clean_accuracy:.4f}, mean corruption "
                                               f"accuracy {r.mean_corruption_accuracy:.4f} ({r.relative:.3f} of clean)"))
            rows.append({"train --augment": name, "clean": r.clean_accuracy, "mean_corruption": r.mean_corruption_accuracy,
                         "relative": r.relative, "eval_s": t.s})
        print(table(rows, list(rows[0]), "\nRobustness on cifar10-12k val, lite0"))
        b.target("mean corruption accuracy gain of --augment corruptions",
                 rows[1]["mean_corruption"] - rows[0]["mean_corruption"], ">", 0, "+.4f")
        res["robustness"] = rows
    prev = b.path()
    if prev.exists():  # keep the parts not rerun
        old = json.loads(prev.read_text())
        res = {**{k: v for k, v in old.items() if k not in ("bench", "when", "cpus", "platform")}, **res}
    b.save(res)


if __name__ == "__main__":
    main()
