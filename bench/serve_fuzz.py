"""Hostile traffic against a real ``imgclass serve`` (uvicorn on 127.0.0.1): N random requests, the size of
``/metrics`` before and after, and the server's peak RSS while twelve near-limit uploads arrive at once.

    .venv/bin/python bench/serve_fuzz.py [MODEL] [--requests 10000] [--concurrency 8] [--uploads 12]

MODEL is a bundle folder; without it a ``color_hist+logreg`` bundle is trained first on small generated
colour images (a few seconds). The random requests mix made-up methods and paths, deep JSON, numbers out
of range (``1e400``), wrong types, broken multipart, odd content types, broken and valid images, empty and
wrong API-key headers, and raw bytes that are not HTTP at all. The uploads are PNGs just under the
server's pixel limit (``--side``, default 6,300 x 6,300 = 39.7 MP of the 40 MP default) and CLI-limit
JPEGs (9,400 x 9,400, refused from the header). The baseline in the same run is the same PNG sent one
at a time: the concurrent peak should stay near it instead of growing with the number of uploads.

Targets: zero 5xx other than deliberate 503 shedding, the server answers afterwards, ``/metrics`` stops
growing (under 2 KB over the second half of the requests, under 64 KB in all), peak RSS of the
concurrent uploads under 1.5 GB. Saves ``bench/results/serve_fuzz.json``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from _common import Bench, table
from PIL import Image

KEY = "bench-key"
GB = 2**30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_model(folder: Path) -> Path:
    """A ``color_hist+logreg`` bundle trained on 3 x 12 generated 20 px colour images."""
    import imgclass

    rng = np.random.default_rng(0)
    for name, rgb in {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}.items():
        (folder / "data" / name).mkdir(parents=True, exist_ok=True)
        for i in range(12):
            arr = np.clip(np.asarray(rgb)[None, None] + rng.normal(0, 25, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(folder / "data" / name / f"{i}.png")
    imgclass.train(folder / "data", method="color_hist+logreg", n_jobs=1, seed=0).save(folder / "model")
    return folder / "model"


def rss_of(pids: list[int]) -> int:
    """Resident bytes of the processes (the server and its workers)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def server_pids(pid: int) -> list[int]:
    """The server process and every process below it."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = Path(f"/proc/{p}/task/{p}/children").read_text().split()
        except OSError:
            kids = []
        todo += [int(k) for k in kids]
    return out


class RssSampler:
    """The peak RSS of the server processes, sampled every 10 ms in a thread while in use."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, 0, threading.Event()

    def __enter__(self):
        self.peak = rss_of(server_pids(self.pid))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_of(server_pids(self.pid)))
            time.sleep(0.01)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------- random requests
def _image(rng: random.Random) -> bytes:
    side = rng.randint(1, 24)
    arr = np.random.default_rng(rng.randint(0, 10**6)).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(rng.choice(["RGB", "L", "P", "RGBA", "1"])).save(buf, rng.choice(["PNG", "GIF", "BMP"]))
    data = bytearray(buf.getvalue())
    how = rng.random()
    if how < 0.3:
        data = data[: rng.randint(0, len(data))]
    elif how < 0.5:
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


NUMBERS = ["1e400", "-1e400", "NaN", "Infinity", "-0", "0", "3", "2.5", "1" * 5000, '"3"', '"1e400"', "true",
           "null", "[]", "{}", str(2**64)]


def _json(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.15:
        depth = rng.choice([100, 10_000, 200_000])
        return (b"[" * depth + b"]" * depth) if rng.random() < 0.5 else (b'{"a":' * depth + b"1" + b"}" * depth)
    if kind < 0.25:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 64)))
    b64 = base64.b64encode(_image(rng)).decode()
    values = [f'"{b64}"', f'["{b64}", "%%%", null]', '"data:,x"', *NUMBERS]
    fields = rng.sample(["image", "images", "top_k", "target", "method", "path", "x"], rng.randint(0, 4))
    return ("{" + ",".join(f'"{k}": {rng.choice(values)}' for k in fields) + "}").encode()


