"""The objective: one trial trains the method with the trial's parameters and returns its validation
score (classical pipelines reuse extracted features; deep trials report every epoch for pruning)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ..._util import to_jsonable
from ...errors import ImgclassError


class TrialFailed(Exception):
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


class ClassicalRunner:
    """Feature pipeline trials: features extracted once per feature setting, then one classifier fit."""

    CACHE_SIZE = 3

    def __init__(self, method, train, val, seed, n_jobs, metric, space):
        self.method, self.train, self.val, self.seed, self.n_jobs = method, train, val, seed, n_jobs
        self.metric, self.space = metric, space
        self.task = train.task or "multiclass"
        self._cache: dict[str, tuple] = {}

    def _features(self, model):
        from ...features import extractor_params

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
        from ...features import extractor_params
        from ...models import build_model
        from ...tasks import metrics
        from ...tasks.decision import tune_decision

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


class DeepRunner:
    """Deep trials: the engine trains with the trial's options and reports every epoch's validation
    score to Optuna, which may prune the trial."""

    def __init__(self, method, train, val, seed, n_jobs, metric, space, fixed, img_size, log):
        self.method, self.train, self.val, self.seed, self.n_jobs = method, train, val, seed, n_jobs
        self.metric, self.space, self.fixed, self.img_size, self.log = metric, space, fixed, img_size, log
        self.score_key = "val_micro_f1" if train.task == "multilabel" else "val_accuracy"

    def run(self, trial, overrides: dict[str, Any], is_default: bool) -> tuple[float, dict[str, Any]]:
        import optuna

        from ..fit import fit_model

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
            tc = deep_config(self.method, self.seed, cfg)
            resolved = {"lr": tc.default_lr(), "weight_decay": tc.default_weight_decay()}
            effective = {k: resolved.get(k, getattr(tc, k)) for k in self.space}
        return float(value), effective


def deep_config(method: str, seed: int, cfg: dict[str, Any]):
    from ...models import parse_spec
    from ..engine import TrainConfig
    from ..fit import method_defaults

    spec = parse_spec(method)
    return TrainConfig.from_dict({"seed": seed, **method_defaults(spec.backbone, spec.pretrained), **cfg})


def quiet(log: Callable[[str], Any]) -> Callable[[str], None]:
    """Pass on each warning or note once; drop the per-trial chatter (epochs, temperatures)."""
    seen: set[str] = set()

    def _log(msg: str) -> None:
        if msg.startswith(("warning", "note", "skipped")) and msg not in seen:
            seen.add(msg)
            log(msg)
    return _log


def make_runner(spec, train, val, seed: int, n_jobs: int | None, metric: str, space: dict, fixed: dict[str, Any],
                img_size: int | None, log: Callable[[str], Any]):
    """The runner for ``spec``'s kind: deep trials through the engine, else feature pipeline trials."""
    if spec.kind == "deep":
        return DeepRunner(spec.text, train, val, seed, n_jobs, metric, space, fixed, img_size, log)
    return ClassicalRunner(spec.text, train, val, seed, n_jobs, metric, space)


def make_objective(runner, space: dict) -> Callable:
    """The Optuna objective: trial 0 (``defaults``) runs the method's defaults, every other trial the
    sampled parameters; a repeated discrete combination reuses its score, and a trial's own error is
    recorded as FAIL while user errors end the search."""
    import optuna
    from optuna.trial import TrialState

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
            raise TrialFailed(msg) from exc
        if is_default:
            trial.set_user_attr("params", to_jsonable(effective))
        return value
    return objective
