"""Self-supervised pretraining without labels on CIFAR-10 12k, judged by a linear probe (issue 6).

    .venv/bin/python bench/selfsup.py [CIFAR_DIR] [--method simclr] [--backbone smallcnn] [--epochs N]
                                      [--batch-size N] [--img-size 32] [--view-size N] [--lr X] [--temperature T]
                                      [--seed 0] [--quick] [--out NAME]

1. ``imgclass pretrain CIFAR/train --method simclr --backbone smallcnn ... --out RUN``: the real CLI, timed
   wall clock including start-up, decoding and training; the class folders' labels are ignored.
2. The baseline in the same run: the same architecture with the same seeded random initialisation (the
   weights the pretraining started from), written as a backbone folder.
3. A linear probe for both, through the real CLI: ``imgclass train CIFAR --method RUN+logreg`` (train/ 10,000
   → val/ 2,000; frozen, globally pooled features; standardised logistic regression), embedding cache empty.

``--quick``: 1 epoch of pretraining.

Target: probe accuracy of the pretrained backbone >= the random one + 0.10, pretraining <= 900 s on 2 cores.
The load average before and after is recorded: above ~2 on this 2-core machine other jobs shared the CPU
and the timings are pessimistic.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import Bench, Timer, table

TARGET_GAIN, TARGET_S = 0.10, 900


def _cpu_children() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def _run(cmd: list[str], env: dict) -> tuple[dict, float, float]:
    """Run ``cmd``; its JSON output, wall seconds and CPU seconds (with its worker processes)."""
    cpu0 = _cpu_children()
    with Timer() as t:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"bench: {' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout), t.s, _cpu_children() - cpu0


def _random_backbone(folder: Path, backbone: str, img_size: int | None, seed: int) -> None:
    """The baseline: ``backbone`` with pretrain's seeded initialisation, saved as a backbone folder."""
    from imgclass.learning.selfsup import init_backbone, save_backbone

    net, arch, cfg = init_backbone(backbone, seed)
    save_backbone(folder, net.eval(), arch, img_size or cfg.input_size, cfg.mean, cfg.std, cfg.interpolation,
                  method="random", epochs=0)


def main() -> None:
    b = Bench("selfsup", __doc__, data="cifar10-12k", seed=0, quick={"epochs": 1})
    ap = b.parser
    ap.add_argument("--method", default="simclr")
    ap.add_argument("--backbone", default="smallcnn")
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--batch-size", type=int)
    ap.add_argument("--img-size", type=int, default=32)
    ap.add_argument("--view-size", type=int)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--temperature", type=float)
    ap.add_argument("--keep", help="keep the pretrained run here instead of a temporary folder")
    args = b.parse()
    root = b.dataset()
    exe = str(Path(sys.executable).with_name("imgclass"))
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp, tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "IMGCLASS_CACHE": cache, "IMGCLASS_PROGRESS": "0"}
        run = Path(args.keep) if args.keep else Path(tmp) / f"{args.method}-{args.backbone}"
        cmd = [exe, "pretrain", str(root / "train"), "--method", args.method, "--backbone", args.backbone,
               "--img-size", str(args.img_size), "--seed", str(args.seed), "--out", str(run), "--json"]
        for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size),
                            ("--view-size", args.view_size), ("--lr", args.lr), ("--temperature", args.temperature)):
            if value is not None:
                cmd += [flag, str(value)]
        print("$ " + " ".join(cmd), flush=True)
        res, pretrain_s, pretrain_cpu = _run(cmd, env)
        print(f"  {res['epochs']} epochs on {res['images']} images in {pretrain_s:.0f} s ({pretrain_cpu:.0f} CPU s); loss "
              f"{res['losses'][0]:.3f} -> {res['losses'][-1]:.3f}", flush=True)
        baseline = Path(tmp) / "random-init"
        _random_backbone(baseline, args.backbone, args.img_size, args.seed)
        rows, commands = [], {"pretrain": cmd}
        for label, folder in ((f"{args.backbone} random init (baseline)", baseline),
                              (f"{args.backbone} {args.method}, {res['epochs']} epochs", run)):
            probe = [exe, "train", str(root), "--method", f"{folder}+logreg", "--out", str(Path(tmp) / f"probe-{folder.name}"),
                     "--json"]
            print("$ " + " ".join(probe), flush=True)
            out, secs, _ = _run(probe, env)
            commands[f"probe {folder.name}"] = probe
            rows.append({"backbone": label, "probe_accuracy": out["metrics"]["accuracy"],
                         "probe_macro_f1": out["metrics"]["macro_f1"], "probe_s": secs,
                         "pretrain_s": pretrain_s if folder == run else 0.0})
    load_after = os.getloadavg()
    gain = rows[1]["probe_accuracy"] - rows[0]["probe_accuracy"]
    print(table(rows, ["backbone", "probe_accuracy", "probe_macro_f1", "pretrain_s", "probe_s"],
                "CIFAR-10 12k: self-supervised on train/ (labels unused), linear probe train/ -> val/"))
    ok = gain >= TARGET_GAIN and pretrain_s <= TARGET_S
    contended = max(load_before[0], load_after[0]) > 2.5
    print()
    b.target("probe accuracy gain over random init", gain, ">=", TARGET_GAIN, "+.4f")
    b.target("pretraining wall time", pretrain_s, "<=", TARGET_S, ".0f", " s")
    if contended:
        print(f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after: the CPU was shared, "
              "timings are pessimistic")
    b.save({"rows": rows, "gain": gain, "pretrain_s": pretrain_s, "pretrain_cpu_s": pretrain_cpu, "pass": ok,
                     "losses": res["losses"],
                     "commands": {k: " ".join(v) for k, v in commands.items()},
                     "command": ".venv/bin/python " + " ".join(sys.argv),
                     "load_average": {"before": load_before, "after": load_after}, "contended": contended,
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS")})


if __name__ == "__main__":
    main()