def _multipart(rng: random.Random) -> tuple[bytes, str]:
    boundary = rng.choice(["BOUND", "x" * 70, "b"])
    parts = []
    for _ in range(rng.randint(0, 4)):
        name = rng.choice(["file", "files", "top_k", "target", "path", ""])
        fn = rng.choice([None, "a.png", "../../etc/passwd", ""])
        value = rng.choice([_image(rng), rng.choice(NUMBERS).encode(), os.urandom(rng.randint(0, 40))])
        disp = f'form-data; name="{name}"' + (f'; filename="{fn}"' if fn is not None else "")
        parts.append(f"--{boundary}\r\nContent-Disposition: {disp}\r\n\r\n".encode() + value + b"\r\n")
    end = rng.choice([f"--{boundary}--\r\n".encode(), b"", b"--"])
    return b"".join(parts) + end, f"multipart/form-data; boundary={boundary}"


PATHS = ["/v1/predict", "/v1/predict", "/v1/predict/batch", "/v1/explain", "/v1/model", "/metrics", "/healthz",
         "/docs", "/openapi.json", "/redoc", "/", "/static/app.js", "/static/../app.py", "/%00", "/v1/predict%2f",
         "/\u00e9t\u00e9"]
CTYPES = ["", "text/plain", "image/", "multipart/form-data", "application/x-www-form-urlencoded", ";;;",
          "application/json; charset=utf-16"]


