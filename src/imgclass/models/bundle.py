"""The model bundle: ``model.json`` + ``estimator.skops`` (classical) or ``weights.safetensors`` (deep).

Loading never unpickles and never runs code from the bundle: ``model.json`` is checked against a schema
(``validate``), ``estimator.skops`` against an allow-list of exact type names (``skops_guard``), weights
for shapes and finite values (``weights``), and every file it names must lie inside the bundle folder.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
from pathlib import Path
from typing import Any

from .._util import atomic_dir, dumps
from ..errors import ConfigError, ModelFormatError
from .validate import (
    BUNDLE_PREFIX,
    MODEL_JSON,
    WEIGHT_NAMES,
    bundle_file,
    check_meta,
    confined,
    read_json,
    refuse,
)

FORMAT_VERSION = 1
ESTIMATOR_FILE = "estimator.skops"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("imgclass", "numpy", "scikit-learn", "scikit-image", "opencv-python-headless", "pillow", "skops"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def save_bundle(model, path: str | os.PathLike, metrics: dict[str, Any] | None = None,
                data_fingerprint: str | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model`` to the bundle folder ``path`` atomically (old bundle replaced in one rename)."""
    import skops.io as sio

    if model.classifier_ is None:
        raise ModelFormatError("cannot save an unfitted model; train it first")
    path = Path(path)
    meta = _base_meta(model, metrics, data_fingerprint, extra)
    untrained = _untrained_classes(model)
    if untrained:
        meta["untrained_classes"] = untrained
    with atomic_dir(path) as tmp:
        payload = {"classifier": model.classifier_, "extractor_state": model.extractor.get_state()}
        sio.dump(payload, tmp / ESTIMATOR_FILE)
        _embed_backbone_weights(meta, tmp)
        (tmp / MODEL_JSON).write_text(dumps(meta) + "\n", encoding="utf-8")
    model.meta_.update({k: meta[k] for k in ("metrics", "data_fingerprint")})
    return path


def _embed_backbone_weights(meta: dict[str, Any], folder: Path) -> None:
    """Copy what a feature pipeline's deep features read from disk into the bundle so that it works on
    another machine and never reads outside its folder: weights given as a file become
    ``backbone-NAME.safetensors``, a pretrained backbone folder (``imgclass pretrain``) becomes
    ``backbone-N/``; packaged ImageNet and hub weights are referenced by name."""
    from ..features.backbones import BACKBONE_JSON, BACKBONE_WEIGHTS, pretrained_dir

    params_of = meta.get("feature_params") or {}
    for i, name in enumerate(list(meta.get("features") or [])):
        run = pretrained_dir(name)
        if run is None:
            continue
        import shutil

        sub = f"backbone-{i}"
        (folder / sub).mkdir()
        for fname in (BACKBONE_JSON, BACKBONE_WEIGHTS):
            shutil.copyfile(run / fname, folder / sub / fname)
        ref = BUNDLE_PREFIX + sub
        meta["features"][i] = ref
        params = dict(params_of.pop(name, {}))
        params["backbone"] = ref
        params_of[ref] = params
    for name, params in params_of.items():
        pre = params.get("pretrained") if isinstance(params, dict) else None
        if not pre or pre in WEIGHT_NAMES or str(pre).startswith(BUNDLE_PREFIX):
            continue
        from safetensors.torch import save_file

        from ..features.backbones import load_state_dict_file

        fname = f"backbone-{name}.safetensors".replace(":", "-").replace("/", "-")
        sd = {k: v.contiguous() for k, v in load_state_dict_file(pre).items()}
        save_file(sd, str(folder / fname))
        params["pretrained"] = BUNDLE_PREFIX + fname


