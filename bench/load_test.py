"""Load test of ``imgclass serve``: 16 concurrent clients for 60 s on loopback against a lite0+logreg
bundle, compared with offline batch prediction of the same model on the same images in the same run;
then the bad uploads, each of which must get its 4xx while the server stays up.

    .venv/bin/python bench/load_test.py [MODEL] [--data DIR] [--images 1000] [--clients 16] [--duration 60] [--quick]

MODEL is a bundle folder. Without it, ``bench/runs/load_test_lite0/model`` is used, trained first if
missing with the equivalent of

    imgclass train ../shared/datasets/cifar10-12k --method lite0+logreg --out bench/runs/load_test_lite0

(quick when the lite0 embeddings of CIFAR-10 12k are already in the cache; about 5 min cold on 2 cores).
The images are a seeded sample of ``--images`` files from the dataset's ``val`` split (default
``../shared/datasets/cifar10-12k/val``, see ``_common.dataset_path``). ``--duration 5`` is a smoke run
(``--quick``: 5 s, 200 images, not saved unless ``--out`` is given).

Both sides run without the on-disk embedding cache (the server never uses it for uploads; offline it
would turn the baseline into cache reads). Targets: server throughput >= 0.70 x offline, zero 5xx.
Prints a table and saves ``bench/results/load_test.json``.
"""

from __future__ import annotations

import os
import random
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from _common import HERE, Bench, table

