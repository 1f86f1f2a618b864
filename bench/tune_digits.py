"""``imgclass tune`` on scikit-learn's digits (as PNG files, stratified 50/50 split, seed 0).

1. Search: 10 trials of METHOD (default ``lbp+rf``, whose defaults are far from its best; trial 0 = its defaults); the table compares the defaults with the best
   parameters on the same split, both as scored in the study and retrained through ``imgclass.train``
   (``params=best.json``), next to a plain scikit-learn baseline of the same classifier with its own
   defaults on the raw 8x8 arrays.
2. Kill and resume: ``imgclass tune --trials 10`` runs in a subprocess that gets SIGKILL in the middle
   of a trial once the SQLite study holds 5 finished trials; the same command is then run again, and it
   must run exactly the missing trials (10 minus those finished before the kill), the interrupted one
   being recorded as failed.

    .venv/bin/python bench/tune_digits.py [CACHE_DIR] [METHOD] [--out NAME]
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import Bench, Timer, table

import imgclass
from imgclass import api
from imgclass.data.samples import write_digits

TRIALS = 10
KILL_AFTER = 5


def _count(db: Path, states: str = "'COMPLETE', 'PRUNED'") -> int:
    """Trials in these states in an Optuna SQLite study (0 while the file is being created)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            return con.execute(f"SELECT COUNT(*) FROM trials WHERE state IN ({states})").fetchone()[0]
    except sqlite3.Error:
        return 0


def kill_and_resume(folder: Path, method: str, out: Path) -> dict:
    cmd = [sys.executable, "-m", "imgclass", "tune", str(folder), "--method", method, "--trials", str(TRIALS),
           "--val-split", "0.5", "--out", str(out), "--json"]
    env = {**os.environ, "IMGCLASS_PROGRESS": "0"}
    print("$ " + " ".join(cmd) + f"   # SIGKILL once {KILL_AFTER} trials have finished", flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    db = out / "study.db"
    while proc.poll() is None and (_count(db) < KILL_AFTER or not _count(db, "'RUNNING'")):
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = _count(db)
    with Timer() as t:
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout)
    return {"killed": killed, "finished_before": before, "new_trials": res["new_trials"], "final_trials": res["trials"],
            "failed": res["failed"], "expected_new": TRIALS - before, "resume_s": t.s}


def sklearn_baseline(method: str, train, val) -> float | None:
    """The same scikit-learn classifier with scikit-learn's own defaults on the raw 8x8 arrays."""
    from sklearn.datasets import load_digits
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import SVC

    clf = {"knn": KNeighborsClassifier(), "svm": SVC(), "rf": RandomForestClassifier(random_state=0),
           "logreg": LogisticRegression(max_iter=5000)}.get(method.rpartition("+")[2])
    if clf is None:
        return None
    digits = load_digits()
    index = {f"{y}/{i:04d}.png": i for i, y in enumerate(digits.target)}
    tr = np.array([index[train.relpath(i)] for i in range(len(train))])
    va = np.array([index[val.relpath(i)] for i in range(len(val))])
    X = digits.images.reshape(len(digits.images), -1)
    clf.fit(X[tr], digits.target[tr])
    return float((clf.predict(X[va]) == digits.target[va]).mean())


def main() -> None:
    b = Bench("tune_digits", __doc__)
    b.parser.add_argument("cache", nargs="?", type=Path, default=Path.home() / ".cache" / "imgclass",
                          help="folder the digits PNGs are written to (default ~/.cache/imgclass)")
    b.parser.add_argument("method", nargs="?", default="lbp+rf", help="method to tune (default lbp+rf)")
    args = b.parse()
    cache, method = args.cache, args.method
    folder = write_digits(cache / "digits")
    ds = imgclass.load_dataset(folder)
    train, val = ds.split(val=0.5, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with Timer() as t:
            res = api.tune(ds, method, TRIALS, out=tmp / "study", val_split=0.5, seed=0)
        # the study's scores reproduced by ordinary training runs on the same split
        default_model = api.train(ds, method, val_split=0.5, seed=0)
        best_model = api.train(ds, val_split=0.5, seed=0, params=tmp / "study" / "best.json")
        acc = {"default": default_model.meta_["metrics"]["val"]["accuracy"],
               "best": best_model.meta_["metrics"]["val"]["accuracy"]}
        plain = sklearn_baseline(method, train, val)
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in res.params.items())
        rows = [{"setting": f"{method} defaults (trial 0)", "study accuracy": res.default_value,
                 "retrained accuracy": acc["default"], "errors": round((1 - acc["default"]) * len(val))},
                {"setting": f"{method} best (trial {res.best_trial}): {params}", "study accuracy": res.value,
                 "retrained accuracy": acc["best"], "errors": round((1 - acc["best"]) * len(val))}]
        if plain is not None:
            rows.append({"setting": f"scikit-learn {method.rpartition('+')[2]} defaults on raw 8x8", "study accuracy": "",
                         "retrained accuracy": plain, "errors": round((1 - plain) * len(val))})
        print(table(rows, ["setting", "study accuracy", "retrained accuracy", "errors"],
                    f"digits as PNG, 50/50 stratified split seed 0: {len(train)} train / {len(val)} val; "
                    f"{TRIALS} trials in {t.s:.1f}s"))
        diff = res.value - res.default_value
        err_ratio = (1 - res.value) / max(1 - res.default_value, 1e-9)
        print(f"\nbest - default = {diff:+.4f} accuracy; validation errors x{err_ratio:.2f} "
              f"({round((1 - res.default_value) * len(val))} -> {round((1 - res.value) * len(val))})")

        kr = kill_and_resume(folder, method, tmp / "killed")
    ok = kr["killed"] and kr["new_trials"] == kr["expected_new"] and kr["final_trials"] == TRIALS
    print()
    b.check("kill/resume runs exactly the missing trials", ok,
            f"SIGKILL during a trial with {kr['finished_before']} of {TRIALS} trials finished; the rerun ran "
            f"{kr['new_trials']} new trials (expected {kr['expected_new']}) in {kr['resume_s']:.1f}s; the study now "
            f"holds {kr['final_trials']} finished and {kr['failed']} failed trial(s) (interrupted by the kill)")
    b.save({"method": method, "trials": TRIALS, "default": res.default_value, "best": res.value,
            "best_params": res.params, "best_trial": res.best_trial, "retrained": acc,
            "sklearn_defaults": plain, "tune_s": t.s, "kill_resume": kr, "pass": ok})


if __name__ == "__main__":
    main()
