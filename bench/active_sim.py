"""Active-learning simulation on CIFAR-10 12k with frozen lite0 embeddings + logistic regression.

The labels of the 10,000 training images are hidden; every strategy starts from the same seeded
stratified initial set (10 per class), picks images in rounds, sees their labels and is scored on the
2,000 validation images after every round. Random picking, run in the same loop with the same initial
sets, is the baseline. Embeddings are computed once (and cached on disk); each round refits only the
logistic regression.

Target (issue 6, active learning): at 500 labels the best uncertainty strategy beats random by
>= 2 points (mean of 3 seeds).

    .venv/bin/python bench/active_sim.py [CIFAR_DIR] [--rounds 16 --per-round 25 --initial 100 --seeds 3
                                          --strategies entropy,margin,... --method lite0+logreg] [--quick] [--out NAME]

``--quick``: 2 rounds, 1 seed.

The equivalent command line is printed and stored with the results (bench/results/active_sim.json,
the plot bench/results/active_sim.png and the curves bench/results/active_sim.csv).
"""

from __future__ import annotations

import shlex
import sys
import time

from _common import Bench, Timer, table

from imgclass.learning.active import UNCERTAINTY, simulate

#: uncertainty-driven strategies (margin-kmeans ranks by margin, with a diversity filter)
UNCERTAINTY_BASED = (*UNCERTAINTY, "margin-kmeans")
TARGET_GAIN = 0.02


def _log(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def main() -> None:
    b = Bench("active_sim", __doc__, data="cifar10-12k", quick={"rounds": 2, "seeds": 1})
    ap = b.parser
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--per-round", type=int, default=25)
    ap.add_argument("--initial", type=int, default=100)
    ap.add_argument("--init", default="stratified")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--strategies", default="entropy,margin,least-confidence,margin-kmeans,coreset,random")
    ap.add_argument("--method", default="lite0+logreg")
    args = b.parse()
    root = b.dataset()
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", *sys.argv])
    cli = (f"imgclass active simulate {root} --rounds {args.rounds} --per-round {args.per_round} "
           f"--initial {args.initial} --init {args.init} --seeds {args.seeds} --strategies {args.strategies} "
           f"--method {args.method} --out runs/active-sim")
    print(f"$ {command}\n  (CLI equivalent: {cli})", flush=True)

    with Timer() as t:
        res = simulate(root, strategies=args.strategies, rounds=args.rounds, per_round=args.per_round,
                       initial=args.initial, init=args.init, seeds=args.seeds, method=args.method, log=_log)
    b.path().parent.mkdir(parents=True, exist_ok=True)
    plot = res.plot(b.path(suffix=".png"))
    b.path(suffix=".csv").write_text(res.to_csv())

    means = {s: res.mean(s) for s in res.strategies}
    stds = {s: res.std(s) for s in res.strategies}
    rows = [{"labels": n, **{s: f"{means[s][i]:.4f} ± {stds[s][i]:.4f}" for s in res.strategies}}
            for i, n in enumerate(res.n_labels)]
    print(table(rows, ["labels", *res.strategies],
                f"CIFAR-10 12k, {res.method}: validation accuracy (mean ± std over seeds {res.seeds})"))
    summary = res.summary()
    print()
    print(table([{**r, "gain_end": r.get("gain_end", 0.0) * 100, "gain_mean": r.get("gain_mean", 0.0) * 100}
                 for r in summary], ["strategy", "start", "end", "end_std", "gain_end", "gain_mean"],
                f"at {res.n_labels[-1]} labels; gains over random in points (end, and mean over rounds 1..)"))
    cand = [r for r in summary if r["strategy"] in UNCERTAINTY_BASED]
    best = max(cand, key=lambda r: r["gain_end"]) if cand else None
    plain = [r for r in cand if r["strategy"] in UNCERTAINTY]
    best_plain = max(plain, key=lambda r: r["gain_end"]) if plain else None
    ok = best is not None and best["gain_end"] >= TARGET_GAIN
    if best is not None:
        print(f"\nbest uncertainty strategy at {res.n_labels[-1]} labels: {best['strategy']} "
              f"{best['end']:.4f} vs random {best['end'] - best['gain_end']:.4f}")
        b.target("best uncertainty strategy's gain over random", best["gain_end"] * 100, ">=", TARGET_GAIN * 100,
                 "+.2f", " points")
    if best_plain is not None and best_plain is not best:
        print(f"best plain uncertainty strategy: {best_plain['strategy']} {best_plain['gain_end'] * 100:+.2f} points")
    print(f"time: {t.s:.0f} s (features {res.timings['features_s']:.0f} s, loop {res.timings['loop_s']:.0f} s); "
          f"plot {plot}")
    b.save({"command": command, "cli_equivalent": cli, "dataset": str(root),
                        "config": vars(args) | {"data": str(root)}, "target_gain": TARGET_GAIN, "pass": ok,
                        "best_uncertainty": best, "best_plain_uncertainty": best_plain, "total_s": t.s,
                        "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "plot": str(plot),
                        "result": res.to_dict()})


if __name__ == "__main__":
    main()
