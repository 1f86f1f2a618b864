"""Hyper-parameter search with Optuna (``imgclass tune``).

Every trial trains the method on the same seeded stratified split of the data and scores it on the
validation part with the task's headline metric (``accuracy``; ``micro_f1`` for multi-label data; any
other key of ``imgclass.tasks.HEADLINE`` with ``metric``). **Trial 0 is the method's default
parameters**, so the study always holds the baseline and the best value is never below it.

Optuna does the searching (nothing here re-implements it): TPE sampling seeded with ``seed``, median
pruning of deep trials from the validation score reported after every epoch, and an SQLite study in
``OUT/study.db``. A search that was killed continues when started again with the same ``OUT``: the
trials already COMPLETE or PRUNED are counted and only the ones missing to reach ``trials`` run (a
trial that was running when the process died is marked FAIL; failed trials do not count). One process
per study: two searches writing the same ``study.db`` at once are not supported.

Search space (parameters not listed keep the method's default; deep options given by the user,
e.g. ``epochs`` or ``optimizer``, are fixed and not tuned):

=============  ====================  =====================================================
family         parameter             range
=============  ====================  =====================================================
svm            C                     log-uniform 1e-2 .. 1e3
svm            gamma                 log-uniform 1e-5 .. 1e-1 (features are standardised)
linsvm         C                     log-uniform 1e-4 .. 10
logreg         C                     log-uniform 1e-4 .. 100
rf             n_estimators          integer, log-uniform 50 .. 500
rf             max_depth             one of None, 8, 16, 32
rf             min_samples_leaf      integer 1 .. 8
rf             max_features          one of sqrt, log2
knn            n_neighbors           integer, log-uniform 1 .. 50
knn            weights               one of uniform, distance
knn            p                     one of 1 (Manhattan), 2 (Euclidean)
tree           max_depth             one of None, 4, 8, 16, 32
tree           min_samples_leaf      integer 1 .. 20
mlp            alpha                 log-uniform 1e-6 .. 0.1
mlp            learning_rate_init    log-uniform 1e-4 .. 1e-2
hog features   hog.pixels_per_cell   one of 8, 16 (on the 64 px image)
hog features   hog.orientations      one of 6, 9, 12
pixels         pixels.size           one of 8, 16, 24
lbp features   lbp.grid              one of 1, 2, 3, 4
deep           lr                    log-uniform 1e-4 .. 1e-2 (SGD: 1e-3 .. 0.3)
deep           weight_decay          log-uniform 1e-5 .. 0.1
deep           label_smoothing       uniform 0 .. 0.2
deep           mixup                 uniform 0 .. 0.4 (alpha; 0 = off)
deep           dropout               uniform 0 .. 0.5
deep           batch_size            one of 32, 64, 128
=============  ====================  =====================================================

Feature parameters are searched only with ``tune_features`` (the default); extracted features are
cached per feature setting, so classifier-only trials cost one classifier fit each. Task options
(thresholds, ``balance``, ``hierarchy``) keep their defaults.

Files in ``OUT`` (default ``runs/<data>-<method>-tune``): ``study.db`` (the Optuna study),
``split.json``, ``best.json`` (method, params, value, metric, default_value, trials; written
atomically after every trial), ``trials.csv`` and ``optimization.png``. ``imgclass train DATA
--params OUT/best.json`` trains with the best parameters (``imgclass.api.train(params=...)``).
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._util import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    figure_png,
    progress_bar,
    to_jsonable,
)
from ..data import ImageDataset, load_dataset
from ..errors import ConfigError, DataError, ImgclassError


@dataclass(frozen=True)
class Param:
    """One searched hyper-parameter: a ``float`` or ``int`` range (``log`` scale) or a ``choice``."""

    name: str
    kind: str  # float | int | choice
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial, key: str) -> Any:
        """Ask the Optuna ``trial`` for a value under the parameter name ``key``."""
        if self.kind == "float":
            return trial.suggest_float(key, self.low, self.high, log=self.log)
        if self.kind == "int":
            return trial.suggest_int(key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_categorical(key, list(self.choices))

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(str(c) for c in self.choices)
        return f"{'integer, ' if self.kind == 'int' else ''}{'log-uniform' if self.log else 'uniform'} " \
               f"{self.low:g} .. {self.high:g}"


def _f(name, low, high, log=False):
    return Param(name, "float", low, high, log)


def _i(name, low, high, log=False):
    return Param(name, "int", low, high, log)


def _c(name, *choices):
    return Param(name, "choice", choices=tuple(choices))


#: per classifier of ``imgclass.models.CLASSIFIERS``: its searched scikit-learn keyword arguments
CLASSIFIER_SPACE: dict[str, tuple[Param, ...]] = {
    "svm": (_f("C", 1e-2, 1e3, log=True), _f("gamma", 1e-5, 1e-1, log=True)),
    "linsvm": (_f("C", 1e-4, 10.0, log=True),),
    "logreg": (_f("C", 1e-4, 100.0, log=True),),
    "rf": (_i("n_estimators", 50, 500, log=True), _c("max_depth", None, 8, 16, 32), _i("min_samples_leaf", 1, 8),
           _c("max_features", "sqrt", "log2")),
    "knn": (_i("n_neighbors", 1, 50, log=True), _c("weights", "uniform", "distance"), _c("p", 1, 2)),
    "tree": (_c("max_depth", None, 4, 8, 16, 32), _i("min_samples_leaf", 1, 20)),
    "mlp": (_f("alpha", 1e-6, 0.1, log=True), _f("learning_rate_init", 1e-4, 1e-2, log=True)),
}
#: per feature extractor: searched constructor arguments (named ``extractor.param`` in a study)
FEATURE_SPACE: dict[str, tuple[Param, ...]] = {
    "hog": (_c("pixels_per_cell", 8, 16), _c("orientations", 6, 9, 12)),
    "pixels": (_c("size", 8, 16, 24),),
    "lbp": (_c("grid", 1, 2, 3, 4),),
}
#: deep methods: ``TrainConfig`` fields (epochs stay fixed: the user's ``epochs`` or the method default)
DEEP_SPACE: tuple[Param, ...] = (
    _f("lr", 1e-4, 1e-2, log=True), _f("weight_decay", 1e-5, 0.1, log=True), _f("label_smoothing", 0.0, 0.2),
    _f("mixup", 0.0, 0.4), _f("dropout", 0.0, 0.5), _c("batch_size", 32, 64, 128),
)
SGD_LR = _f("lr", 1e-3, 0.3, log=True)


def search_space(method: str, tune_features: bool = True, fixed: dict[str, Any] | None = None) -> dict[str, Param]:
    """The searched parameters of ``method`` by study name (``C``, ``hog.pixels_per_cell``, ``lr``).

    Deep options in ``fixed`` (the user's own training options) are left out of the search.
    """
    from ..models import parse_spec

    spec = parse_spec(method)
    if spec.kind == "deep":
        fixed = fixed or {}
        space = {p.name: p for p in DEEP_SPACE if p.name not in fixed}
        if "lr" in space and fixed.get("optimizer") == "sgd":
            space["lr"] = SGD_LR
        return space
    space = {p.name: p for p in CLASSIFIER_SPACE.get(spec.classifier or "", ())}
    if tune_features:
        for feat in spec.features:
            for p in FEATURE_SPACE.get(feat, ()):
                space[f"{feat}.{p.name}"] = p
    return space


def space_table() -> str:
    """The search space as plain text lines (``imgclass tune --help``)."""
    rows = [(clf, p.name, p.describe()) for clf, ps in CLASSIFIER_SPACE.items() for p in ps]
    rows += [(f"{feat} features", f"{feat}.{p.name}", p.describe()) for feat, ps in FEATURE_SPACE.items() for p in ps]
    rows += [("deep", p.name, p.describe()) for p in DEEP_SPACE]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows)


# --------------------------------------------------------------------------- parameters for train
def read_best(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``best.json`` written by ``tune``; ``DataError`` naming the file when it is unusable."""
    hint = "give the best.json written by 'imgclass tune'"
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"--params {path}: cannot read it ({exc.strerror or exc}); {hint}") from None
    except ValueError as exc:
        raise DataError(f"--params {path}: not valid JSON ({exc}); {hint}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("params"), dict):
        raise DataError(f"--params {path}: has no \"params\" object; {hint}")
    return doc


def resolve_params(params: dict[str, Any] | str | os.PathLike, method: str | None) -> tuple[str, dict[str, Any]]:
    """``(method, params)`` from a ``best.json`` path or a parameter dict and the user's ``method``.

    The method defaults to the one recorded in ``best.json``; a different ``method`` is a ``ConfigError``.
    """
    from ..models import parse_spec

    if isinstance(params, (str, os.PathLike)):
        doc = read_best(params)
        values, recorded = dict(doc["params"]), doc.get("method")
    else:
        values, recorded = dict(params), None
    if recorded and method and parse_spec(method).text != parse_spec(recorded).text:
        raise ConfigError(f"--method {method} differs from {recorded} in --params {params}; drop --method "
                          f"or tune {method} first")
    method = method or recorded
    if not method:
        raise ConfigError("--params: name the method too (--method); a parameter dict does not record it")
    return method, values


def route_params(method: str, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Send tuned parameters where they belong: ``train_config`` (deep methods), or
    ``classifier_params`` and ``feature_params`` (feature pipelines; ``hog.pixels_per_cell`` style keys).
    Unknown names are a ``ConfigError`` before anything is trained."""
    from dataclasses import fields

    from ..features import make_extractor
    from ..models import make_classifier, parse_spec
    from .engine import TrainConfig

    spec = parse_spec(method)
    if spec.kind == "deep":
        known = {f.name for f in fields(TrainConfig)}
        bad = sorted(k for k in params if k not in known)
        if bad:
            raise ConfigError(f"--params: {', '.join(bad)} are not deep training options of {spec.text}; "
                              "give the best.json that 'imgclass tune' wrote for this method")
        return {"train_config": dict(params)}
    clf: dict[str, Any] = {}
    feats: dict[str, dict[str, Any]] = {}
    for k, v in params.items():
        name, dot, p = k.partition(".")
        if not dot:
            clf[k] = v
        elif name in spec.features:
            feats.setdefault(name, {})[p] = v
        else:
            raise ConfigError(f"--params: {k} names features {name!r} that {spec.text} does not use")
    try:
        make_classifier(spec.classifier, params=clf)
    except TypeError as exc:
        raise ConfigError(f"--params: bad parameters for the {spec.classifier} classifier ({exc})") from None
    if feats:
        make_extractor(list(spec.features), feats)
    return {"classifier_params": clf, "feature_params": feats}


# --------------------------------------------------------------------------- result
@dataclass
class TuneResult:
    """The outcome of a search: the best parameters and value next to the defaults' value."""

    method: str
    metric: str
    value: float | None  # best validation score (COMPLETE trials)
    params: dict[str, Any]  # the best trial's parameters (the defaults' values when trial 0 won)
    default_value: float | None  # trial 0, the method's default parameters
    best_trial: int | None
    trials: int  # finished trials in the study (COMPLETE + PRUNED)
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    new_trials: int = 0  # trials started by this call
    stopped_by_timeout: bool = False
    out: Path = field(default_factory=Path)
    study_name: str = ""

    @property
    def improvement(self) -> float | None:
        """Best minus default value (``None`` when either is missing)."""
        return None if self.value is None or self.default_value is None else self.value - self.default_value

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"method": self.method, "params": self.params, "value": self.value, "metric": self.metric,
                            "default_value": self.default_value, "trials": self.trials,
                            "best_trial": self.best_trial, "complete": self.complete, "pruned": self.pruned,
                            "failed": self.failed, "new_trials": self.new_trials,
                            "stopped_by_timeout": self.stopped_by_timeout, "study": self.study_name,
                            "out": str(self.out)})


