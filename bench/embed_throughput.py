"""Embedding throughput of EfficientNet-Lite0 at 224 px, from JPEG files to vectors, in one run:
imgclass (ONNX Runtime, one session per worker process, decoding overlapped) vs raw torch eager and
a raw ONNX Runtime session (both single process, 2 threads, batch 32, PIL decoding in the loop).

Target (Deep-learning issue): imgclass >= 100 img/s including decoding and pre-processing.

    .venv/bin/python bench/embed_throughput.py [CIFAR_DIR] [N_IMAGES] [--quick] [--out NAME]

``--quick``: 100 images.
"""

from __future__ import annotations

import os

import numpy as np
from _common import Bench, Timer, table


def decode(paths, size):
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
                     for p in paths]).astype(np.float32)


def main() -> None:
    b = Bench("embed_throughput", __doc__, data="cifar10-12k", quick={"n": 100})
    b.parser.add_argument("n", nargs="?", type=int, default=1000, help="images (default 1000)")
    args = b.parse()
    root, n = b.dataset(), args.n
    import imgclass
    from imgclass.features import extract_features
    from imgclass.features.backbones import create_backbone
    from imgclass.features.deep import DeepEmbedding
    from imgclass.transforms import Preprocess

    ds = imgclass.load_dataset(root)
    paths = ds.sources[:: max(1, len(ds) // n)][:n]
    for p in paths:  # warm the page cache
        open(p, "rb").read()
    ex = DeepEmbedding("lite0", cache=False, tta=False)  # one pass per image, like the raw baselines
    pre = Preprocess.from_dict(ex.preprocess_defaults())
    onnx_path = ex.prepare()
    extract_features(ex, paths[:64], pre, n_jobs=2)  # start the workers and their sessions

    rows = []
    with Timer() as t:
        F = extract_features(ex, paths, pre, n_jobs=2)
    rows.append({"pipeline": "imgclass extract_features (ORT, 2 worker processes)", "img_per_s": len(paths) / t.s})

    import torch

    torch.set_num_threads(2)
    model = create_backbone("lite0", num_classes=0).eval()
    mean = torch.tensor(ex.config.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(ex.config.std).view(1, 3, 1, 1) * 255
    with Timer() as t, torch.no_grad():
        out_t = [model((torch.from_numpy(decode(paths[i:i + 32], 224)).permute(0, 3, 1, 2) - mean) / std).numpy()
                 for i in range(0, len(paths), 32)]
    rows.append({"pipeline": "raw torch eager (2 threads, batch 32)", "img_per_s": len(paths) / t.s})

    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
    m, s = mean.numpy(), std.numpy()
    with Timer() as t:
        out_o = [sess.run(None, {"image": np.ascontiguousarray((decode(paths[i:i + 32], 224).transpose(0, 3, 1, 2) - m) / s)})[0]
                 for i in range(0, len(paths), 32)]
    rows.append({"pipeline": "raw ONNX Runtime session (2 threads, batch 32)", "img_per_s": len(paths) / t.s})
    base = rows[2]["img_per_s"]
    for r in rows:
        r["vs_raw_ort"] = r["img_per_s"] / base
    diff_t = float(np.abs(np.concatenate(out_t) - F.X).max())
    diff_o = float(np.abs(np.concatenate(out_o) - F.X).max())
    print(table(rows, ["pipeline", "img_per_s", "vs_raw_ort"],
                f"lite0 embeddings at 224 px, {len(paths)} CIFAR JPEGs, {os.cpu_count()} cores"))
    print(f"\nmax |imgclass - torch| = {diff_t:.2e}, max |imgclass - raw ORT| = {diff_o:.2e}")
    b.record("ours", rate=rows[0]["img_per_s"], what="imgclass extract_features")
    b.record("baseline", rate=base, what="raw ONNX Runtime session")
    b.target("imgclass throughput", rows[0]["img_per_s"], ">=", 100, ".1f", " img/s")
    b.save({"rows": rows, "max_diff_torch": diff_t, "max_diff_ort": diff_o, "n": len(paths)})


if __name__ == "__main__":
    main()
