"""Grad-CAM sanity check (the honest-evaluation issue): does the heatmap point at the evidence?

A generated dataset where the class is decided only by the colour of a small square at a random
position, on grey noise. A ``smallcnn`` is trained on it through ``imgclass.train``; then every
test image is explained with ``imgclass.explain`` and we count how often the heatmap's peak falls
inside the square. The baseline is a random point (the square's share of the image area).

    .venv/bin/python bench/gradcam_sanity.py [--size 64] [--square 12] [--per-class 200] [--epochs 12] [--quick] [--out NAME]

``--quick``: 20 training and 2 test images per class, 2 epochs.

Prints a table per method and saves ``bench/results/gradcam_sanity.json`` and a few example PNGs
under ``bench/results/gradcam_sanity/``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import Bench, Timer, table
from PIL import Image

import imgclass

COLOURS = {"red": (220, 40, 40), "green": (40, 190, 40), "blue": (40, 60, 220)}


def make_images(root: Path, per_class: int, size: int, square: int, seed: int) -> dict[str, tuple[int, int]]:
    """``root/<colour>/<i>.png``: grey noise with one ``square``-pixel square of the class colour;
    returns the square's top-left corner per file."""
    rng = np.random.default_rng(seed)
    boxes = {}
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            a = rng.integers(40, 216, (size, size, 1)).repeat(3, axis=2).astype(np.uint8)
            y, x = (int(v) for v in rng.integers(0, size - square + 1, 2))
            a[y:y + square, x:x + square] = rgb
            path = root / name / f"{i:04d}.png"
            Image.fromarray(a).save(path)
            boxes[str(path)] = (y, x)
    return boxes


def main() -> None:
    b = Bench("gradcam_sanity", __doc__, quick={"per_class": 20, "test_per_class": 2, "epochs": 2})
    ap = b.parser
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--square", type=int, default=12)
    ap.add_argument("--per-class", type=int, default=200, help="training images per class")
    ap.add_argument("--test-per-class", type=int, default=50)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--methods", default="gradcam,gradcam++,integrated-gradients,occlusion")
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = b.parse()
    name = "gradcam_sanity" + (f"_{args.tag}" if args.tag else "")
    out_dir = b.path(name, suffix="")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_images(tmp / "train", args.per_class, args.size, args.square, seed=0)
        test_boxes = make_images(tmp / "test", args.test_per_class, args.size, args.square, seed=1)
        with Timer() as t_train:
            model = imgclass.train(tmp / "train", method="smallcnn", img_size=args.size, out=tmp / "run",
                                   train_config={"epochs": args.epochs},
                                   log=lambda m: print(f"  {m}", file=sys.stderr, flush=True))
        files = sorted(test_boxes)
        ev = imgclass.evaluate(model, tmp / "test")
        acc = ev.metrics["accuracy"]
        chance = args.square ** 2 / args.size ** 2
        rows = []
        for method in args.methods.split(","):
            hits, t0 = 0, time.perf_counter()
            for k, f in enumerate(files):
                exp = imgclass.explain(model, f, method=method)[0]
                r, c = exp.peak
                y, x = test_boxes[f]
                hits += (y <= r < y + args.square) and (x <= c < x + args.square)
                if k < 3:
                    exp.save(out_dir / f"{method}-{k}.png")
            wall = time.perf_counter() - t0
            rows.append({"method": method, "peak_in_square": hits / len(files), "random_point": chance,
                         "ratio_vs_random": hits / len(files) / chance, "ms_per_image": 1000 * wall / len(files)})
            print(f"  {method}: {hits}/{len(files)} peaks in the square", file=sys.stderr, flush=True)
    print(f"smallcnn trained in {t_train.s:.0f} s; test accuracy {acc:.4f} on {len(files)} images "
          f"({args.size} px, {args.square} px squares)")
    print(table(rows, list(rows[0]), "heatmap peak inside the deciding square"))
    gradcam = next((r for r in rows if r["method"] == "gradcam"), None)
    if gradcam:
        b.target("gradcam peak in the square", gradcam["peak_in_square"], ">=", 0.90)
    b.save({"rows": rows, "test_accuracy": acc, "train_s": t_train.s, "args": vars(args),
            "command": "python bench/gradcam_sanity.py " + " ".join(sys.argv[1:])}, name)


if __name__ == "__main__":
    main()
