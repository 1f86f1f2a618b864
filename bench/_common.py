"""The benchmark harness shared by bench/*.py.

One ``Bench`` per script: an argparse parser with the common options, "ours" and "a baseline" timed in
the same process, one PASS/FAIL line format, and a result file that records the machine it ran on::

    b = Bench("digits", __doc__, seed=0)               # --out NAME, --seed N; data=NAME, quick={...} on demand
    b.parser.add_argument("cache", nargs="?")           # the script's own options
    args = b.parse()
    board, secs = b.timed("ours", imgclass.compare, ds, methods, what="imgclass compare")
    _, base_s = b.timed("baseline", fit_svc, what="SVC on the raw arrays")   # or b.record(role, rate=img_per_s)
    print(table(rows, ["method", "accuracy"], "title"))
    b.target("best accuracy", best, ">=", 0.98)         # target: best accuracy >= 0.98: PASS (0.9900)
    b.save({"rows": rows})                              # bench/results/<--out or name>.json

``save`` adds one key, ``harness``: CPU model and flags (avx2, avx512_vnni, ...), torch's CPU capability,
the targets, the timings and the speed ratio ours/baseline (> 1: ours is faster) when both were measured.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import operator
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"
RESULTS = HERE / "results"
OPS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq}


def dataset_path(name: str, given: str | os.PathLike | None) -> Path:
    """``given``, else ``../shared/datasets/NAME``; exits with a message when it does not exist."""
    p = Path(given) if given else SHARED / name
    if not p.exists():
        raise SystemExit(f"bench: dataset {p} not found; pass its path as an argument")
    return p


def table(rows: list[dict], cols: list[str], title: str = "") -> str:
    """A Markdown table: small floats with 4 decimals, large ones with 1 and thousands separators."""
    fmt = {c: (lambda v: f"{v:.4f}" if isinstance(v, float) and abs(v) < 10 else
               (f"{v:,.1f}" if isinstance(v, float) else str(v))) for c in cols}
    cells = [[fmt[c](r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ([title] if title else []) + ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
                                          "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))) + " |"
              for row in cells]
    return "\n".join(lines)


def machine() -> dict:
    """CPU model, SIMD flags that matter to torch / ONNX Runtime, core count, load, torch's capability."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = sorted(f for f in set(info.get("flags", "").split())
                   if f.startswith(("avx", "amx", "fma", "f16c")) or "vnni" in f)
    out = {"cpu": info.get("model name", platform.processor()), "cpu_flags": flags, "cpus": os.cpu_count(),
           "load_average": list(os.getloadavg()), "python": platform.python_version()}
    if importlib.util.find_spec("torch") is not None:
        import torch

        out["torch"] = torch.__version__
        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    return out


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


