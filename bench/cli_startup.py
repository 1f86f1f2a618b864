"""``imgclass --help`` start-up time (target < 0.5 s), against a bare ``python -c pass``.

    .venv/bin/python bench/cli_startup.py
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import save, table


def best_of(cmd, n=7):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    exe = str(Path(sys.executable).with_name("imgclass"))
    rows = []
    for name, cmd in [("python -c pass", [sys.executable, "-c", "pass"]), ("imgclass --help", [exe, "--help"]),
                      ("imgclass train --help", [exe, "train", "--help"])]:
        best, med = best_of(cmd)
        rows.append({"command": name, "best_s": best, "median_s": med})
    print(table(rows, ["command", "best_s", "median_s"], "CLI start-up (7 runs)"))
    med = rows[1]["median_s"]
    print(f"\nimgclass --help median {med:.3f}s (target < 0.5 s: {'PASS' if med < 0.5 else 'FAIL'})")
    save("cli_startup", {"rows": rows})


if __name__ == "__main__":
    main()
