"""Compression (issue 8, part 3) on CIFAR-10 12k (train 10k -> val 2k): magnitude pruning of a lite0
bundle with a short fine-tune, and distillation of it into ``smallcnn``, next to the plain baselines
of the same run (the unpruned teacher; the same student trained on the labels alone, ``alpha=0``).

    .venv/bin/python bench/compress.py [CIFAR_DIR] [--teacher MODEL] [--teacher-size 64] [--teacher-epochs 3]
                                       [--amount 0.5] [--prune-epochs 1] [--student smallcnn] [--student-epochs 8]
                                       [--out NAME]

The teacher is MODEL, else bench/runs/cifar_lite0_128px_6ep_standard/model (bench/honest_eval.py) when it
exists, else bench/runs/compress_teacher_lite0_<SIZE>px_<N>ep/model, trained there on first use (lite0 at
``--teacher-size`` px for ``--teacher-epochs`` with the engine's defaults: a head epoch, then the last 3
blocks; its time is reported but is not part of the comparison). Sizes are bundle bytes and zlib-compressed bytes; img/s
is ``predict_proba`` on the 2,000 val images (decoding included, ONNX Runtime; best of 2 passes after a warm-up).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from _common import HERE, Bench, table


def _rows(summary: dict, names: list[str]) -> list[dict]:
    """Table rows (numbers formatted here: ``table`` prints small floats with four decimals)."""
    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    out = []
    for name, r in zip(names, summary["rows"]):
        out.append({"model": name, "MB": f(r.get("bytes") and r["bytes"] / 1e6, ".2f"),
                    "gzip MB": f(r.get("gzip_bytes") and r["gzip_bytes"] / 1e6, ".2f"),
                    "non-zero params": f(r.get("nonzero_params"), ","), "sparsity": f(r.get("sparsity"), ".1%"),
                    "img/s": f(r.get("img_per_s"), ".0f"), "val acc": f(r.get("accuracy"), ".4f"),
                    "agree w/ teacher": f(r.get("agreement"), ".1%")})
    return out


def main() -> None:
    b = Bench("compress", __doc__, data="cifar10-12k")
    ap = b.parser
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--teacher-size", type=int, default=96)
    ap.add_argument("--teacher-epochs", type=int, default=4)
    ap.add_argument("--amount", type=float, default=0.5)
    ap.add_argument("--prune-epochs", type=int, default=1)
    ap.add_argument("--student", default="smallcnn")
    ap.add_argument("--student-epochs", type=int, default=6)
    ap.add_argument("--temperature", type=float, default=4.0)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--no-baseline", action="store_true", help="skip the alpha=0 student")
    args = b.parse()
    root = b.dataset()

    import imgclass
    from imgclass.deploy import distill, prune

    def log(m: str) -> None:
        print(f"  {m}", file=sys.stderr, flush=True)

    t_all = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-compress-"))
    teacher = Path(args.teacher) if args.teacher else HERE / "runs" / "cifar_lite0_128px_6ep_standard" / "model"
    teacher_note = str(teacher)
    teacher_s = 0.0
    if not (teacher / "model.json").exists():
        if args.teacher:
            raise SystemExit(f"bench: {teacher} is not a model bundle")
        run = HERE / "runs" / f"compress_teacher_lite0_{args.teacher_size}px_{args.teacher_epochs}ep"
        teacher = run / "model"
        teacher_note = f"lite0 {args.teacher_size} px {args.teacher_epochs} epochs ({run.name})"
        if not (teacher / "model.json").exists():
            print(f"training the teacher: {teacher_note}", file=sys.stderr)
            t0 = time.perf_counter()
            m = imgclass.train(root, method="lite0", img_size=args.teacher_size, out=run, seed=0,
                               train_config={"epochs": args.teacher_epochs}, log=log)
            teacher = Path(m.run_dir) / "model"  # run-2 when a crashed attempt left the folder behind
            teacher_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    pr = prune(teacher, root, amount=args.amount, epochs=args.prune_epochs, out=work / "pruned", log=log)
    prune_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    di = distill(teacher, root, student=args.student, temperature=args.temperature, alpha=args.alpha,
                 epochs=args.student_epochs, out=work / "student", log=log)
    distill_s = time.perf_counter() - t0
    base = None
    if not args.no_baseline:
        t0 = time.perf_counter()
        base = distill(teacher, root, student=args.student, alpha=0.0, epochs=args.student_epochs,
                       out=work / "baseline", log=log)
        base_s = time.perf_counter() - t0

    ep = f"{args.prune_epochs} epoch{'s' if args.prune_epochs != 1 else ''}"
    prune_rows = _rows(pr.summary, [f"{pr.before['method']} teacher (original)", f"pruned {args.amount:.0%}, no fine-tuning",
                                    f"pruned {args.amount:.0%} + {ep} fine-tuning"])
    print(table(prune_rows, ["model", "MB", "gzip MB", "non-zero params", "sparsity", "img/s", "val acc"],
                f"prune {args.amount:.0%} global unstructured + {args.prune_epochs} epoch fine-tune "
                f"({pr.summary['val_images']} val images; teacher: {teacher_note}); {prune_s:.0f} s"))
    print()
    drows = _rows(di.summary, [f"{di.before['method']} teacher", f"{args.student} distilled (T={args.temperature:g}, "
                                                f"alpha={args.alpha:g})"])
    if base is not None:
        drows += _rows(base.summary, ["", f"{args.student} on labels only (alpha=0, baseline)"])[1:]
    print(table(drows, ["model", "MB", "gzip MB", "non-zero params", "img/s", "val acc", "agree w/ teacher"],
                f"distill into {args.student}, {args.student_epochs} epochs; {distill_s:.0f} s"
                + (f" (baseline {base_s:.0f} s)" if base is not None else "")))
    total = time.perf_counter() - t_all
    print(f"\ntotal {total:.0f} s (teacher {teacher_s:.0f} s); pruned gzip size {pr.summary['change']['gzip_bytes']:.2f}x, "
          f"accuracy {pr.summary['change']['accuracy_points']:+.1f} points; student {di.summary['change']['bytes']:.2f}x "
          f"the teacher's size, {di.summary['change']['img_per_s']:.2f}x its speed, accuracy "
          f"{di.summary['change']['accuracy_points']:+.1f} points")
    strip = ("rows", "history")
    b.save({"teacher": teacher_note, "prune": {k: v for k, v in pr.summary.items() if k not in strip},
                      "prune_rows": prune_rows, "distill": {k: v for k, v in di.summary.items() if k not in strip},
                      "distill_rows": drows,
                      "baseline": {k: v for k, v in base.summary.items() if k not in strip} if base else None,
                      "seconds": {"teacher": teacher_s, "prune": prune_s, "distill": distill_s, "total": total},
                      "command": ".venv/bin/python " + " ".join(sys.argv)})
    print(f"runs kept in {work}")


if __name__ == "__main__":
    main()