class _TrialFailed(Exception):
    """A trial's own error (bad parameter combination): recorded as FAIL, the search goes on."""


# --------------------------------------------------------------------------- runners
def _leaf_estimator(est):
    """The scikit-learn classifier inside imgclass's wrappers (Pipeline, calibration, one-vs-rest)."""
    while True:
        if hasattr(est, "steps"):
            est = est.steps[-1][1]
        elif type(est).__name__ in ("CalibratedClassifierCV", "OneVsRestClassifier"):
            est = est.estimator
        else:
            return est


class _ClassicalRunner:
    """Feature pipeline trials: features extracted once per feature setting, then one classifier fit."""

    CACHE_SIZE = 3

    def __init__(self, method, train, val, seed, n_jobs, metric, space):
        self.method, self.train, self.val, self.seed, self.n_jobs = method, train, val, seed, n_jobs
        self.metric, self.space = metric, space
        self.task = train.task or "multiclass"
        self._cache: dict[str, tuple] = {}

    def _features(self, model):
        from ..features import extractor_params

        key = json.dumps(extractor_params(model.extractor), sort_keys=True, default=str)
        if key not in self._cache:
            model.fit_extractor(self.train)
            ftr = model.features(self.train, "features (train)")
            fva = model.features(self.val, "features (val)")
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (ftr, fva, model.extractor)
        return self._cache[key]

    def run(self, trial, overrides: dict[str, Any], is_default: bool) -> tuple[float, dict[str, Any]]:
        from ..features import extractor_params
        from ..models import build_model
        from ..tasks import metrics
        from ..tasks.decision import tune_decision

        routed = _split_classical(overrides)
        model = build_model(self.method, seed=self.seed, n_jobs=self.n_jobs, **routed)
        model.classes_, model.task_, model.taxonomy_ = list(self.train.classes), self.task, self.train.taxonomy
        ftr, fva, model.extractor = self._features(model)
        model.fit_features(ftr.X, self.train.targets[ftr.ok])
        P = model.predict_proba_features(fva.X)
        y = self.val.targets[fva.ok]
        decision = tune_decision(self.task, model.classes_, y, P, taxonomy=model.taxonomy_)
        value = float(metrics(self.task, y, P, model.classes_, decision=decision)[self.metric])
        effective: dict[str, Any] = {}
        if is_default:  # the defaults' values of the searched parameters, for best.json and trials.csv
            clf = _leaf_estimator(model.new_classifier()).get_params(deep=False)
            feats = extractor_params(model.extractor)
            for key in self.space:
                name, dot, p = key.partition(".")
                effective[key] = feats.get(name, {}).get(p) if dot else clf.get(key)
        return value, effective


