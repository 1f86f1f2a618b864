"""Shared helpers for the benchmark scripts: dataset paths, tables, result files."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "datasets"
RESULTS = HERE / "results"


def dataset_path(name: str, given: str | None) -> Path:
    p = Path(given) if given else SHARED / name
    if not p.exists():
        raise SystemExit(f"bench: dataset {p} not found; pass its path as an argument")
    return p


def table(rows: list[dict], cols: list[str], title: str = "") -> str:
    fmt = {c: (lambda v: f"{v:.4f}" if isinstance(v, float) and abs(v) < 10 else
               (f"{v:,.1f}" if isinstance(v, float) else str(v))) for c in cols}
    cells = [[fmt[c](r.get(c, "")) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ([title] if title else []) + ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
                                          "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(row, widths))) + " |"
              for row in cells]
    return "\n".join(lines)


def save(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    payload = {"bench": name, "when": time.strftime("%Y-%m-%d %H:%M:%S"), "cpus": os.cpu_count(),
               "platform": platform.platform(), **payload}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
