"""``imgclass active``: which images to label next, and simulations of labelling strategies.

``imgclass active DATA --pool DIR --budget N`` ranks the pool (the default verb, ``suggest``);
``imgclass active simulate DATA ...`` measures strategies against random on labelled data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from ._options import DEFAULT_MAX_PIXELS, JobsOpt, MaxPixelsOpt, TaskOpt
from ._output import console, err, notes, print_json, short_path, warn_skipped
from .app import app

# kept as text here so that 'imgclass active --help' imports nothing heavy (the list lives in
# imgclass.learning.active.STRATEGIES; the API rejects unknown names with the full list)
STRATEGY_NAMES = "entropy, margin, least-confidence, coreset, margin-kmeans or random"


class _SuggestByDefault(TyperGroup):
    """A group whose first argument, when it is not a sub-command, goes to ``suggest``: so
    ``imgclass active DATA --pool DIR`` works as the issue spells it, next to ``imgclass active simulate``."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = ["suggest", *args]
        return super().parse_args(ctx, args)


active_app = typer.Typer(
    cls=_SuggestByDefault,
    help="Active learning: rank unlabelled images by how much labelling them would help (the default verb, "
         "suggest), or simulate strategies against random labelling.",
    epilog="Examples: imgclass active labelled/ --pool unlabelled/ --budget 50 --strategy margin   |   "
           "imgclass active simulate cifar10-12k/ --rounds 8 --per-round 50 --strategies entropy,margin,coreset",
    no_args_is_help=True, rich_markup_mode=None)
app.add_typer(active_app, name="active")


@active_app.command("suggest", epilog="Example: imgclass active labelled/ --pool unlabelled/ --budget 50 "
                                      "--strategy margin --out runs/next-batch")
def suggest(
    data: Annotated[str, typer.Argument(metavar="DATA", help="The labelled images so far: folder per class, CSV or JSONL.")],
    pool: Annotated[str, typer.Option("--pool", help="Folder (searched recursively), CSV or JSONL of the unlabelled images to rank.")],
    budget: Annotated[int, typer.Option("--budget", "-n", help="How many images to suggest; must not exceed the pool size.")],
    strategy: Annotated[str, typer.Option("--strategy", "-s", help=f"Ranking: {STRATEGY_NAMES}.")] = "entropy",
    method: Annotated[str, typer.Option("--method", "-m", help="FEATURES+CLASSIFIER method trained on DATA (lite0 embeddings are cached on disk).")] = "lite0+logreg",
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for suggestions.csv and montage.png (default runs/<data>-active).")] = None,
    seed: Annotated[int, typer.Option(help="Seed (random strategy, estimator).")] = 0,
    show: Annotated[int, typer.Option(help="How many rows to print.")] = 20,
    task: TaskOpt = None,
    jobs: JobsOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    json_out: Annotated[bool, typer.Option("--json", help="Print the suggestions as JSON.")] = False,
):
    """Write the next images to label, most useful first: suggestions.csv (rank, path, score, predicted,
    probability) and a thumbnail montage.png."""
    from .. import api

    with api.new_run_dir(data, "active", out) as out:
        res = api.active(data, pool, budget, strategy=strategy, method=method, seed=seed, task=task, n_jobs=jobs,
                         max_pixels=max_pixels, out=out, log=err)
    warn_skipped(res.skipped)
    notes(res.notes)
    if json_out:
        print_json(res.to_dict())
        return
    from rich.table import Table

    t = Table(title=f"label next ({res.strategy}, {res.method} trained on {res.n_labelled} images; "
                    f"{res.pool_size} pool images ranked)", title_justify="left")
    for c in ("rank", "path", "score", "predicted", "probability"):
        t.add_column(c, justify="left" if c in ("path", "predicted") else "right",
                     overflow="fold" if c == "path" else "ellipsis")  # paths are copied: never cut them
    for r in list(res)[:max(show, 0)]:
        t.add_row(str(r["rank"]), short_path(r["path"]), "" if r["score"] is None else f"{r['score']:.4f}",
                  r["predicted"], f"{r['probability']:.1%}")
    con = console()
    con.print(t)
    if len(res) > show:
        con.print(f"... and {len(res) - show} more")
    con.print(f"wrote {res.paths['csv']} and {res.paths['montage']}")


@active_app.command("simulate", epilog="Example: imgclass active simulate cifar10-12k/ --rounds 8 --per-round 50 "
                                       "--strategies entropy,margin,coreset --seeds 3 --out runs/al-sim")
def simulate(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Labelled folder, CSV or JSONL; its training labels are hidden and revealed as picked.")],
    rounds: Annotated[int, typer.Option(help="Rounds of picking after the initial set.")] = 8,
    per_round: Annotated[int, typer.Option("--per-round", help="Images labelled per round.")] = 50,
    strategies: Annotated[str, typer.Option("--strategies", help=f"Comma-separated: {STRATEGY_NAMES} (random is always added as the baseline).")] = "entropy,margin,least-confidence,coreset,random",
    initial: Annotated[int, typer.Option(help="Size of the initial labelled set.")] = 100,
    init: Annotated[str, typer.Option(help="Initial set: stratified (equal per class) or random.")] = "stratified",
    seeds: Annotated[int, typer.Option(help="Repeat with seeds 0..N-1 (initial set, random picks); curves show mean and std.")] = 3,
    method: Annotated[str, typer.Option("--method", "-m", help="FEATURES+CLASSIFIER method; features are computed once, the classifier is refit every round.")] = "lite0+logreg",
    val: Annotated[str | None, typer.Option(help="Validation: a fraction of DATA (e.g. 0.2) or a labelled folder/CSV (default: DATA's val split, else 20%).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Folder for simulation.json, curves.csv and simulation.png (default runs/<data>-active-sim).")] = None,
    task: TaskOpt = None,
    jobs: JobsOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    json_out: Annotated[bool, typer.Option("--json", help="Print the curves and the summary as JSON.")] = False,
):
    """Simulate active learning on labelled data and plot validation accuracy against the number of labels,
    for each strategy against random (mean of several seeds with a ±1 std band)."""
    from .. import api

    with api.new_run_dir(data, "active-sim", out) as out:
        res = api.active_simulate(data, strategies=strategies, rounds=rounds, per_round=per_round, initial=initial,
                                  init=init, seeds=seeds, method=method, val=val, task=task, n_jobs=jobs,
                                  max_pixels=max_pixels, out=out, log=err)
    warn_skipped(res.skipped)
    if json_out:
        print_json(res.to_dict())
        return
    from rich.table import Table

    t = Table(title=f"validation accuracy vs labels: {res.method} on {res.dataset} "
                    f"(mean ± std over {len(res.seeds)} seeds)", title_justify="left")
    t.add_column("labels", justify="right")
    for s in res.strategies:
        t.add_column(s, justify="right")
    means = {s: res.mean(s) for s in res.strategies}
    stds = {s: res.std(s) for s in res.strategies}
    for i, n in enumerate(res.n_labels):
        t.add_row(str(n), *[f"{means[s][i]:.4f} ± {stds[s][i]:.4f}" for s in res.strategies])
    con = console()
    con.print(t)
    gains = ", ".join(f"{r['strategy']} {r['gain_end'] * 100:+.1f}" for r in res.summary() if r["strategy"] != "random")
    con.print(f"gain over random at {res.n_labels[-1]} labels (points): {gains}")
    con.print(f"wrote {res.paths['json']}, {res.paths['csv']} and {res.paths['plot']}")