def _split_classical(params: dict[str, Any]) -> dict[str, Any]:
    clf = {k: v for k, v in params.items() if "." not in k}
    feats: dict[str, dict[str, Any]] = {}
    for k, v in params.items():
        if "." in k:
            name, _, p = k.partition(".")
            feats.setdefault(name, {})[p] = v
    return {"classifier_params": clf, "feature_params": feats or None}


class _DeepRunner:
    """Deep trials: the engine trains with the trial's options and reports every epoch's validation
    score to Optuna, which may prune the trial."""

    def __init__(self, method, train, val, seed, n_jobs, metric, space, fixed, img_size, log):
        self.method, self.train, self.val, self.seed, self.n_jobs = method, train, val, seed, n_jobs
        self.metric, self.space, self.fixed, self.img_size, self.log = metric, space, fixed, img_size, log
        self.score_key = "val_micro_f1" if train.task == "multilabel" else "val_accuracy"

    def run(self, trial, overrides: dict[str, Any], is_default: bool) -> tuple[float, dict[str, Any]]:
        import optuna

        from .fit import fit_model

        cfg = {**self.fixed, **overrides}

        def on_epoch(rec):
            v = rec.get(self.score_key)
            if v is None:
                return
            trial.report(float(v), int(rec["epoch"]))
            if not is_default and trial.should_prune():
                raise optuna.TrialPruned(f"epoch {rec['epoch']}: {self.score_key} {v:.4f} below the median")

        model, _ = fit_model(self.train, self.method, val=self.val, seed=self.seed, n_jobs=self.n_jobs,
                             train_config=cfg, img_size=self.img_size, log=self.log, on_epoch=on_epoch)
        value = (model.meta_.get("metrics") or {}).get("val", {}).get(self.metric)
        if value is None:
            raise RuntimeError(f"no validation {self.metric} (no readable validation images?)")
        effective: dict[str, Any] = {}
        if is_default:
            tc = _deep_config(self.method, self.seed, cfg)
            resolved = {"lr": tc.default_lr(), "weight_decay": tc.default_weight_decay()}
            effective = {k: resolved.get(k, getattr(tc, k)) for k in self.space}
        return float(value), effective


