"""``imgclass tune`` (Optuna hyper-parameter search) and ``imgclass lr-find`` (a learning-rate range test)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import LABELLED_HELP, JobsOpt, TaskOpt
from ._output import err, print_json
from .app import app

# The search space of imgclass.training.tuning (kept here as text so that --help imports nothing heavy;
# tests/test_tune.py checks that the two agree).
SPACE_HELP = """Search space (other parameters keep the method's defaults):

\b
svm              C                    log-uniform 0.01 .. 1000
svm              gamma                log-uniform 1e-05 .. 0.1
linsvm           C                    log-uniform 0.0001 .. 10
logreg           C                    log-uniform 0.0001 .. 100
rf               n_estimators         integer, log-uniform 50 .. 500
rf               max_depth            one of None, 8, 16, 32
rf               min_samples_leaf     integer, uniform 1 .. 8
rf               max_features         one of sqrt, log2
knn              n_neighbors          integer, log-uniform 1 .. 50
knn              weights              one of uniform, distance
knn              p                    one of 1, 2
tree             max_depth            one of None, 4, 8, 16, 32
tree             min_samples_leaf     integer, uniform 1 .. 20
mlp              alpha                log-uniform 1e-06 .. 0.1
mlp              learning_rate_init   log-uniform 0.0001 .. 0.01
hog features     hog.pixels_per_cell  one of 8, 16
hog features     hog.orientations     one of 6, 9, 12
pixels features  pixels.size          one of 8, 16, 24
lbp features     lbp.grid             one of 1, 2, 3, 4
deep             lr                   log-uniform 0.0001 .. 0.01
deep             weight_decay         log-uniform 1e-05 .. 0.1
deep             label_smoothing      uniform 0 .. 0.2
deep             mixup                uniform 0 .. 0.4
deep             dropout              uniform 0 .. 0.5
deep             batch_size           one of 32, 64, 128
"""


@app.command(help="Search hyper-parameters with Optuna on one seeded split; trial 0 is the method's defaults.\n\n"
                  "Every trial trains on the same split and is scored on its validation part (accuracy; micro-F1 for "
                  "multi-label data). TPE sampling, median pruning of deep trials after each epoch, and an SQLite "
                  "study: rerun with the same --out to resume (only the missing trials run). OUT holds study.db, "
                  "best.json, trials.csv and optimization.png.\n\n" + SPACE_HELP,
             epilog="Example: imgclass tune photos/ --method hog+svm --trials 30 --out runs/photos-tune; then "
                    "imgclass train photos/ --params runs/photos-tune/best.json")
def tune(
    data: Annotated[str, typer.Argument(metavar="DATA", help=LABELLED_HELP)],
    method: Annotated[str, typer.Option("--method", "-m", help="Method spec to tune, e.g. hog+svm, pixels+rf, smallcnn.")],
    trials: Annotated[int, typer.Option(help="Finished trials the study should hold, trial 0 (the defaults) included.")] = 20,
    timeout: Annotated[float | None, typer.Option(help="Start no new trial after this many seconds (run again to continue).")] = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Study folder (default runs/<data>-<method>-tune); reusing it resumes.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the split, the estimators and the sampler.")] = 0,
    val_split: Annotated[float, typer.Option(help="Fraction held out to score the trials (ignored with pre-split folders).")] = 0.2,
    study_name: Annotated[str | None, typer.Option(help="Name of the study inside study.db (default: the method).")] = None,
    metric: Annotated[str | None, typer.Option(help="Headline metric to maximise (default accuracy; micro_f1 for multi-label).")] = None,
    features: Annotated[bool, typer.Option("--features/--no-features", help="Also search feature parameters (HOG cells, pixel size, LBP grid).")] = True,
    epochs: Annotated[int | None, typer.Option(help="Deep: epochs per trial (fixed; default: the method's).")] = None,
    img_size: Annotated[int | None, typer.Option(help="Deep: input size in pixels (fixed).")] = None,
    task: TaskOpt = None,
    jobs: JobsOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
):
    from .. import api

    res = api.tune(data, method, trials, timeout=timeout, out=out, seed=seed, val_split=val_split,
                   study_name=study_name, metric=metric, task=task, n_jobs=jobs, tune_features=features,
                   epochs=epochs, img_size=img_size, log=err)
    if json_out:
        print_json(res.to_dict())
        return
    say = typer.echo  # plain lines: rich would wrap them at 80 columns in logs and pipes
    say(f"tuned {res.method}: {res.trials} trials ({res.complete} complete, {res.pruned} pruned, {res.failed} failed), "
        f"{res.new_trials} new" + (" (stopped by --timeout; run again to continue)" if res.stopped_by_timeout else ""))
    if res.default_value is not None:
        say(f"validation {res.metric}: default {res.default_value:.4f} vs best {res.value:.4f} "
            f"({res.improvement:+.4f}, trial {res.best_trial})")
    else:
        say(f"validation {res.metric}: best {res.value:.4f} (trial {res.best_trial}; the defaults trial failed)")
    say("best parameters: " + (", ".join(f"{k}={_fmt(v)}" for k, v in res.params.items()) or "none searched"))
    say(f"files: {res.out}/best.json, trials.csv, optimization.png, study.db")
    say(f"train with them: imgclass train {data} --params {res.out / 'best.json'}")


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


@app.command("lr-find", epilog="Example: imgclass lr-find photos/ --method smallcnn --out lr.png")
def lr_find(
    data: Annotated[str, typer.Argument(metavar="DATA", help=LABELLED_HELP)],
    method: Annotated[str, typer.Option("--method", "-m", help="A deep method, e.g. smallcnn or lite0.")] = "smallcnn",
    out: Annotated[Path, typer.Option("--out", "-o", help="Where to write the loss-vs-LR plot.")] = Path("lr_find.png"),
    steps: Annotated[int, typer.Option(help="Training steps in the sweep.")] = 100,
    start: Annotated[float, typer.Option(help="First learning rate.")] = 1e-6,
    end: Annotated[float, typer.Option(help="Last learning rate.")] = 1.0,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    img_size: Annotated[int | None, typer.Option(help="Input size in pixels (default: the backbone's).")] = None,
    optimizer: Annotated[str, typer.Option(help="adamw, sgd or rmsprop.")] = "adamw",
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    json_out: Annotated[bool, typer.Option("--json", help="Print the curve and the suggestion as JSON.")] = False,
):
    """Learning-rate range test: plot loss against LR and suggest a value for --lr."""
    from .. import api

    res = api.lr_find(data, method, out=out, steps=steps, start=start, end=end, batch_size=batch_size,
                      img_size=img_size, optimizer=optimizer, seed=seed)
    if json_out:
        print_json({"suggestion": res.suggestion, "lrs": res.lrs, "losses": res.losses, "plot": str(out)})
        return
    sug = f"{res.suggestion:.2e}" if res.suggestion else "none (too few steps)"
    typer.echo(f"suggested --lr {sug}  (plot: {out})")
