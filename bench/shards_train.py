"""Tar shards vs the folder they were packed from, on CIFAR-10 12k (pre-split: train 10k, val 2k).

Packs the folder into WebDataset-style shards in a temporary folder (pack time, MB, images/s), reads
them back once through ``ShardStream`` (sequential streaming throughput), then trains the same method
with the same seed through the real CLI from the folder, from the shards decoded into memory, and from
the shards streamed (``--stream on``: read front to back through a shuffle buffer and decoded by
DataLoader workers while training), and compares validation accuracy. The baseline is the folder run;
the in-memory shard run should agree exactly, the streamed one within run-to-run noise (its items
come in another order).

    .venv/bin/python bench/shards_train.py [--out NAME] [--quick] [CIFAR_DIR] [METHOD] [extra imgclass train options...]
    e.g. .venv/bin/python bench/shards_train.py ../shared/datasets/cifar10-12k smallcnn --epochs 3

The bench's own options go before CIFAR_DIR; everything after METHOD goes to ``imgclass train``
(default ``--epochs 3 --batch-size 128``; ``--quick``: ``--epochs 1 --batch-size 128``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import Bench, Timer, table


def train(exe: str, data: str, method: str, out: str, extra: list[str]) -> tuple[float, float, dict]:
    cmd = [exe, "train", data, "--method", method, "--seed", "0", "--out", out, "--json", *extra]
    print("$ " + " ".join(cmd), flush=True)
    with Timer() as t:
        res = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    meta = json.loads((Path(out) / "model" / "model.json").read_text())
    return res["metrics"]["accuracy"], t.s, meta


def main() -> None:
    b = Bench("shards_train", __doc__, data="cifar10-12k", quick={})
    b.parser.add_argument("method", nargs="?", default="smallcnn")
    b.parser.add_argument("extra", nargs=argparse.REMAINDER, help="options for imgclass train")
    args = b.parse()
    root, method = b.dataset(), args.method
    extra = args.extra or ["--epochs", "1" if args.quick else "3", "--batch-size", "128"]
    exe = str(Path(sys.executable).with_name("imgclass"))
    from imgclass.data import load_dataset
    from imgclass.data.shards import pack_shards
    from imgclass.training.shard_stream import ShardStream

    with tempfile.TemporaryDirectory() as tmp:
        ds = load_dataset(root)
        with Timer() as tp:
            s = pack_shards(ds, f"{tmp}/shards", "16MB", seed=0)
        with Timer() as tl:
            back = load_dataset(f"{tmp}/shards")
        assert back.fingerprint() == ds.fingerprint(), "shards do not hold the same items and labels"
        with Timer() as ts:
            n_stream = sum(1 for _ in ShardStream(f"{tmp}/shards", shuffle_buffer=1000, seed=0))
        acc_f, wall_f, meta_f = train(exe, str(root), method, f"{tmp}/run-folder", extra)
        acc_s, wall_s, meta_s = train(exe, f"{tmp}/shards", method, f"{tmp}/run-shards", [*extra, "--stream", "off"])
        acc_t, wall_t, meta_t = train(exe, f"{tmp}/shards", method, f"{tmp}/run-stream", [*extra, "--stream", "on"])

    mb = s["bytes"] / 1e6
    print(f"\npacked {s['items']:,} images ({s['splits']}) into {s['shards']} shards, {mb:.1f} MB, "
          f"in {tp.s:.1f} s = {s['items'] / tp.s:,.0f} img/s; index load {tl.s:.2f} s; "
          f"streamed {n_stream:,} items (bytes, shuffle buffer 1000) at {n_stream / ts.s:,.0f} img/s\n")
    rows = [{"data": f"folder {root.name}/ (baseline)", "val_accuracy": acc_f, "wall_s": wall_f,
             "epochs": len(meta_f.get("history", [])) or float("nan")},
            {"data": "tar shards, decoded into memory (--stream off)", "val_accuracy": acc_s, "wall_s": wall_s,
             "epochs": len(meta_s.get("history", [])) or float("nan")},
            {"data": "tar shards, streamed (--stream on)", "val_accuracy": acc_t, "wall_s": wall_t,
             "epochs": len(meta_t.get("history", [])) or float("nan")}]
    print(table(rows, ["data", "val_accuracy", "wall_s", "epochs"],
                f"imgclass train --method {method} {' '.join(extra)} --seed 0 (train 10,000 -> val 2,000)"))
    print(f"\nval accuracy, shards - folder = {acc_s - acc_f:+.4f}, streamed shards - folder = {acc_t - acc_f:+.4f}; "
          f"same data fingerprint: {meta_f.get('data_fingerprint') == meta_s.get('data_fingerprint') == meta_t.get('data_fingerprint')}")
    b.record("ours", seconds=wall_t, what="train from streamed shards")
    b.record("baseline", seconds=wall_f, what="train from the folder")
    b.save({"pack": {"items": s["items"], "shards": s["shards"], "mb": mb, "seconds": tp.s,
                   "images_per_s": s["items"] / tp.s},
          "index_load_s": tl.s, "stream_images_per_s": n_stream / ts.s, "rows": rows,
          "accuracy_difference": acc_s - acc_f, "streamed_accuracy_difference": acc_t - acc_f, "extra": extra},
           f"shards_train_{method.replace('@', '_').replace('+', '_')}")


if __name__ == "__main__":
    main()