def _resolve_bundle_files(meta: dict[str, Any], folder: Path) -> None:
    """Point the feature pipeline's ``bundle:`` references at files inside ``folder``; refuse any other path."""
    from ..features.backbones import BACKBONE_JSON, BACKBONE_WEIGHTS, looks_like_path
    from ..features.classical import EXTRACTORS
    from .weights import load_arrays

    mj = folder / MODEL_JSON
    params_of = meta.get("feature_params") or {}
    names = {}
    for i, name in enumerate(meta["features"]):
        if name in EXTRACTORS:
            continue
        if name.startswith(BUNDLE_PREFIX):
            target = confined(folder, name, mj)
            if not (target / BACKBONE_JSON).is_file():
                raise refuse(mj, f"{name} is not a pretrained backbone folder inside the bundle")
            for fname in (BACKBONE_JSON, BACKBONE_WEIGHTS):
                f = bundle_file(target, fname)
                if not f.resolve().is_relative_to(folder.resolve()):
                    raise refuse(f, "is a link leading outside the bundle folder")
            load_arrays(target / BACKBONE_WEIGHTS)  # header and finite values
            names[name] = str(target)
            meta["features"][i] = str(target)
        elif looks_like_path(name) or ":" in name:
            raise refuse(mj, f"features names {name!r}, a path outside the bundle; bundles never read files "
                             "outside their folder")
    for name, params in list(params_of.items()):
        backbone = params.get("backbone")
        if backbone is not None and backbone != name:
            raise refuse(mj, f"feature_params.{name}.backbone {backbone!r} differs from the feature name")
        if name in names:
            params_of[names[name]] = params_of.pop(name)
            params["backbone"] = names[name]
        pre = params.get("pretrained")
        if pre is not None and pre not in WEIGHT_NAMES:
            if not (isinstance(pre, str) and pre.startswith(BUNDLE_PREFIX)):
                raise refuse(mj, f"feature_params.{name}.pretrained {pre!r} is neither a registered weights name "
                                 f"({', '.join(WEIGHT_NAMES)}) nor a bundle: file; bundles never read files "
                                 "outside their folder")
            params["pretrained"] = str(confined(folder, pre, mj))
            load_arrays(Path(params["pretrained"]))  # header and finite values


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``model.json`` of a bundle folder, checked against the bundle schema (``validate.check_meta``)."""
    p = Path(path)
    mj = bundle_file(p, MODEL_JSON) if p.is_dir() else p
    if not mj.is_file():
        raise ModelFormatError(f"{p}: not a model bundle (no {MODEL_JSON}); pass the folder written by "
                               "'imgclass train' (runs/NAME/model)")
    return check_meta(read_json(mj), mj)


def _base_meta(model, metrics, data_fingerprint, extra) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "kind": model.kind,
        "method": model.method,
        "task": model.task_,
        "classes": list(model.classes_),
        "taxonomy": model.taxonomy_,
        "preprocessing": model.preprocess.to_dict(),
        **model.config(),
        "decision": model.decision_.to_dict() if getattr(model, "decision_", None) is not None else None,
        "calibration": model.meta_.get("calibration"),
        "metrics": metrics if metrics is not None else model.meta_.get("metrics", {}),
        "data_fingerprint": data_fingerprint or model.meta_.get("data_fingerprint"),
        "seed": model.seed,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": library_versions(),
        **(extra or {}),
    }


def save_deep_bundle(model, path: str | os.PathLike, metrics: dict[str, Any] | None = None,
                     data_fingerprint: str | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write a deep model: ``weights.safetensors`` (the whole network) + ``model.json``, atomically."""
    from safetensors.torch import save_file

    if model.model_ is None:
        raise ModelFormatError("cannot save an untrained model; train it first")
    path = Path(path)
    meta = _base_meta(model, metrics, data_fingerprint, extra)
    meta["history"] = model.history_
    with atomic_dir(path) as tmp:
        sd = {k: v.detach().contiguous() for k, v in model.model_.state_dict().items()}
        from .deep import WEIGHTS_FILE

        save_file(sd, str(tmp / WEIGHTS_FILE))
        (tmp / MODEL_JSON).write_text(dumps(meta) + "\n", encoding="utf-8")
    model.meta_.update({k: meta[k] for k in ("metrics", "data_fingerprint")})
    return path


def load_model(path: str | os.PathLike):
    """Load a bundle folder into a ready-to-predict model.

    ``imagenet:BACKBONE`` (e.g. ``imagenet:lite0``) gives the pretrained ImageNet-1k classifier.
    """
    if isinstance(path, str) and path.startswith("imagenet:"):
        from .pretrained import ImageNetClassifier

        return ImageNetClassifier.from_name(path)
    meta = read_meta(path)
    folder = Path(path) if Path(path).is_dir() else Path(path).parent
    try:
        if meta["kind"] == "feature_pipeline":
            return _load_feature_pipeline(folder, meta)
        from .deep import DeepClassifier

        return DeepClassifier.from_bundle(folder, meta)
    except ConfigError as exc:  # a value the schema let through that the model itself rejects
        raise refuse(folder / MODEL_JSON, str(exc).rstrip(".")) from None


