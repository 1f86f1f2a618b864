"""Deep training on CIFAR-10 12k (train 10k -> val 2k) through the real CLI, next to a plain torch
training loop on the same network and tensors (per-epoch throughput ratio).

Targets (Deep-learning issue): ``smallcnn`` from scratch >= 0.70 in <= 10 min;
``lite0`` fine-tuning >= 0.90 in <= 20 min.

    .venv/bin/python bench/cifar_deep.py [--out NAME] [--quick] [CIFAR_DIR] [METHOD] [extra imgclass train options...]
    e.g. .venv/bin/python bench/cifar_deep.py ../shared/datasets/cifar10-12k smallcnn --epochs 12

The bench's own options go before CIFAR_DIR; everything after METHOD goes to ``imgclass train``.
``--quick`` trains 1 epoch (unless the options say otherwise) and times 5 plain-loop batches.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import Bench, Timer, table


def plain_torch_epoch_ips(root: Path, method: str, batch_size: int, img_size: int, steps: int = 40) -> float:
    """Images/s of a plain torch loop (same network, SGD step, flip augmentation) on decoded tensors."""
    import torch
    from PIL import Image

    from imgclass.features.backbones import create_backbone

    torch.set_num_threads(2)
    files = sorted((root / "train").rglob("*.jpg"))[: batch_size * steps]
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB").resize((img_size, img_size)))
                                   for f in files])).permute(0, 3, 1, 2).float().div(255)
    y = torch.randint(0, 10, (len(x),))
    net = create_backbone(method.split("@")[0], pretrained=None, num_classes=10).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    t0 = time.perf_counter()
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size]
        xb = torch.where(torch.rand(len(xb), 1, 1, 1) < 0.5, xb.flip(3), xb).contiguous(memory_format=torch.channels_last)
        loss = torch.nn.functional.cross_entropy(net(xb), y[s:s + batch_size])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return len(x) / (time.perf_counter() - t0)


def main() -> None:
    b = Bench("cifar_deep", __doc__, data="cifar10-12k", quick={"steps": 5})
    b.parser.add_argument("--steps", type=int, default=40, help="batches timed in the plain torch loop")
    b.parser.add_argument("method", nargs="?", default="smallcnn")
    b.parser.add_argument("extra", nargs=argparse.REMAINDER, help="options for imgclass train")
    args = b.parse()
    root, method, extra = b.dataset(), args.method, args.extra
    if args.quick and "--epochs" not in extra:
        extra = [*extra, "--epochs", "1"]
    exe = str(Path(sys.executable).with_name("imgclass"))
    with tempfile.TemporaryDirectory() as runs:
        cmd = [exe, "train", str(root), "--method", method, "--out", f"{runs}/run", "--json", *extra]
        print("$ " + " ".join(cmd), flush=True)
        with Timer() as t:
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        res = json.loads(out)
        meta = json.loads((Path(runs) / "run" / "model" / "model.json").read_text())
    hist = meta["history"]
    ips = float(np.median([h["img_per_s"] for h in hist]))
    bs = meta["train_config"]["batch_size"]
    size = meta["preprocessing"]["size"]
    plain = plain_torch_epoch_ips(root, method, bs, size, args.steps)
    b.record("ours", rate=ips, what="imgclass train, median epoch")
    b.record("baseline", rate=plain, what="plain torch loop, same net")
    rows = [{"run": f"imgclass train --method {method} {' '.join(extra)}", "accuracy": res["metrics"]["accuracy"],
             "wall_s": t.s, "epochs": len(hist), "train_img_per_s": ips},
            {"run": "plain torch loop, same net (throughput only)", "accuracy": float("nan"), "wall_s": float("nan"),
             "epochs": float("nan"), "train_img_per_s": plain}]
    print(table(rows, ["run", "accuracy", "wall_s", "epochs", "train_img_per_s"],
                f"CIFAR-10 12k, train 10,000 -> val 2,000, {size}px, batch {bs}"))
    print("\nper-epoch: " + ", ".join(f"{h['epoch']}: {h.get('val_accuracy', float('nan')):.4f}" for h in hist))
    b.save({"rows": rows, "history": hist, "command": " ".join(cmd)}, f"cifar_deep_{method.replace('@', '_')}")


if __name__ == "__main__":
    main()
