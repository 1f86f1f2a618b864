"""The search space: one ``Param`` per searched hyper-parameter, per classifier, feature extractor and
deep training option (the table in ``imgclass.training.tuning``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    from ...models import parse_spec

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
