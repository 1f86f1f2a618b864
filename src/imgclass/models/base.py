"""The contract every imgclass model keeps: ``ImageClassifier``.

Hyper-parameters are constructor arguments stored unchanged (so ``get_params`` / ``set_params`` and
``sklearn.base.clone`` work as in scikit-learn); learned state ends in ``_``. The helpers every model
uses to turn probabilities into answers live here too, and one pair ``to_meta`` / ``from_meta`` writes
and restores the state a bundle shares across kinds.
"""

from __future__ import annotations

import copy
import datetime as _dt
import inspect
import os
import platform
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_dir, dumps
from ..data import ImageDataset
from ..data.decode import ImageSource
from ..errors import ConfigError
from ..tasks.decision import Decision, Prediction
from .validate import FORMAT_VERSION, MODEL_JSON, read_meta, refuse

#: fewer validation images than this and no temperature is fitted (it would be noise)
MIN_CALIBRATION_IMAGES = 20


def sources_of(X: ImageDataset | Sequence[ImageSource]) -> list:
    """The image sources of a dataset or a sequence of sources."""
    return list(X.sources) if isinstance(X, ImageDataset) else list(X)


def with_gaps(n: int, ok: np.ndarray, rows: np.ndarray, n_cols: int) -> np.ndarray:
    """An ``(n, n_cols)`` matrix holding ``rows`` at the ``ok`` positions and NaN rows elsewhere
    (the shape every ``predict_proba`` returns when some images could not be read)."""
    out = np.full((n, n_cols), np.nan)
    if len(rows):
        out[ok] = rows
    return out


def calibrated(model, P: np.ndarray) -> np.ndarray:
    """``P`` with the model's fitted temperature applied (unchanged when it has none)."""
    from ..tasks.calibration import apply_temperature

    cal = model.meta_.get("calibration") or {}
    return apply_temperature(model.task_, P, cal.get("temperature"))


def decision_of(model) -> Decision:
    """The model's tuned decision rule, or the default rule of its task."""
    d = getattr(model, "decision_", None)
    return d if d is not None else Decision(task=model.task_, classes=list(model.classes_), taxonomy=model.taxonomy_)


def predictions(model, P: np.ndarray, top_k: int = 1) -> list[Prediction | None]:
    """``Prediction`` per row of ``P`` under the model's decision rule (``None`` for NaN rows)."""
    return decision_of(model).predict(P, top_k)


