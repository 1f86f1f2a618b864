"""Estimators behind one API, method specs and the model bundle."""

from .bundle import FORMAT_VERSION, load_model, read_meta, save_bundle
from .classical import CLASSIFIERS, FeaturePipeline, decision_of, make_classifier, predictions
from .spec import MethodSpec, list_methods, parse_spec, split_methods


def build_model(method: str, seed: int = 0, n_jobs: int | None = None, preprocess=None,
                max_pixels: int | None = None, img_size: int | None = None, pretrained: str | None = None,
                train_config: dict | None = None, classifier_params: dict | None = None,
                feature_params: dict | None = None):
    """An unfitted estimator for a method spec (``hog+svm``, ``lite0+logreg``, ``lite0``, ``smallcnn``).

    ``pretrained`` (a weights file) overrides where a deep backbone's weights come from. Feature
    pipelines take ``classifier_params`` (scikit-learn keyword arguments overriding the classifier's
    defaults, e.g. ``{"C": 3.0}``) and ``feature_params`` (per extractor, e.g. ``{"hog": {"pixels_per_cell": 8}}``).
    """
    from ..data.decode import DEFAULT_MAX_PIXELS
    from ..features import make_extractor

    spec = parse_spec(method)
    if spec.kind == "deep":
        from .deep import DeepClassifier

        return DeepClassifier(spec.backbone, pretrained=pretrained or spec.pretrained, img_size=img_size,
                              preprocess=preprocess, train_config=train_config, seed=seed, n_jobs=n_jobs,
                              max_pixels=max_pixels or DEFAULT_MAX_PIXELS, method=spec.text)
    extractor = make_extractor(list(spec.features), feature_params)
    return FeaturePipeline(extractor, spec.classifier, preprocess=preprocess, seed=seed, n_jobs=n_jobs,
                           max_pixels=max_pixels or DEFAULT_MAX_PIXELS, method=spec.text,
                           classifier_params=classifier_params)


__all__ = ["CLASSIFIERS", "FORMAT_VERSION", "FeaturePipeline", "MethodSpec", "build_model", "list_methods",
           "load_model", "make_classifier", "parse_spec", "predictions", "decision_of", "read_meta", "save_bundle", "split_methods"]
