"""Feature pipelines: a feature extractor followed by a scikit-learn classifier."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ImageDataset
from ..data.decode import DEFAULT_MAX_PIXELS, ImageSource
from ..errors import ConfigError, DataError, ModelFormatError
from ..features import (
    FeatureExtractor,
    Features,
    extract_features,
    extractor_names,
    extractor_params,
    make_extractor,
    sample_arrays,
)
from ..transforms import Preprocess
from .base import ImageClassifier, calibrated, sources_of, with_gaps


def _scaled(clf):
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), clf)


def _logreg(seed, **kw):
    from sklearn.linear_model import LogisticRegression

    return _scaled(LogisticRegression(**{"C": 0.1, "max_iter": 2000, **kw}))


def _knn(seed, **kw):
    from sklearn.neighbors import KNeighborsClassifier

    return _scaled(KNeighborsClassifier(**{"n_neighbors": 5, "weights": "distance", **kw}))


def _linsvm(seed, **kw):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import LinearSVC

    return _scaled(CalibratedClassifierCV(LinearSVC(**{"C": 0.01, "max_iter": 5000, "random_state": seed, **kw}), cv=3))


def _svm(seed, **kw):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.svm import SVC

    # Platt scaling through CalibratedClassifierCV (3 folds, sigmoid) instead of SVC(probability=True),
    # whose internal 5-fold CV costs ~5 extra fits.
    return _scaled(CalibratedClassifierCV(SVC(**{"C": 10.0, "gamma": "scale", "cache_size": 1000, **kw}), cv=3,
                                          method="sigmoid", ensemble=False))


def _tree(seed, **kw):
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(**{"min_samples_leaf": 3, "random_state": seed, **kw})


def _rf(seed, **kw):
    from sklearn.ensemble import RandomForestClassifier

    # min_samples_leaf=2 and 200 trees: about half the bundle size of fully grown trees, at the same accuracy
    return RandomForestClassifier(**{"n_estimators": 200, "min_samples_leaf": 2, "max_features": "sqrt",
                                     "n_jobs": -1, "random_state": seed, **kw})


def _mlp(seed, **kw):
    from sklearn.neural_network import MLPClassifier

    return _scaled(MLPClassifier(**{"hidden_layer_sizes": (256,), "alpha": 1e-3, "early_stopping": True,
                                    "max_iter": 300, "random_state": seed, **kw}))


#: name -> (factory(seed) -> unfitted sklearn estimator, one-line description)
CLASSIFIERS: dict[str, tuple[Callable[[int], Any], str]] = {
    "logreg": (_logreg, "logistic regression (standardised features, C=0.1)"),
    "knn": (_knn, "k-nearest neighbours (k=5, distance-weighted, standardised)"),
    "linsvm": (_linsvm, "linear SVM (C=0.01) with sigmoid-calibrated probabilities"),
    "svm": (_svm, "RBF-kernel SVM (C=10, gamma=scale) with sigmoid-calibrated probabilities"),
    "tree": (_tree, "decision tree (min 3 samples per leaf)"),
    "rf": (_rf, "random forest (200 trees, min 2 samples per leaf, both cores)"),
    "mlp": (_mlp, "multi-layer perceptron (256 hidden units, early stopping)"),
}

RECOMMENDED = [
    ("hog+svm", "HOG + RBF SVM: the strongest classical default for shapes and objects"),
    ("hog,color_hist+svm", "HOG and colour histogram + RBF SVM: when colour matters"),
    ("pixels+svm", "raw pixels + RBF SVM: tiny images such as digits"),
    ("lbp+rf", "LBP texture + random forest: textures and materials"),
    ("hog+logreg", "HOG + logistic regression: fast, well-calibrated baseline"),
    ("sift+svm", "dense SIFT bag of visual words + RBF SVM"),
]


def make_classifier(name: str, seed: int = 0, task: str = "multiclass", params: dict[str, Any] | None = None):
    """An unfitted scikit-learn classifier with imgclass's defaults, overridden by ``params``."""
    if name not in CLASSIFIERS:
        raise ConfigError(f"unknown classifier {name!r}; choose from {', '.join(CLASSIFIERS)}")
    clf = CLASSIFIERS[name][0](seed, **(params or {}))
    if task == "multilabel":
        from sklearn.multiclass import OneVsRestClassifier

        clf = OneVsRestClassifier(clf)
    return clf