def _deep_config(method: str, seed: int, cfg: dict[str, Any]):
    from ..models import parse_spec
    from .engine import TrainConfig
    from .fit import method_defaults

    spec = parse_spec(method)
    return TrainConfig.from_dict({"seed": seed, **method_defaults(spec.backbone, spec.pretrained), **cfg})


def _quiet(log: Callable[[str], Any]) -> Callable[[str], None]:
    """Pass on each warning or note once; drop the per-trial chatter (epochs, temperatures)."""
    seen: set[str] = set()

    def _log(msg: str) -> None:
        if msg.startswith(("warning", "note", "skipped")) and msg not in seen:
            seen.add(msg)
            log(msg)
    return _log


# --------------------------------------------------------------------------- tune
def _metric_for(task: str, metric: str | None) -> str:
    from ..tasks import HEADLINE

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
    (default: the method's) with ``train_config`` options fixed. See the module docstring for the
    search space and the files written to ``out`` (default ``runs/<data>-<method>-tune``).
    """
    import optuna

    from ..models import parse_spec
    from .run import default_run_dir

    if trials < 1:
        raise ConfigError(f"--trials {trials}: give at least 1 (trial 0 is the method's defaults)")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout {timeout}: give a number of seconds > 0")
    if not 0.0 < val_split < 1.0:
        raise ConfigError(f"--val-split {val_split}: tuning scores every trial on a validation split; give a "
                          "fraction between 0 and 1, e.g. 0.2")
    spec = parse_spec(method)
    fixed = dict(train_config or {})
    if epochs is not None:
        fixed["epochs"] = epochs
    if spec.kind != "deep" and (fixed or img_size is not None):
        raise ConfigError(f"--epochs and --img-size apply to deep methods; {spec.text} is a feature pipeline")
    if spec.kind == "deep":
        _deep_config(spec.text, seed, fixed)  # bad fixed options fail before any trial
    if isinstance(data, ImageDataset):
        ds = data.with_task(task) if task else data
    else:
        ds = load_dataset(data, task=task)
    if not ds.is_labelled:
        raise DataError(f"{ds.name}: has no labels; tuning needs labelled data (a folder per class, CSV or JSONL)")
    task_kind = ds.task or "multiclass"
    metric = _metric_for(task_kind, metric)
    space = search_space(spec.text, tune_features, fixed)

    idx = ds.plan_split(val=val_split, seed=seed)
    train_ds, val_ds = ds.subset(idx["train"], f"{ds.name}:train"), ds.subset(idx.get("val", []), f"{ds.name}:val")
    if not len(val_ds):
        raise DataError(f"{ds.name}: the split left no validation images; add images or raise --val-split")
    out = Path(out) if out is not None else default_run_dir(
        ds.name if isinstance(data, ImageDataset) else data, f"{spec.text}-tune")
    out.mkdir(parents=True, exist_ok=True)
    ds.save_split(out / "split.json", idx, seed=seed, val=val_split, test=0.0)

    from optuna.trial import TrialState

    old_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # our own one line per trial instead of Optuna's
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{(out / 'study.db').resolve()}")
        name = study_name or spec.text
        study = optuna.create_study(storage=storage, study_name=name, direction="maximize", load_if_exists=True,
                                    pruner=optuna.pruners.MedianPruner(
                                        n_startup_trials=3, n_warmup_steps=1 if fixed.get("epochs", 3) >= 3 else 0))
        identity = {"method": spec.text, "metric": metric, "data": ds.fingerprint(), "val_split": val_split,
                    "seed": seed, "fixed": to_jsonable(fixed), "img_size": img_size, "tune_features": tune_features}
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
        if existing:
            log(f"resuming study {name!r} in {out / 'study.db'}: {done} of {trials} trials finished"
                + (f"; running {remaining} more" if remaining else "; nothing to run (raise --trials to search more)"))
        if remaining:
            log(f"tune {spec.text}: {remaining} trials, {metric} on {len(val_ds)} validation images "
                f"({len(train_ds)} training); parameters {', '.join(space) or 'none'}")

        quiet = _quiet(log)
        if spec.kind == "deep":
            runner: Any = _DeepRunner(spec.text, train_ds, val_ds, seed, n_jobs, metric, space, fixed, img_size, quiet)
        else:
            runner = _ClassicalRunner(spec.text, train_ds, val_ds, seed, n_jobs, metric, space)

        def objective(trial):
            is_default = bool(trial.user_attrs.get("defaults"))
            overrides = {} if is_default else {k: p.suggest(trial, k) for k, p in space.items()}
            same = next((t for t in trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                         if overrides and t.params == overrides), None)
            if same is not None:  # TPE proposes a finished discrete combination again: reuse its score
                trial.set_user_attr("duplicate_of", same.number)
                return same.value
            try:
                value, effective = runner.run(trial, overrides, is_default)
            except (optuna.TrialPruned, ImgclassError):
                raise  # pruned: recorded by Optuna; a user error (data, options): ends the search
            except Exception as exc:  # this parameter combination failed: record it and go on
                msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
                trial.set_user_attr("error", msg)
                raise _TrialFailed(msg) from exc
            if is_default:
                trial.set_user_attr("params", to_jsonable(effective))
            return value

        started = [0]
        identity_doc = {"data": ds.name, "val_split": val_split, "seed": seed}

        def after_trial(study, trial, bar):
            started[0] += 1
            bar.advance(1)
            log(_trial_line(trial, metric))
            _write_outputs(study, out, spec.text, metric, identity_doc, plot=False)

        if remaining:
            with progress_bar(remaining, f"tune {spec.text}", unit="trial") as bar:
                study.optimize(objective, n_trials=remaining, timeout=timeout, catch=(_TrialFailed,),
                               callbacks=[lambda s, t: after_trial(s, t, bar)])
    finally:
        optuna.logging.set_verbosity(old_verbosity)
    res = _write_outputs(study, out, spec.text, metric, identity_doc, plot=True)
    res.new_trials, res.stopped_by_timeout = started[0], started[0] < remaining
    res.study_name = name
    if res.value is None:
        raise DataError(f"no trial of {spec.text} finished (see the error column of {out / 'trials.csv'}); "
                        "fix the data or options and run again")
    if res.default_value is not None:
        log(f"default {res.default_value:.4f} vs best {res.value:.4f} ({metric}, trial {res.best_trial})")
    return res


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


def _trial_line(trial, metric: str) -> str:
    from optuna.trial import TrialState

    what = "defaults" if trial.user_attrs.get("defaults") else ", ".join(
        f"{k}={_fmt(v)}" for k, v in trial.params.items()) or "-"
    if trial.state == TrialState.COMPLETE:
        dup = trial.user_attrs.get("duplicate_of")
        return f"trial {trial.number}: {metric} {trial.value:.4f}  ({what})" + (f" = trial {dup}" if dup is not None else "")
    if trial.state == TrialState.PRUNED:
        return f"trial {trial.number}: pruned at epoch {trial.last_step}  ({what})"
    return f"trial {trial.number}: failed: {trial.user_attrs.get('error', 'error')}  ({what})"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _write_outputs(study, out: Path, method: str, metric: str, ident: dict[str, Any], plot: bool) -> TuneResult:
    """``best.json`` and ``trials.csv`` (and ``optimization.png`` with ``plot``) from the study."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    defaults = next((t for t in complete if t.user_attrs.get("defaults")), None)
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    params = {}
    if best is not None:
        params = dict(best.user_attrs.get("params") or {}) if best.user_attrs.get("defaults") else dict(best.params)
    res = TuneResult(method=method, metric=metric, value=best.value if best else None, params=params,
                     default_value=defaults.value if defaults else None,
                     best_trial=best.number if best else None,
                     trials=sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials),
                     complete=len(complete), pruned=sum(t.state == TrialState.PRUNED for t in trials),
                     failed=sum(t.state == TrialState.FAIL for t in trials), out=out, study_name=study.study_name)
    if best is not None:
        doc = {k: v for k, v in res.to_dict().items() if k not in ("new_trials", "stopped_by_timeout", "out")}
        doc["default_params"] = defaults.user_attrs.get("params") if defaults else None
        atomic_write_json(out / "best.json", {**doc, **ident})
    atomic_write_text(out / "trials.csv", _trials_csv(trials))
    if plot and trials:
        atomic_write_bytes(out / "optimization.png", _plot(trials, method, metric, res))
    return res