def _load_feature_pipeline(folder: Path, meta: dict[str, Any]):
    from ..features import make_extractor
    from ..transforms import Preprocess
    from .classical import FeaturePipeline
    from .skops_guard import load_estimator

    est = bundle_file(folder, ESTIMATOR_FILE)
    if not est.is_file():
        raise ModelFormatError(f"{folder}: {ESTIMATOR_FILE} is missing; the bundle is incomplete")
    _resolve_bundle_files(meta, folder)
    payload = load_estimator(est)
    mj = folder / MODEL_JSON
    try:
        extractor = make_extractor(meta["features"], meta.get("feature_params"))
        extractor.set_state(payload.get("extractor_state", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise refuse(mj, f"missing or bad features field ({exc})") from None
    model = FeaturePipeline(extractor, meta["classifier"], Preprocess.from_dict(meta.get("preprocessing")),
                            seed=meta.get("seed", 0), method=meta.get("method"),
                            classifier_params=meta.get("classifier_params"))
    model.classifier_ = payload["classifier"]
    model.balance = meta.get("balance", "none")
    model.hierarchy = meta.get("hierarchy", "flat")
    model.classes_ = list(meta["classes"])
    model.task_ = meta["task"]
    model.taxonomy_ = meta.get("taxonomy")
    if meta.get("decision"):
        from ..tasks.decision import Decision

        model.decision_ = Decision.from_dict(meta["decision"])
    model.meta_ = {k: meta.get(k) for k in ("calibration", "metrics", "data_fingerprint")}
    model.meta_["bundle"] = str(folder)
    _check_outputs(model, est, meta.get("untrained_classes") or [])
    return model


def _untrained_classes(model) -> list[str]:
    """Classes a single-label classifier gives no output for (no training images; their column is 0)."""
    clf = model.classifier_
    if isinstance(clf, dict) or model.task_ == "multilabel" or not hasattr(clf, "classes_"):
        return []
    seen = {int(c) for c in clf.classes_}
    return [c for i, c in enumerate(model.classes_) if i not in seen]


def _check_outputs(model, est: Path, untrained: list[str]) -> None:
    """The classifier answers for exactly the model's classes, and gives finite probabilities for a
    blank image of the model's input size (features of the right length, usable learned state)."""
    import numpy as np

    clf, n = model.classifier_, len(model.classes_)
    if not isinstance(clf, dict):
        if model.task_ == "multilabel":
            outputs = len(getattr(clf, "estimators_", []) or [])
        else:
            seen = np.asarray(getattr(clf, "classes_", []))
            if seen.dtype.kind not in "iu" or len(np.unique(seen)) != len(seen) or len(seen) and (
                    seen.min() < 0 or seen.max() >= n):
                raise refuse(est, "the classifier's classes are not indices of the model's classes")
            outputs = len(seen)
            if _untrained_classes(model) != untrained:
                raise refuse(est, f"the classifier has {outputs} outputs but model.json names {n} classes "
                                  f"(untrained classes recorded: {len(untrained)})")
            outputs += len(untrained)
        if outputs != n:
            raise refuse(est, f"the classifier has {outputs} outputs but model.json names {n} classes")
    if getattr(model.extractor, "cacheable", False) or any(getattr(p, "cacheable", False)
                                                           for p in getattr(model.extractor, "parts", [])):
        return  # deep features: probing would export and run the backbone here; checked on first use
    from PIL import Image

    size = model.preprocess.size or getattr(model.extractor, "size", 64)
    h, w = (size, size) if isinstance(size, int) else size
    try:
        arr = model.preprocess.to_array(Image.new("RGB", (int(w), int(h))))
        P = model.predict_proba_features(np.asarray(model.extractor.transform([arr]), dtype=np.float32))
    except Exception as exc:  # noqa: BLE001 - any failure here means the parts of the bundle disagree
        raise refuse(est, f"the classifier does not work on the model's features ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if P.shape != (1, n) or not np.isfinite(P).all():
        raise refuse(est, "the classifier gives no finite probabilities for the model's classes")