DEFAULT_RUN = HERE / "runs" / "load_test_lite0"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bomb_png(side: int = 20_000) -> bytes:
    """A valid 1-bit ``side`` x ``side`` PNG (400 megapixels at 20k) of a few tens of KB."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (side + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join([comp.compress(row) for _ in range(side)] + [comp.flush()])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def ensure_model(model: str | None, data_root: Path) -> Path:
    if model:
        return Path(model)
    bundle = DEFAULT_RUN / "model"
    if not (bundle / "model.json").exists():
        import imgclass

        print(f"training lite0+logreg on {data_root} into {DEFAULT_RUN} ...", flush=True)
        imgclass.train(data_root, method="lite0+logreg", out=DEFAULT_RUN, log=lambda m: print("  " + m, flush=True))
    return bundle


def sample_images(val_dir: Path, n: int, seed: int = 0) -> list[Path]:
    files = sorted(p for p in val_dir.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise SystemExit(f"bench: no images under {val_dir}")
    random.Random(seed).shuffle(files)
    return sorted(files[:n])


def offline(bundle: Path, paths: list[Path]) -> dict:
    """``imgclass.predict`` in this process on every image (after a warm-up), embedding cache off."""
    import imgclass
    from imgclass.serve.app import _disable_embedding_cache

    model = imgclass.load_model(bundle)
    _disable_embedding_cache(model)
    imgclass.predict(model, [str(p) for p in paths[:64]], top_k=3)  # ONNX sessions, worker processes
    t0 = time.perf_counter()
    preds = imgclass.predict(model, [str(p) for p in paths], top_k=3)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "ips": len(paths) / secs, "labels": {str(p): r.label for p, r in zip(paths, preds)}}


def start_server(bundle: Path, port: int, args, log_file) -> subprocess.Popen:
    exe = str(Path(sys.executable).with_name("imgclass"))
    cmd = [exe, "serve", str(bundle), "--port", str(port), "--workers", str(args.workers), "--max-batch",
           str(args.max_batch), "--batch-wait-ms", str(args.batch_wait_ms), "--no-access-log", "--log-level", "warning"]
    print("$ " + shlex.join(cmd), flush=True)
    return subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, "IMGCLASS_PROGRESS": "0"})


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 600) -> float:
    import httpx

    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"bench: the server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "healthz", timeout=2).status_code == 200:
                return time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit("bench: the server did not become ready")


def load(url: str, payloads: list[tuple[str, bytes]], clients: int, duration: float) -> dict:
    """``clients`` threads, each with its own keep-alive connection, posting images round-robin."""
    import httpx

    results: list[list] = [[] for _ in range(clients)]
    labels: dict[str, str] = {}
    stop_at = [0.0]
    barrier = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        out = results[k]
        i = k
        with httpx.Client(base_url=url, timeout=60) as c:
            barrier.wait()
            while time.perf_counter() < stop_at[0]:
                name, data = payloads[i % len(payloads)]
                i += clients
                t0 = time.perf_counter()
                try:
                    r = c.post("v1/predict", files={"file": (Path(name).name, data, "image/jpeg")})
                    status = r.status_code
                    if status == 200 and name not in labels:
                        labels[name] = r.json()["label"]
                except httpx.HTTPError as exc:
                    status = f"error: {type(exc).__name__}"
                out.append((status, time.perf_counter() - t0))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    stop_at[0] = time.perf_counter() + duration
    t0 = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t0
    flat = [x for r in results for x in r]
    lat = np.asarray([s for st, s in flat if st == 200]) * 1000
    return {"requests": len(flat), "ok": int(sum(st == 200 for st, _ in flat)),
            "5xx": int(sum(isinstance(st, int) and st >= 500 for st, _ in flat)),
            "client_errors": int(sum(not isinstance(st, int) for st, _ in flat)),
            "other": sorted({str(st) for st, _ in flat if st != 200}),
            "p50_ms": float(np.percentile(lat, 50)) if len(lat) else float("nan"),
            "p99_ms": float(np.percentile(lat, 99)) if len(lat) else float("nan"),
            "seconds": elapsed, "ips": len(lat) / elapsed, "labels": labels}


def bad_uploads(url: str, good: bytes, truncated_src: bytes, proc: subprocess.Popen) -> list[dict]:
    import httpx

    cases = [
        ("truncated JPEG", truncated_src[: len(truncated_src) // 2], "image/jpeg", 422),
        ("0 bytes", b"", "image/jpeg", 415),
        ("text file", b"this is not an image\n" * 50, "text/plain", 415),
        ("30 MB file", b"\xff\xd8\xff\xe0" + os.urandom(30 * 2**20), "image/jpeg", 413),
        ("20k x 20k PNG bomb", bomb_png(), "image/png", 422),
    ]
    rows = []
    with httpx.Client(base_url=url, timeout=120) as c:
        for name, data, ctype, want in cases:
            t0 = time.perf_counter()
            try:
                r = c.post("v1/predict", files={"file": ("upload", data, ctype)})
                status, code = r.status_code, r.json().get("error", {}).get("code")
            except httpx.HTTPError as exc:
                status, code = f"error: {type(exc).__name__}", None
            ms = (time.perf_counter() - t0) * 1000
            after = c.post("v1/predict", files={"file": ("good.jpg", good, "image/jpeg")}).status_code
            rows.append({"upload": name, "bytes": len(data), "want": want, "got": status, "code": code,
                         "ms": ms, "next_good": after, "server_up": proc.poll() is None,
                         "ok": status == want and after == 200 and proc.poll() is None})
    return rows


def main() -> None:
    b = Bench("load_test", __doc__, quick={"duration": 5.0, "images": 200})
    ap = b.parser
    ap.add_argument("model", nargs="?", help="bundle folder (default: bench/runs/load_test_lite0/model, trained if missing)")
    ap.add_argument("--data", help="CIFAR-10 12k folder (its val/ split is used)")
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load (5 for a smoke run)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--batch-wait-ms", type=float, default=5.0)
    ap.add_argument("--tag", default="", help="suffix of the results file")
    args = b.parse()

    root = b.dataset(args.data, "cifar10-12k")
    bundle = ensure_model(args.model, root)
    paths = sample_images(root / "val" if (root / "val").is_dir() else root, args.images)
    payloads = [(str(p), p.read_bytes()) for p in paths]
    print(f"model {bundle}; {len(paths)} images from {root}", flush=True)

    print("offline imgclass.predict ...", flush=True)
    off = offline(bundle, paths)
    print(f"  {off['ips']:.1f} img/s ({off['seconds']:.1f} s)", flush=True)

    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    with tempfile.TemporaryFile("w+") as log_file:
        proc = start_server(bundle, port, args, log_file)
        try:
            ready = wait_ready(url, proc)
            print(f"server ready in {ready:.1f} s; {args.clients} clients for {args.duration:.0f} s ...", flush=True)
            srv = load(url, payloads, args.clients, args.duration)
            import httpx

            metrics = httpx.get(url + "metrics", timeout=10).text
            bad = bad_uploads(url, payloads[0][1], payloads[1][1], proc)
            healthy = proc.poll() is None and httpx.get(url + "healthz", timeout=10).status_code == 200
        except BaseException:
            log_file.seek(0)
            print("server log (last lines):\n" + "".join(log_file.readlines()[-30:]), file=sys.stderr)
            raise
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    def metric(name: str) -> float:
        return next((float(line.split()[-1]) for line in metrics.splitlines() if line.startswith(name + " ")), float("nan"))

    mean_batch = metric("imgclass_batch_size_sum") / metric("imgclass_batch_size_count")
    same = [srv["labels"][k] == off["labels"][k] for k in srv["labels"]]
    agreement = float(np.mean(same)) if same else float("nan")
    ratio = srv["ips"] / off["ips"]
    rows = [
        {"mode": f"server ({args.clients} clients, {args.duration:.0f} s)", "requests": srv["requests"],
         "5xx": srv["5xx"], "p50_ms": srv["p50_ms"], "p99_ms": srv["p99_ms"], "img_per_s": srv["ips"]},
        {"mode": "offline imgclass.predict", "requests": len(paths), "5xx": 0, "p50_ms": float("nan"),
         "p99_ms": float("nan"), "img_per_s": off["ips"]},
    ]
    print()
    print(table(rows, ["mode", "requests", "5xx", "p50_ms", "p99_ms", "img_per_s"],
                f"imgclass serve {bundle.name} on loopback, {os.cpu_count()} CPUs"))
    print(f"\nclient-side errors: {srv['client_errors']}; mean micro-batch {mean_batch:.1f} images; top-1 agreement "
          f"with offline {agreement:.4f} on {len(same)} images")
    b.target("server / offline throughput", ratio, ">=", 0.70, ".3f")
    b.target("5xx responses", srv["5xx"], "==", 0, "d")
    print()
    print(table(bad, ["upload", "bytes", "want", "got", "code", "ms", "next_good", "server_up"], "bad uploads"))
    all_bad_ok = all(r["ok"] for r in bad) and healthy
    print()
    b.check("bad uploads", all_bad_ok, f"each got its 4xx, the next good request 200, server still up: {healthy}")
    b.record("ours", rate=srv["ips"], what="imgclass serve")
    b.record("baseline", rate=off["ips"], what="offline imgclass.predict")
    srv.pop("labels")
    b.save({
        "command": "python " + shlex.join(["bench/load_test.py", *sys.argv[1:]]), "model": str(bundle),
        "images": len(paths), "clients": args.clients, "duration_s": args.duration, "workers": args.workers,
        "max_batch": args.max_batch, "batch_wait_ms": args.batch_wait_ms, "server": srv,
        "offline": {"seconds": off["seconds"], "ips": off["ips"]}, "ratio": ratio, "mean_batch": mean_batch,
        "top1_agreement": agreement, "bad_uploads": bad, "healthy_after": healthy,
        "pass": bool(ratio >= 0.70 and srv["5xx"] == 0 and all_bad_ok)}, "load_test" + (f"_{args.tag}" if args.tag else ""))


if __name__ == "__main__":
    main()