def random_request(rng: random.Random) -> dict:
    method = rng.choice(["POST"] * 5 + ["GET"] * 2 + ["PUT", "DELETE", "OPTIONS", "HEAD", "PATCH"]
                        + ["".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZ", k=rng.randint(1, 10)))] * 3)
    path = rng.choice(PATHS) if rng.random() < 0.85 else "/p" + "".join(rng.choices("abc/._-%~:@!$", k=rng.randint(0, 30)))
    headers, body = {}, b""
    kind = rng.random()
    if kind < 0.4:
        body, headers["Content-Type"] = _json(rng), "application/json"
    elif kind < 0.6:
        body, headers["Content-Type"] = _multipart(rng)
    elif kind < 0.8:
        body, headers["Content-Type"] = _image(rng), "image/png"
    elif kind < 0.9:
        body = os.urandom(rng.randint(0, 300))
    if rng.random() < 0.2:
        headers["Content-Type"] = rng.choice(CTYPES)
    if rng.random() < 0.3:
        headers[rng.choice(["X-API-Key", "Authorization"])] = rng.choice(["", " ", "Bearer", f"Bearer {KEY}", KEY, "x"])
    params = {"top_k": rng.choice(NUMBERS)} if rng.random() < 0.2 else {}
    return {"method": method, "url": path, "headers": headers, "content": body, "params": params}


def raw_garbage(port: int, rng: random.Random) -> bytes:
    """Bytes that are not valid HTTP, straight onto a socket; returns the first bytes of the answer."""
    junk = rng.choice([os.urandom(rng.randint(1, 200)), b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                       b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nContent-Length: 20\r\n\r\n",
                       b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"\r\n\r\n\r\n"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(junk)
            s.shutdown(socket.SHUT_WR)
            return s.recv(64)
        except OSError:
            return b""


def status_class(code: int | None) -> str:
    return "error" if code is None else f"{code // 100}xx"


# ------------------------------------------------------------------------------------------- the run
def near_limit_png(side: int) -> bytes:
    """A ``side`` x ``side`` RGB PNG of a smooth gradient: a few hundred KB, ``side``² pixels decoded."""
    row = np.linspace(0, 255, side, dtype=np.uint8)
    arr = np.empty((side, side, 3), dtype=np.uint8)
    arr[..., 0], arr[..., 1], arr[..., 2] = row[None, :], row[:, None], 128
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG", compress_level=9)
    return buf.getvalue()


def big_jpeg(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (120, 30, 200)).save(buf, "JPEG", quality=50)
    return buf.getvalue()


def upload_burst(url: str, data: bytes, n: int, concurrent: bool, pid: int) -> dict:
    """Send ``data`` ``n`` times (all at once or one after another); the statuses and the peak RSS."""
    def one(_):
        try:
            return httpx.post(url + "v1/predict", content=data, timeout=120,
                              headers={"Content-Type": "image/png", "X-API-Key": KEY}).status_code
        except httpx.HTTPError:
            return None

    t0 = time.perf_counter()
    with RssSampler(pid) as rss:
        if concurrent:
            with ThreadPoolExecutor(n) as pool:
                codes = list(pool.map(one, range(n)))
        else:
            codes = [one(i) for i in range(n)]
    return {"statuses": dict(Counter(str(c) for c in codes)), "peak_rss_gb": rss.peak / GB,
            "seconds": time.perf_counter() - t0}


def main() -> None:
    b = Bench("serve_fuzz", __doc__, seed=0, quick={"requests": 500})
    b.parser.add_argument("model", nargs="?", help="bundle folder (default: a color_hist+logreg trained here)")
    b.parser.add_argument("--requests", type=int, default=10_000, help="random requests (default 10000)")
    b.parser.add_argument("--concurrency", type=int, default=8, help="clients sending them at once (default 8)")
    b.parser.add_argument("--uploads", type=int, default=12, help="near-limit uploads sent at once (default 12)")
    b.parser.add_argument("--side", type=int, default=6300, help="side of the near-limit PNG (default 6300)")
    b.parser.add_argument("--workers", type=int, default=1, help="imgclass serve --workers (default 1)")
    args = b.parse()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="serve-fuzz-"))
    model = Path(args.model) if args.model else tiny_model(tmp)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "IMGCLASS_PROGRESS": "0"}
    cmd = [sys.executable, "-m", "imgclass", "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
           "--api-key", KEY, "--workers", str(args.workers), "--no-access-log", "--log-level", "warning"]
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 - open for the server's whole life
    server = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url + "healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {tmp / 'server.log'}")
            time.sleep(0.2)
        auth = {"X-API-Key": KEY}
        idle_rss = rss_of(server_pids(server.pid))
        metrics_before = len(httpx.get(url + "metrics", headers=auth, timeout=30).content)

        # N random requests from a few clients at once
        reqs = [random_request(rng) for _ in range(args.requests)]
        counts: Counter = Counter()
        bad: list = []
        with httpx.Client(base_url=url, timeout=60) as client:
            def send(r):
                try:
                    resp = client.request(r["method"], r["url"], headers=r["headers"], content=r["content"],
                                          params=r["params"])
                    return resp.status_code, resp.text[:200]
                except (httpx.InvalidURL, httpx.LocalProtocolError):
                    return "unsent", ""  # the client itself refused to send it (URL or header it deems invalid)
                except httpx.HTTPError as exc:
                    return None, type(exc).__name__

            t0 = time.perf_counter()
            half = len(reqs) // 2
            with ThreadPoolExecutor(args.concurrency) as pool:
                for i, part in enumerate((reqs[:half], reqs[half:])):
                    for r, (code, text) in zip(part, pool.map(send, part)):
                        counts["unsent" if code == "unsent" else status_class(code)] += 1
                        if code is None or (code != "unsent" and code >= 500):
                            bad.append({"status": code, "method": r["method"], "url": r["url"], "answer": text})
                    if i == 0:
                        metrics_mid = len(httpx.get(url + "metrics", headers=auth, timeout=30).content)
            fuzz_s = time.perf_counter() - t0
        raw = Counter((raw_garbage(port, rng)[:12].decode("latin-1") or "(closed)").split("\r")[0]
                      for _ in range(max(20, args.requests // 100)))
        metrics_after = len(httpx.get(url + "metrics", headers=auth, timeout=30).content)
        red = io.BytesIO()
        Image.new("RGB", (24, 24), (200, 40, 40)).save(red, "PNG")
        ok_after = httpx.post(url + "v1/predict", content=red.getvalue(), timeout=30,
                              headers={"Content-Type": "image/png", **auth}).status_code

        # memory: the near-limit PNG one at a time (baseline), then all at once; CLI-limit JPEGs at once
        png = near_limit_png(args.side)
        jpg = big_jpeg(9400)
        one_by_one = upload_burst(url, png, 3, False, server.pid)
        at_once = upload_burst(url, png, args.uploads, True, server.pid)
        jpegs = upload_burst(url, jpg, args.uploads, True, server.pid)
        still = httpx.get(url + "healthz", timeout=10).status_code
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()

    rows = [{"what": k, "count": v} for k, v in sorted(counts.items())] or [{"what": "(none sent)", "count": 0}]
    print(table(rows, ["what", "count"], f"{args.requests:,} random requests in {fuzz_s:.1f} s "
                                         f"({args.concurrency} clients), by status class"))
    print(f"raw non-HTTP bytes ({sum(raw.values())} connections), first answer line: {dict(raw)}")
    print(f"/metrics: {metrics_before:,} bytes before, {metrics_mid:,} after half the requests, {metrics_after:,} after")
    mem = [{"case": f"{args.side}x{args.side} PNG ({len(png) / 1024:.0f} KB), 3 one at a time (baseline)", **_mem(one_by_one)},
           {"case": f"{args.side}x{args.side} PNG, {args.uploads} at once", **_mem(at_once)},
           {"case": f"9400x9400 JPEG ({len(jpg) / 1024:.0f} KB), {args.uploads} at once", **_mem(jpegs)}]
    print(table(mem, ["case", "statuses", "peak RSS GB", "seconds"], f"server RSS (idle {idle_rss / GB:.2f} GB)"))
    for x in bad[:10]:
        print("5xx:", x)
    n5 = counts.get("5xx", 0) + counts.get("error", 0)
    b.target("5xx or failed answers of the random requests", n5, "==", 0, fmt="d")
    b.check("the server answers after the fuzz", ok_after == 200 and still == 200, f"predict {ok_after}, healthz {still}")
    b.target("/metrics growth over the second half of the requests", (metrics_after - metrics_mid) / 1024, "<", 2,
             fmt=".1f", unit=" KB")
    b.target("/metrics size after the fuzz", metrics_after / 1024, "<", 64, fmt=".1f", unit=" KB")
    b.target(f"peak RSS of {args.uploads} concurrent near-limit uploads", at_once["peak_rss_gb"], "<", 1.5, fmt=".2f",
             unit=" GB")
    b.check("concurrent uploads answered 200 or 503", all(s in ("200", "503") for s in at_once["statuses"]),
            json.dumps(at_once["statuses"]))
    b.record("ours", seconds=at_once["seconds"], what=f"{args.uploads} near-limit PNGs at once")
    b.save({"requests": args.requests, "concurrency": args.concurrency, "status_classes": dict(counts),
            "raw_garbage": dict(raw), "fuzz_seconds": fuzz_s, "metrics_bytes_before": metrics_before, "metrics_bytes_mid": metrics_mid,
            "metrics_bytes_after": metrics_after, "idle_rss_gb": idle_rss / GB, "one_by_one": one_by_one,
            "at_once": at_once, "cli_limit_jpegs": jpegs, "five_xx_examples": bad[:20], "workers": args.workers})


def _mem(r: dict) -> dict:
    return {"statuses": json.dumps(r["statuses"]), "peak RSS GB": r["peak_rss_gb"], "seconds": r["seconds"]}


if __name__ == "__main__":
    main()
