"""imgclass ``hog+svm`` vs a plain scikit-image + scikit-learn script, same features and classifier,
same data, in one run (CIFAR-10 12k: train -> val).

The plain script is what a careful user writes by hand: walk the folders, decode with Pillow, HOG with
scikit-image, StandardScaler + RBF SVC with sigmoid calibration (3 folds). It runs twice: a plain
sequential loop, and with joblib over all cores for feature extraction. The ratio is imgclass's
wall time over the *faster* plain variant (goal: <= 1.2).

    .venv/bin/python bench/classical_vs_sklearn.py [CIFAR_DIR] [--out NAME]
"""

from __future__ import annotations

import os

import numpy as np
from _common import Bench, Timer, table


def plain_files(root):
    out = []
    classes = sorted(d for d in os.listdir(os.path.join(root, "train")) if not d.startswith("."))
    for split in ("train", "val"):
        for ci, c in enumerate(classes):
            folder = os.path.join(root, split, c)
            for f in sorted(os.listdir(folder)):
                if f.lower().endswith((".jpg", ".jpeg", ".png")):
                    out.append((split, os.path.join(folder, f), ci))
    return out


def plain_hog(path, p):
    from PIL import Image
    from skimage.feature import hog

    img = np.asarray(Image.open(path).convert("RGB").resize((p["size"], p["size"]), Image.Resampling.BILINEAR))
    return hog(img, orientations=p["orientations"], pixels_per_cell=(p["pixels_per_cell"],) * 2,
               cells_per_block=(p["cells_per_block"],) * 2, block_norm="L2-Hys", channel_axis=-1)


def plain_hog_chunk(paths, p):
    return [plain_hog(x, p) for x in paths]


def plain_run(root, p, parallel: bool):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    files = plain_files(root)
    paths = [f for _, f, _ in files]
    if parallel:
        from joblib import Parallel, delayed

        chunks = [paths[i:i + 256] for i in range(0, len(paths), 256)]
        feats = [f for block in Parallel(n_jobs=os.cpu_count())(delayed(plain_hog_chunk)(c, p) for c in chunks)
                 for f in block]
    else:
        feats = [plain_hog(x, p) for x in paths]
    X = np.asarray(feats, dtype=np.float32)
    y = np.array([c for _, _, c in files])
    tr = np.array([s == "train" for s, _, _ in files])
    clf = make_pipeline(StandardScaler(), CalibratedClassifierCV(SVC(C=10.0, gamma="scale", cache_size=1000), cv=3,
                                                                 method="sigmoid", ensemble=False))
    clf.fit(X[tr], y[tr])
    return float((clf.predict_proba(X[~tr]).argmax(1) == y[~tr]).mean())


def imgclass_run(root):
    import imgclass

    ds = imgclass.load_dataset(root)
    train, val = ds.split()
    model = imgclass.train(train, "hog+svm", val=val)
    return model, float(model.meta_["metrics"]["val"]["accuracy"])


def main() -> None:
    b = Bench("classical_vs_sklearn", __doc__, data="cifar10-12k")
    b.parse()
    root = str(b.dataset())
    for _, path, _ in plain_files(root):  # warm the page cache so the first contestant is not penalised
        with open(path, "rb") as f:
            f.read()
    (model, acc_i), ti = b.timed("ours", imgclass_run, root, what="imgclass hog+svm")
    params = model.config()["feature_params"]["hog"]
    with Timer() as tp:
        acc_p = plain_run(root, params, parallel=False)
    with Timer() as tj:
        acc_j = plain_run(root, params, parallel=True)
    best_plain = min(tp.s, tj.s)
    b.record("baseline", seconds=best_plain, what="fastest plain skimage+sklearn script")
    rows = [
        {"run": "imgclass hog+svm (API: load_dataset, split, train)", "accuracy": acc_i, "seconds": ti,
         "ratio": ti / best_plain},
        {"run": "plain skimage+sklearn, sequential", "accuracy": acc_p, "seconds": tp.s, "ratio": tp.s / best_plain},
        {"run": "plain skimage+sklearn, joblib features", "accuracy": acc_j, "seconds": tj.s,
         "ratio": tj.s / best_plain},
    ]
    print(table(rows, ["run", "accuracy", "seconds", "ratio"],
                f"CIFAR-10 12k, hog+svm (HOG {params}), train 10,000 -> val 2,000"))
    ratio = ti / best_plain
    print()
    b.target("imgclass / fastest plain script wall time", ratio, "<=", 1.2, ".2f", "x")
    b.save({"rows": rows, "ratio": ratio, "hog_params": params})


if __name__ == "__main__":
    main()
