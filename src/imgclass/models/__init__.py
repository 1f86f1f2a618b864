"""Estimators behind one API (``ImageClassifier``), method specs and the model bundle."""

from .base import ImageClassifier, decision_of, predictions
from .bundle import load_model
from .classical import CLASSIFIERS, FeaturePipeline, make_classifier
from .spec import MethodSpec, TaskOptions, list_methods, parse_spec, split_methods
from .validate import FORMAT_VERSION, read_meta


def build_model(method: str | MethodSpec, seed: int = 0, n_jobs: int | None = None, preprocess=None,
                max_pixels: int | None = None, img_size: int | None = None, pretrained: str | None = None,
                train_config: dict | None = None, classifier_params: dict | None = None,
                feature_params: dict | None = None, options: TaskOptions | None = None):
    """An unfitted estimator for a method spec (``hog+svm``, ``lite0+logreg``, ``lite0``, ``smallcnn``).

    ``pretrained`` (a weights file) overrides where a deep backbone's weights come from. Feature
    pipelines take ``classifier_params`` (scikit-learn keyword arguments overriding the classifier's
    defaults, e.g. ``{"C": 3.0}``) and ``feature_params`` (per extractor, e.g. ``{"hog": {"pixels_per_cell": 8}}``).
    ``options`` (``TaskOptions``) become the estimator's hierarchy, balance, calibration and decision
    parameters; a deep model's ``balance`` is part of its ``train_config``.
    """
    from ..data.decode import DEFAULT_MAX_PIXELS
    from ..features import make_extractor

    spec = parse_spec(method)
    o = options or TaskOptions()
    decide = {"hierarchy": o.hierarchy, "calibrate": o.calibrate, "positive": o.positive,
              "threshold_for": o.threshold_for, "min_confidence": o.min_confidence}
    if spec.kind == "deep":
        from .deep import DeepClassifier

        if o.balance is not None:
            train_config = {**(train_config or {}), "balance": o.balance}
        return DeepClassifier(spec.backbone, pretrained=pretrained or spec.pretrained, img_size=img_size,
                              preprocess=preprocess, train_config=train_config, seed=seed, n_jobs=n_jobs,
                              max_pixels=max_pixels or DEFAULT_MAX_PIXELS, method=spec.text, **decide)
    extractor = make_extractor(list(spec.features), feature_params)
    return FeaturePipeline(extractor, spec.classifier, preprocess=preprocess, seed=seed, n_jobs=n_jobs,
                           max_pixels=max_pixels or DEFAULT_MAX_PIXELS, method=spec.text,
                           classifier_params=classifier_params, balance=o.balance or "none", **decide)


__all__ = ["CLASSIFIERS", "FORMAT_VERSION", "FeaturePipeline", "ImageClassifier", "MethodSpec", "TaskOptions",
           "build_model", "decision_of", "list_methods", "load_model", "make_classifier", "parse_spec", "predictions",
           "read_meta", "split_methods"]