def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a bundle depends on (recorded in ``model.json``)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("imgclass", "numpy", "scikit-learn", "scikit-image", "opencv-python-headless", "pillow", "skops"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


class ImageClassifier:
    """Base of every estimator: ``fit(data, val=None, unlabeled=None)``, ``predict_proba``, ``predict``,
    ``save``, ``load``, ``get_params`` / ``set_params``.

    Learned state: ``classes_``, ``task_`` (binary, multiclass, multilabel, hierarchical), ``taxonomy_``,
    ``decision_`` (the tuned rule, ``None`` = the task's default) and ``meta_`` (calibration, metrics,
    data fingerprint, skipped images).
    """

    #: the bundle's ``kind``
    kind = ""

    def _init_state(self) -> None:
        self.classes_: list[str] = []
        self.task_: str = "multiclass"
        self.taxonomy_: dict | None = None
        self.decision_: Decision | None = None
        self.meta_: dict[str, Any] = {}
        self.errors_: list[tuple[str, str]] = []
        self.timings_: dict[str, float] = {}

    # ---------------------------------------------------------------- parameters
    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return sorted(p.name for p in sig.parameters.values()
                      if p.name != "self" and not p.name.startswith("_")
                      and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, as scikit-learn's ``BaseEstimator.get_params``."""
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params) -> ImageClassifier:
        """Set constructor arguments by name; returns the estimator."""
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"invalid parameter {name!r} for {type(self).__name__}; choose from "
                                 f"{', '.join(valid)}")
            setattr(self, name, value)
        return self

    def __sklearn_clone__(self) -> ImageClassifier:
        """An unfitted copy with the same hyper-parameters (``sklearn.base.clone`` calls this)."""
        return type(self)(**{k: self._clone_param(k, v) for k, v in self.get_params().items()})

    def _clone_param(self, name: str, value: Any) -> Any:
        if hasattr(value, "get_params") and hasattr(value, "fit") and not isinstance(value, type):
            from sklearn.base import clone

            return clone(value)
        return copy.deepcopy(value)

    # ---------------------------------------------------------------- fitting helpers
    def set_labels(self, ds: ImageDataset) -> None:
        """Take classes, task and taxonomy from the training dataset."""
        if not ds.is_labelled:
            from ..errors import DataError

            raise DataError(f"{ds.name}: no labels to train on; give a folder per class, a CSV or JSONL")
        self.classes_ = list(ds.classes)
        self.task_ = ds.task or "multiclass"
        self.taxonomy_ = ds.taxonomy

    def _finish_fit(self, val: ImageDataset | None, P: np.ndarray | None, log: Callable[[str], Any]) -> None:
        """Fit the temperature (``calibrate``) and tune the decision rule on ``val``'s probabilities ``P``,
        then record validation metrics; ``val_proba_`` keeps the calibrated ``P``."""
        from ..tasks import headline, metrics
        from ..tasks.decision import tune_decision

        if self.calibrate and P is not None and (~np.isnan(P).any(axis=1)).sum() >= MIN_CALIBRATION_IMAGES:
            from ..tasks.calibration import apply_temperature
            from ..tasks.calibration import calibrate as fit_calibration

            cal = fit_calibration(self.task_, val.targets, P)
            self.meta_["calibration"] = cal
            P = apply_temperature(self.task_, P, cal["temperature"])
            log(f"temperature scaling: T = {cal['temperature']:.3f}, validation ECE {cal['ece_before']:.4f} -> "
                f"{cal['ece_after']:.4f}")
        self.decision_ = tune_decision(self.task_, list(self.classes_), val.targets if P is not None else None, P,
                                       taxonomy=self.taxonomy_, positive=self.positive,
                                       threshold_for=self.threshold_for, min_confidence=self.min_confidence,
                                       hierarchy=self.hierarchy, log=log)
        if P is not None:
            ok = ~np.isnan(P).any(axis=1)
            if ok.any():
                m = metrics(self.task_, val.targets[ok], P[ok], self.classes_, decision=self.decision_)
                self.meta_["metrics"] = {"val": headline(self.task_, m)}
        self.val_proba_ = P

    # ---------------------------------------------------------------- inference
    def predict_proba(self, X) -> np.ndarray:  # pragma: no cover - every estimator overrides it
        raise NotImplementedError

    def predict(self, X: ImageDataset | Sequence[ImageSource], top_k: int = 1) -> list[Prediction | None]:
        """A ``Prediction`` per image (decided label(s), probability, top-k); ``None`` if unreadable."""
        return predictions(self, self.predict_proba(X), top_k)

    # ---------------------------------------------------------------- persistence
    def config(self) -> dict[str, Any]:
        """The kind-specific fields of ``model.json``."""
        return {}

    def to_meta(self, metrics: dict[str, Any] | None = None, data_fingerprint: str | None = None,
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """The ``model.json`` document of this model."""
        return {
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "method": self.method,
            "task": self.task_,
            "classes": list(self.classes_),
            "taxonomy": self.taxonomy_,
            "preprocessing": self.preprocess.to_dict(),
            **self.config(),
            "decision": self.decision_.to_dict() if self.decision_ is not None else None,
            "calibration": self.meta_.get("calibration"),
            "metrics": metrics if metrics is not None else self.meta_.get("metrics", {}),
            "data_fingerprint": data_fingerprint or self.meta_.get("data_fingerprint"),
            "seed": self.seed,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "versions": library_versions(),
            **(extra or {}),
        }

    def _check_saveable(self) -> None:
        """Raise ``ModelFormatError`` when there is nothing to save."""

    def _write_payload(self, folder: Path, meta: dict[str, Any]) -> None:
        """Write the learned parameters into the new bundle ``folder`` (may add fields to ``meta``)."""

    def save(self, path: str | os.PathLike, metrics: dict[str, Any] | None = None,
             data_fingerprint: str | None = None, extra: dict[str, Any] | None = None) -> Path:
        """Write the bundle folder ``path`` atomically (an old bundle is replaced in one rename)."""
        self._check_saveable()
        path = Path(path)
        meta = self.to_meta(metrics, data_fingerprint, extra)
        with atomic_dir(path) as tmp:
            self._write_payload(tmp, meta)
            (tmp / MODEL_JSON).write_text(dumps(meta) + "\n", encoding="utf-8")
        self.meta_.update({k: meta[k] for k in ("metrics", "data_fingerprint")})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike):
        """The model of the bundle folder ``path``, which must hold this kind of model."""
        meta = read_meta(path)
        if meta["kind"] != cls.kind:
            raise ConfigError(f"{path}: holds a {meta['kind']} model, not a {cls.__name__}")
        return cls.from_meta(Path(path) if Path(path).is_dir() else Path(path).parent, meta)

    @classmethod
    def from_meta(cls, folder: Path, meta: dict[str, Any]):
        """The model of a bundle whose ``model.json`` passed ``validate.check_meta``: constructed from its
        hyper-parameters, given the shared learned state, then its own (checked) parameters."""
        try:
            model = cls._from_config(folder, meta)
            model.classes_ = list(meta["classes"])
            model.task_ = meta["task"]
            model.taxonomy_ = meta.get("taxonomy")
            model.decision_ = Decision.from_dict(meta["decision"]) if meta.get("decision") else None
            model.meta_ = {k: meta.get(k) for k in ("calibration", "metrics", "data_fingerprint")}
            model.meta_["bundle"] = str(folder)
            model._read_payload(folder, meta)
        except ConfigError as exc:  # a value the schema let through that the model itself rejects
            raise refuse(folder / MODEL_JSON, str(exc).rstrip(".")) from None
        return model

    @classmethod
    def _from_config(cls, folder: Path, meta: dict[str, Any]):
        raise NotImplementedError

    def _read_payload(self, folder: Path, meta: dict[str, Any]) -> None:
        """Restore and check the learned parameters stored next to ``model.json``."""