class FeaturePipeline(ImageClassifier):
    """``extractor`` → scikit-learn ``classifier``, with the scikit-learn estimator API on images.

    ``fit(data, val)`` takes an ``ImageDataset`` (labels taken from it), or image sources with class
    indices as the second argument (scikit-learn's ``fit(X, y)``); ``predict_proba`` returns one row per
    input, columns ordered as ``classes_`` (rows of unreadable images are NaN, and ``errors_`` lists them).
    ``balance``: ``none``, ``weights`` (``class_weight="balanced"``) or ``sampler`` (resampling);
    ``hierarchy``: ``flat`` (one leaf classifier) or ``local`` (one per parent node). With a validation
    set, ``calibrate`` fits a temperature and ``positive`` / ``threshold_for`` / ``min_confidence`` tune
    the decision rule (``tasks.decision.tune_decision``).
    """

    kind = "feature_pipeline"

    def __init__(self, extractor: FeatureExtractor | str, classifier: str | Any = "svm",
                 preprocess: Preprocess | None = None, seed: int = 0, n_jobs: int | None = None,
                 max_pixels: int | None = DEFAULT_MAX_PIXELS, method: str | None = None,
                 classifier_params: dict[str, Any] | None = None, balance: str = "none", hierarchy: str = "flat",
                 calibrate: bool = True, positive: str | None = None, threshold_for: str | None = None,
                 min_confidence: float | None = None):
        # a value passed back by get_params is stored unchanged (what sklearn.base.clone checks)
        self.extractor = make_extractor(extractor) if isinstance(extractor, str) else extractor
        self.classifier = classifier
        #: overrides of the classifier's hyper-parameters (e.g. from ``imgclass tune``), kept in the bundle
        self.classifier_params = classifier_params
        defaults = self.extractor.preprocess_defaults()
        if preprocess is None:
            preprocess = Preprocess.from_dict(defaults)
        elif preprocess.size is None:  # extractors resize anyway; decode small (JPEG draft) and fast
            from dataclasses import replace

            preprocess = replace(preprocess, size=defaults["size"])
        self.preprocess = preprocess
        self.seed, self.n_jobs, self.max_pixels = seed, n_jobs, max_pixels
        self.method = method or f"{','.join(extractor_names(self.extractor))}+{self.classifier_name}"
        self.balance, self.hierarchy, self.calibrate = balance, hierarchy, calibrate
        self.positive, self.threshold_for, self.min_confidence = positive, threshold_for, min_confidence
        self._init_state()
        self.classifier_ = None

    def _clone_param(self, name: str, value: Any) -> Any:
        if name == "extractor":  # a fresh, unfitted extractor with the same parameters
            return make_extractor(extractor_names(value), extractor_params(value))
        return super()._clone_param(name, value)

    @property
    def classifier_name(self) -> str:
        return self.classifier if isinstance(self.classifier, str) else type(self.classifier).__name__

    # ---------------------------------------------------------------- features
    def features(self, X: ImageDataset | Sequence[ImageSource], description: str = "features") -> Features:
        """Decode, pre-process and extract features (fits the extractor first when it needs it)."""
        return extract_features(self.extractor, sources_of(X), self.preprocess, n_jobs=self.n_jobs,
                                max_pixels=self.max_pixels, description=description)

    def fit_extractor(self, X: ImageDataset | Sequence[ImageSource], max_images: int = 2000) -> FeaturePipeline:
        if self.extractor.needs_fit and not self.extractor.is_fitted:
            arrays = sample_arrays(sources_of(X), self.preprocess, max_images, self.seed, self.max_pixels)
            self.extractor.fit(arrays)
        return self

    # ---------------------------------------------------------------- fitting
    def fit(self, data: ImageDataset | Sequence[ImageSource], val: ImageDataset | np.ndarray | None = None,
            unlabeled: ImageDataset | None = None, *, semi: Callable | None = None,
            log: Callable[[str], Any] | None = None) -> FeaturePipeline:
        """Fit on ``data``; with a validation dataset ``val`` also calibrate and tune the decision rule.

        ``unlabeled`` (semi-supervised) needs ``semi(model, data, unlabeled)``, a fitter from
        ``imgclass.learning.semi`` (``imgclass.train(unlabeled=...)`` passes it).
        """
        log = log or (lambda m: None)
        if not isinstance(data, ImageDataset):  # scikit-learn style: fit(sources, y)
            if val is None:
                raise ConfigError("fit(sources, y): y is required when X is not an ImageDataset")
            self._fit_sources(data, np.asarray(val))
            return self
        self.set_labels(data)
        if unlabeled is not None:
            if semi is None:
                raise ConfigError("fit(unlabeled=...) needs semi=, a fitter from imgclass.learning.semi; or use "
                                  "imgclass.train(unlabeled=...)")
            semi(self, data, unlabeled)
        else:
            self._fit_sources(data, data.targets)
        if self.errors_:
            log(f"skipped {len(self.errors_)} unreadable training images (listed in the report)")
        self.meta_["train_skipped"] = list(self.errors_)
        P = None
        if val is not None and len(val):
            P = self.predict_proba(val)
            self.meta_["val_skipped"] = list(self.errors_)
            if self.errors_:
                log(f"skipped {len(self.errors_)} unreadable validation images (listed in the report)")
        self.meta_["data_fingerprint"] = data.fingerprint()
        self._finish_fit(val, P, log)
        return self

    def _fit_sources(self, X: ImageDataset | Sequence[ImageSource], y: np.ndarray) -> None:
        if not isinstance(X, ImageDataset) and not self.classes_:
            self.classes_ = [str(c) for c in range(int(y.max()) + 1)] if y.ndim == 1 else [
                str(c) for c in range(y.shape[1])]
        t0 = time.perf_counter()
        self.fit_extractor(X)
        feats = self.features(X, "features (train)")
        self.timings_["features_fit_s"] = time.perf_counter() - t0
        self.errors_ = feats.errors
        self.fit_features(feats.X, np.asarray(y)[feats.ok])

    def fit_features(self, F: np.ndarray, y: np.ndarray) -> FeaturePipeline:
        """Fit the classifier on precomputed features (used by ``compare`` to share extraction)."""
        if y.ndim == 1:
            lab = y >= 0
            F, y = F[lab], y[lab]
            present = np.unique(y)
            if len(present) < 2:
                raise DataError("training needs images of at least two classes; found "
                                f"{[self.classes_[i] for i in present] or 'none'}")
        if len(F) == 0:
            raise DataError("no readable training images")
        if self.balance not in ("none", "weights", "sampler"):
            raise ConfigError(f"--balance {self.balance!r}: choose none, weights or sampler")
        t0 = time.perf_counter()
        if self.task_ == "hierarchical" and self.hierarchy == "local":
            self.classifier_ = self._fit_local(F, y)
        else:
            self.classifier_ = self._fit_one(F, y)
        self.timings_["classifier_fit_s"] = time.perf_counter() - t0
        return self

    def _fit_one(self, F: np.ndarray, y: np.ndarray):
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        clf = self.new_classifier(y)
        weighted = self.balance == "weights" and self.classifier in CLASS_WEIGHTED
        if isinstance(self.classifier, str) and self.balance != "none" and y.ndim == 1 and not weighted:
            F, y = _oversample(F, y, self.seed)  # balanced resampling for classifiers without class_weight
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(F, y)
        return clf

    def new_classifier(self, y: np.ndarray | None = None):
        """The unfitted scikit-learn classifier ``fit`` would train (with ``class_weight="balanced"``
        under ``balance="weights"``); a classifier object given to the constructor is cloned."""
        if not isinstance(self.classifier, str):
            from sklearn.base import clone

            return clone(self.classifier)
        params = {**(self.extractor.classifier_defaults.get(self.classifier) or {}), **(self.classifier_params or {})}
        if self.balance == "weights" and (y is None or y.ndim == 1) and self.classifier in CLASS_WEIGHTED:
            params["class_weight"] = "balanced"
        return make_classifier(self.classifier, self.seed, self.task_, params)

    def _fit_local(self, F: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """One classifier per parent node, trained on the images below it to choose among its children
        (a node whose training images all fall under one child keeps that child's index)."""
        from ..tasks.hierarchy import Tree

        tree = Tree(self.taxonomy_ or {c: None for c in self.classes_}, self.classes_)
        paths = [tree.path(c) for c in self.classes_]
        out: dict[str, Any] = {}
        for node in tree.internal:
            kids = tree.children(node)
            if len(kids) < 2:
                continue
            depth = tree.depth(node)  # the child of `node` on a leaf's path sits at index `depth`
            child_of_leaf = {i: kids.index(p[depth]) for i, p in enumerate(paths)
                             if len(p) > depth and (node is None or p[depth - 1] == node)}
            rows = np.flatnonzero(np.isin(y, list(child_of_leaf)))
            target = np.asarray([child_of_leaf[int(v)] for v in y[rows]], dtype=np.int64)
            present = np.unique(target)
            key = "" if node is None else node
            out[key] = int(present[0]) if len(present) == 1 else self._fit_one(F[rows], target)
        return out

    def _local_proba(self, F: np.ndarray) -> np.ndarray:
        from ..tasks.hierarchy import Tree, leaf_probabilities_from_local

        tree = Tree(self.taxonomy_ or {c: None for c in self.classes_}, self.classes_)
        cond = {}
        for node in tree.internal:
            kids = tree.children(node)
            if len(kids) < 2:
                continue
            est = self.classifier_["" if node is None else node]
            M = np.zeros((len(F), len(kids)))
            if isinstance(est, int):
                M[:, est] = 1.0
            else:
                M[:, np.asarray(est.classes_, dtype=np.int64)] = est.predict_proba(F)
            cond[node] = M
        return leaf_probabilities_from_local(tree, cond)

    # ---------------------------------------------------------------- inference
    def _check_fitted(self):
        if self.classifier_ is None:
            raise ConfigError("this model is not fitted yet; call fit() or load a trained bundle")

    def predict_proba_features(self, F: np.ndarray) -> np.ndarray:
        """Class probabilities for feature rows, columns aligned with ``classes_``."""
        self._check_fitted()
        if isinstance(self.classifier_, dict):
            return calibrated(self, self._local_proba(F))
        P = np.asarray(self.classifier_.predict_proba(F), dtype=np.float64)
        if self.task_ == "multilabel":
            return calibrated(self, P)
        # sklearn orders columns by the labels it saw; map them onto all classes
        seen = np.asarray(self.classifier_.classes_, dtype=np.int64)
        out = np.zeros((len(F), len(self.classes_)), dtype=np.float64)
        out[:, seen] = P
        return calibrated(self, out)

    def predict_proba(self, X: ImageDataset | Sequence[ImageSource]) -> np.ndarray:
        """``(n, n_classes)`` probabilities; NaN rows for images that could not be read."""
        self._check_fitted()
        sources = sources_of(X)
        feats = self.features(sources, "predict")
        self.errors_ = feats.errors
        rows = self.predict_proba_features(feats.X) if len(feats.X) else feats.X
        return with_gaps(len(sources), feats.ok, rows, len(self.classes_))

    # ---------------------------------------------------------------- persistence
    def config(self) -> dict[str, Any]:
        return {"features": extractor_names(self.extractor), "feature_params": extractor_params(self.extractor),
                "classifier": self.classifier_name, "classifier_params": dict(self.classifier_params or {}),
                "balance": self.balance, "hierarchy": self.hierarchy}

    def _check_saveable(self) -> None:
        if self.classifier_ is None:
            raise ModelFormatError("cannot save an unfitted model; train it first")

    def _write_payload(self, folder: Path, meta: dict[str, Any]) -> None:
        """``estimator.skops`` (classifier and extractor state) and the backbone weights deep features read."""
        import skops.io as sio

        from .pipeline_io import embed_backbone_weights, untrained_classes

        untrained = untrained_classes(self)
        if untrained:
            meta["untrained_classes"] = untrained
        sio.dump({"classifier": self.classifier_, "extractor_state": self.extractor.get_state()},
                 folder / ESTIMATOR_FILE)
        embed_backbone_weights(meta, folder)

    @classmethod
    def _from_config(cls, folder: Path, meta: dict[str, Any]) -> FeaturePipeline:
        """The pipeline of a bundle: backbone files confined to it, ``estimator.skops`` read through the
        allow-list (``skops_guard``) before the extractor is built."""
        from .pipeline_io import resolve_bundle_files
        from .skops_guard import load_estimator
        from .validate import MODEL_JSON, bundle_file, refuse

        est = bundle_file(folder, ESTIMATOR_FILE)
        if not est.is_file():
            raise ModelFormatError(f"{folder}: {ESTIMATOR_FILE} is missing; the bundle is incomplete")
        resolve_bundle_files(meta, folder)
        payload = load_estimator(est)
        try:
            extractor = make_extractor(meta["features"], meta.get("feature_params"))
            extractor.set_state(payload.get("extractor_state", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise refuse(folder / MODEL_JSON, f"missing or bad features field ({exc})") from None
        model = cls(extractor, meta["classifier"], Preprocess.from_dict(meta.get("preprocessing")),
                    seed=meta.get("seed", 0), method=meta.get("method"),
                    classifier_params=meta.get("classifier_params"), balance=meta.get("balance", "none"),
                    hierarchy=meta.get("hierarchy", "flat"))
        model.classifier_ = payload["classifier"]
        return model

    def _read_payload(self, folder: Path, meta: dict[str, Any]) -> None:
        """Check that the classifier answers for exactly the model's classes and features."""
        from .pipeline_io import check_outputs
        from .validate import bundle_file

        check_outputs(self, bundle_file(folder, ESTIMATOR_FILE), meta.get("untrained_classes") or [])

    def __repr__(self) -> str:
        return f"FeaturePipeline(method={self.method!r}, classes={len(self.classes_)}, fitted={self.classifier_ is not None})"


ESTIMATOR_FILE = "estimator.skops"


#: classifiers that take scikit-learn's ``class_weight`` (the others are balanced by resampling)
CLASS_WEIGHTED = ("logreg", "linsvm", "svm", "tree", "rf")


def _oversample(F: np.ndarray, y: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Resample rows with replacement so that every class appears as often as the largest one."""
    rng = np.random.default_rng(seed)
    counts = np.bincount(y)
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), counts.max(), replace=True) if n < counts.max()
                          else np.flatnonzero(y == c) for c, n in enumerate(counts) if n > 0])
    return F[idx], y[idx]