def _trials_csv(trials) -> str:
    keys = sorted({k for t in trials for k in t.params} | {k for t in trials for k in (t.user_attrs.get("params") or {})})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", "value", "defaults", "seconds", *keys, "error"])
    for t in trials:
        p = t.user_attrs.get("params") or t.params
        secs = t.duration.total_seconds() if t.duration is not None else ""
        w.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.6g}",
                    bool(t.user_attrs.get("defaults")), f"{secs:.2f}" if secs != "" else "",
                    *["None" if k in p and p[k] is None else p.get(k, "") for k in keys],
                    t.user_attrs.get("error", "")])
    return buf.getvalue()


def _plot(trials, method: str, metric: str, res: TuneResult) -> bytes:
    """Optimisation history: every trial's value, the best so far, and the defaults as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    fig, ax = plt.subplots(figsize=(7, 4))
    comp = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    ax.scatter([t.number for t in comp], [t.value for t in comp], s=22, color="tab:blue", label="trial", zorder=3)
    if pruned:
        ax.scatter([t.number for t in pruned], [t.value for t in pruned], s=22, marker="x", color="tab:gray",
                   label="pruned (last epoch reported)", zorder=3)
    xs, ys, best = [], [], None
    for t in sorted(comp, key=lambda t: t.number):
        best = t.value if best is None else max(best, t.value)
        xs.append(t.number)
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:orange", label="best so far")
    if res.default_value is not None:
        ax.axhline(res.default_value, color="tab:green", ls="--", lw=1, label=f"defaults {res.default_value:.4f}")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"{method}: best {res.value:.4f}" if res.value is not None else method)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


__all__ = ["CLASSIFIER_SPACE", "DEEP_SPACE", "FEATURE_SPACE", "Param", "TuneResult", "read_best", "resolve_params",
           "route_params", "search_space", "space_table", "tune"]
