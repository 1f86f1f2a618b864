"""``imgclass --help`` start-up time (target < 0.5 s), against a bare ``python -c pass``.

    .venv/bin/python bench/cli_startup.py [--runs 7] [--out NAME]
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import Bench, table


def best_of(cmd, n=7):
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times)


def main() -> None:
    b = Bench("cli_startup", __doc__, quick={"runs": 3})
    b.parser.add_argument("--runs", type=int, default=7, help="runs per command (best and median kept)")
    args = b.parse()
    exe = str(Path(sys.executable).with_name("imgclass"))
    rows = []
    for name, cmd in [("python -c pass", [sys.executable, "-c", "pass"]), ("imgclass --help", [exe, "--help"]),
                      ("imgclass train --help", [exe, "train", "--help"])]:
        best, med = best_of(cmd, args.runs)
        rows.append({"command": name, "best_s": best, "median_s": med})
    print(table(rows, ["command", "best_s", "median_s"], f"CLI start-up ({args.runs} runs)"))
    print()
    b.target("imgclass --help median", rows[1]["median_s"], "<", 0.5, ".3f", " s")
    b.save({"rows": rows})


if __name__ == "__main__":
    main()