class Bench:
    """Options, timings, targets and the result file of one benchmark script."""

    def __init__(self, name: str, doc: str | None, *, data: str | None = None, seed: int | None = None,
                 quick: dict | None = None):
        self.name, self.data_name, self.quick = name, data, quick
        self.args = argparse.Namespace()
        self.timings: dict[str, dict] = {}
        self.targets: list[dict] = []
        self.parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
        if data:
            self.parser.add_argument("data", nargs="?", help=f"dataset folder (default {SHARED / data})")
        self.parser.add_argument("--out", metavar="NAME", help=f"results file: bench/results/NAME.json (default "
                                 f"{name}), or a path ending in .json")
        if seed is not None:
            self.parser.add_argument("--seed", type=int, default=seed, help=f"random seed (default {seed})")
        if quick is not None:
            self.parser.add_argument("--quick", action="store_true", help="a small smoke run, not saved unless "
                                     "--out is given: " + ", ".join(f"{k}={v}" for k, v in quick.items()))

    def parse(self, argv: list[str] | None = None) -> argparse.Namespace:
        """Parse the command line; ``--quick`` replaces the options still at their defaults."""
        self.args = self.parser.parse_args(argv)
        if getattr(self.args, "quick", False):
            for key, value in self.quick.items():
                if getattr(self.args, key) == self.parser.get_default(key):
                    setattr(self.args, key, value)
        return self.args

    def dataset(self, given: str | os.PathLike | None = None, name: str | None = None) -> Path:
        """The dataset folder: ``given``, else the ``data`` argument, else ``../shared/datasets/NAME``."""
        return dataset_path(name or self.data_name, given or getattr(self.args, "data", None))

    def record(self, role: str, *, seconds: float | None = None, rate: float | None = None, unit: str = "img/s",
               what: str = "") -> None:
        """A measurement of ``role`` ("ours" or "baseline"): a duration or a rate (higher is faster)."""
        self.timings[role] = {"what": what, **({"seconds": seconds} if seconds is not None else
                                               {"rate": rate, "unit": unit})}

    def timed(self, role: str, fn, *args, what: str = "", **kwargs):
        """``fn(*args, **kwargs)`` timed as ``role``; returns (its result, seconds)."""
        with Timer() as t:
            result = fn(*args, **kwargs)
        self.record(role, seconds=t.s, what=what)
        return result, t.s

    def speed_ratio(self) -> float | None:
        """Ours' speed over the baseline's (> 1: ours is faster), when both were measured alike."""
        ours, base = self.timings.get("ours"), self.timings.get("baseline")
        if not ours or not base:
            return None
        if "seconds" in ours and "seconds" in base:
            return base["seconds"] / ours["seconds"]
        if "rate" in ours and "rate" in base:
            return ours["rate"] / base["rate"]
        return None

    def target(self, what: str, value: float, op: str, goal: float, fmt: str = ".4f", unit: str = "") -> bool:
        """Print and record ``target: WHAT OP GOAL: PASS (VALUE)``; True when met."""
        ok = bool(OPS[op](value, goal))
        print(f"target: {what} {op} {goal:g}{unit}: {'PASS' if ok else 'FAIL'} ({value:{fmt}}{unit})")
        self.targets.append({"target": f"{what} {op} {goal:g}{unit}", "value": value, "pass": ok})
        return ok

    def check(self, what: str, ok: bool, detail: str = "") -> bool:
        """A yes/no target, printed like ``target``: ``target: WHAT: PASS (DETAIL)``."""
        print(f"target: {what}: {'PASS' if ok else 'FAIL'}" + (f" ({detail})" if detail else ""))
        self.targets.append({"target": what, "value": detail, "pass": bool(ok)})
        return bool(ok)

    def path(self, name: str | None = None, suffix: str = ".json") -> Path:
        """Where the results go: bench/results/NAME.json (``--out`` wins over ``name``, which wins over the
        bench's name); a ``--quick`` run without ``--out`` goes to a temporary folder. ``suffix`` names a
        file saved next to it (a plot, a CSV)."""
        out = getattr(self.args, "out", None)
        name = out or name or self.name
        path = Path(name) if name.endswith(".json") else RESULTS / f"{name}.json"
        if getattr(self.args, "quick", False) and not out:
            path = Path(tempfile.gettempdir()) / "bench-quick" / path.name
        return path.with_suffix(suffix)

    def save(self, payload: dict, name: str | None = None) -> Path | None:
        """Write the results file (see ``path``) with the ``harness`` key added; prints the speed ratio first
        when ours and the baseline were both measured. A ``--quick`` run is only saved with ``--out``."""
        ratio = self.speed_ratio()
        if ratio is not None:
            o, b = self.timings["ours"], self.timings["baseline"]

            def show(m):
                v = f"{m['seconds']:.2f} s" if "seconds" in m else f"{m['rate']:,.1f} {m['unit']}"
                return f"{m['what']}: {v}" if m["what"] else v
            print(f"speed ours/baseline: {ratio:.3g}x (ours {show(o)}; baseline {show(b)})")
        if getattr(self.args, "quick", False) and not self.args.out:
            print("quick run: results not saved (pass --out NAME to keep them)")
            return None
        path = self.path(name)
        harness = {"machine": machine(), "argv": ["bench/" + Path(sys.argv[0]).name, *sys.argv[1:]],
                   "targets": self.targets, "timings": self.timings, "speed_ratio": ratio,
                   "quick": bool(getattr(self.args, "quick", False))}
        payload = {"bench": path.stem, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
                   "platform": platform.platform(), **payload, "harness": harness}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"saved {path}")
        return path
