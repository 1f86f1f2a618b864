"""``tune``: check the options, split the data once, open (or resume) the Optuna study and run the
missing trials, writing the outputs after every trial."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..._util import progress_bar, to_jsonable
from ...data import ImageDataset, load_dataset
from ...errors import ConfigError, DataError
from .objective import TrialFailed, deep_config, make_objective, make_runner, quiet
from .result import TuneResult, trial_line, write_outputs
from .space import search_space


def _metric_for(task: str, metric: str | None) -> str:
    from ...tasks import HEADLINE

    keys = [k for k in HEADLINE.get(task, HEADLINE["default"]) if k != "mistake_severity"]
    if metric is None:
        return keys[0]
    if metric not in keys:
        raise ConfigError(f"--metric {metric}: choose one of {', '.join(keys)} for {task} data")
    return metric


def tune(data: ImageDataset | str | os.PathLike, method: str, trials: int = 20, *, timeout: float | None = None,
         out: str | os.PathLike | None = None, seed: int = 0, val_split: float = 0.2, study_name: str | None = None,
         metric: str | None = None, task: str | None = None, n_jobs: int | None = None, tune_features: bool = True,
         epochs: int | None = None, train_config: dict[str, Any] | None = None, img_size: int | None = None,
         log: Callable[[str], Any] = lambda m: None) -> TuneResult:
    """Search hyper-parameters of ``method`` on ``data`` with Optuna; returns a ``TuneResult``.

    ``trials`` counts every finished trial of the study, trial 0 (the defaults) included; running
    again with the same ``out`` resumes and runs only the missing ones (raise ``trials`` to search
    more). ``timeout`` (seconds) stops starting new trials. Deep methods train ``epochs`` per trial
    (default: the method's) with ``train_config`` options fixed. See ``imgclass.training.tuning`` for
    the search space and the files written to ``out`` (default ``runs/<data>-<method>-tune``).
    """
    from ...models import parse_spec

    _check_budget(trials, timeout, val_split)
    spec = parse_spec(method)
    fixed = _fixed_options(spec, seed, epochs, train_config, img_size)
    ds = _labelled(data, task)
    metric = _metric_for(ds.task or "multiclass", metric)
    space = search_space(spec.text, tune_features, fixed)
    train_ds, val_ds, out = _split(ds, data, spec.text, val_split, seed, out)
    name = study_name or spec.text
    identity = {"method": spec.text, "metric": metric, "data": ds.fingerprint(), "val_split": val_split,
                "seed": seed, "fixed": to_jsonable(fixed), "img_size": img_size, "tune_features": tune_features}
    identity_doc = {"data": ds.name, "val_split": val_split, "seed": seed}
    with _optuna_quiet():
        study, n_existing, done, remaining = _open_study(out, name, identity, trials, seed, fixed)
        if n_existing:
            log(f"resuming study {name!r} in {out / 'study.db'}: {done} of {trials} trials finished"
                + (f"; running {remaining} more" if remaining else "; nothing to run (raise --trials to search more)"))
        if remaining:
            log(f"tune {spec.text}: {remaining} trials, {metric} on {len(val_ds)} validation images "
                f"({len(train_ds)} training); parameters {', '.join(space) or 'none'}")
        runner = make_runner(spec, train_ds, val_ds, seed, n_jobs, metric, space, fixed, img_size, quiet(log))
        started = _optimize(study, make_objective(runner, space), remaining, timeout, spec.text, metric, out,
                            identity_doc, log)
    res = write_outputs(study, out, spec.text, metric, identity_doc, plot=True)
    res.new_trials, res.stopped_by_timeout = started, started < remaining
    res.study_name = name
    if res.value is None:
        raise DataError(f"no trial of {spec.text} finished (see the error column of {out / 'trials.csv'}); "
                        "fix the data or options and run again")
    if res.default_value is not None:
        log(f"default {res.default_value:.4f} vs best {res.value:.4f} ({metric}, trial {res.best_trial})")
    return res


def _check_budget(trials: int, timeout: float | None, val_split: float) -> None:
    if trials < 1:
        raise ConfigError(f"--trials {trials}: give at least 1 (trial 0 is the method's defaults)")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout {timeout}: give a number of seconds > 0")
    if not 0.0 < val_split < 1.0:
        raise ConfigError(f"--val-split {val_split}: tuning scores every trial on a validation split; give a "
                          "fraction between 0 and 1, e.g. 0.2")


def _fixed_options(spec, seed: int, epochs: int | None, train_config: dict[str, Any] | None,
                   img_size: int | None) -> dict[str, Any]:
    """The user's deep training options, kept out of the search; checked before any trial runs."""
    fixed = dict(train_config or {})
    if epochs is not None:
        fixed["epochs"] = epochs
    if spec.kind != "deep" and (fixed or img_size is not None):
        raise ConfigError(f"--epochs and --img-size apply to deep methods; {spec.text} is a feature pipeline")
    if spec.kind == "deep":
        deep_config(spec.text, seed, fixed)  # bad fixed options fail before any trial
    return fixed


def _labelled(data: ImageDataset | str | os.PathLike, task: str | None) -> ImageDataset:
    if isinstance(data, ImageDataset):
        ds = data.with_task(task) if task else data
    else:
        ds = load_dataset(data, task=task)
    if not ds.is_labelled:
        raise DataError(f"{ds.name}: has no labels; tuning needs labelled data (a folder per class, CSV or JSONL)")
    return ds


def _split(ds: ImageDataset, data, method: str, val_split: float, seed: int,
           out: str | os.PathLike | None) -> tuple[ImageDataset, ImageDataset, Path]:
    """The one seeded split every trial uses, saved as ``OUT/split.json``; returns ``(train, val, OUT)``."""
    from ..run import default_run_dir

    idx = ds.plan_split(val=val_split, seed=seed)
    train_ds, val_ds = ds.subset(idx["train"], f"{ds.name}:train"), ds.subset(idx.get("val", []), f"{ds.name}:val")
    if not len(val_ds):
        raise DataError(f"{ds.name}: the split left no validation images; add images or raise --val-split")
    out = Path(out) if out is not None else default_run_dir(
        ds.name if isinstance(data, ImageDataset) else data, f"{method}-tune")
    out.mkdir(parents=True, exist_ok=True)
    ds.save_split(out / "split.json", idx, seed=seed, val=val_split, test=0.0)
    return train_ds, val_ds, out


@contextlib.contextmanager
def _optuna_quiet():
    """Optuna's own logging off while the study runs: ``tune`` logs one line per trial instead."""
    import optuna

    old_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(old_verbosity)


def _open_study(out: Path, name: str, identity: dict[str, Any], trials: int, seed: int, fixed: dict[str, Any]):
    """Create or resume the SQLite study in ``OUT/study.db``: trials left RUNNING by a killed process are
    marked FAIL, the sampler is reseeded and trial 0 (the defaults) is queued if it is missing.
    Returns ``(study, trials in it, finished trials, trials still to run)``."""
    import optuna
    from optuna.trial import TrialState

    storage = optuna.storages.RDBStorage(f"sqlite:///{(out / 'study.db').resolve()}")
    study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                pruner=optuna.pruners.MedianPruner(
                                    n_startup_trials=3, n_warmup_steps=1 if fixed.get("epochs", 3) >= 3 else 0))
    _check_identity(study, identity, out, name)
    study_id = storage.get_study_id_from_name(name)
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # left by a killed process
        tid = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(tid, "error", "interrupted: the process stopped during this trial")
        storage.set_trial_state_values(tid, TrialState.FAIL)
    existing = study.get_trials(deepcopy=False)
    done = sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in existing)
    # reseeded by history length: a resumed search does not replay the first run's random proposals
    study.sampler = optuna.samplers.TPESampler(seed=seed + len(existing), n_startup_trials=min(10, max(4, trials // 4)))
    remaining = max(0, trials - done)
    has_defaults = any(t.user_attrs.get("defaults") and t.state in (TrialState.COMPLETE, TrialState.WAITING)
                       for t in existing)
    if remaining and not has_defaults:
        study.enqueue_trial({}, user_attrs={"defaults": True})
    return study, len(existing), done, remaining


def _optimize(study, objective, remaining: int, timeout: float | None, method: str, metric: str, out: Path,
              identity_doc: dict[str, Any], log: Callable[[str], Any]) -> int:
    """Run up to ``remaining`` trials (or until ``timeout``), logging each and rewriting the outputs after
    it; returns how many trials were started."""
    started = [0]

    def after_trial(study, trial, bar):
        started[0] += 1
        bar.advance(1)
        log(trial_line(trial, metric))
        write_outputs(study, out, method, metric, identity_doc, plot=False)

    if remaining:
        with progress_bar(remaining, f"tune {method}", unit="trial") as bar:
            study.optimize(objective, n_trials=remaining, timeout=timeout, catch=(TrialFailed,),
                           callbacks=[lambda s, t: after_trial(s, t, bar)])
    return started[0]


def _check_identity(study, identity: dict[str, Any], out: Path, name: str) -> None:
    """A resumed study must search the same objective; otherwise its trials would not compare."""
    old = study.user_attrs.get("imgclass")
    if old is None:
        study.set_user_attr("imgclass", identity)
        return
    diff = [k for k, v in identity.items() if old.get(k) != v]
    if diff:
        what = ", ".join(f"{k} {old.get(k)!r} -> {identity[k]!r}" if k != "data" else "the data changed" for k in diff)
        raise ConfigError(f"--out {out}: its study {name!r} was made with other settings ({what}); use another "
                          "--out or --study-name, or the same options to resume")

