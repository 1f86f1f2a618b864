"""The model bundle: ``model.json`` + ``estimator.skops`` (classical) or ``weights.safetensors`` (deep).

Loading never unpickles and never runs code from the bundle: skops refuses types outside an allow
list, and a newer format version is refused with a clear message.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
from pathlib import Path
from typing import Any

from .._util import atomic_dir, dumps
from ..errors import ModelFormatError

FORMAT_VERSION = 1
MODEL_JSON = "model.json"
ESTIMATOR_FILE = "estimator.skops"
#: Module prefixes whose types may appear in an estimator.skops beyond skops' own defaults.
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.sparse.", "collections.OrderedDict")


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
    with atomic_dir(path) as tmp:
        payload = {"classifier": model.classifier_, "extractor_state": model.extractor.get_state()}
        sio.dump(payload, tmp / ESTIMATOR_FILE)
        _embed_backbone_weights(meta, tmp)
        (tmp / MODEL_JSON).write_text(dumps(meta) + "\n", encoding="utf-8")
    model.meta_.update({k: meta[k] for k in ("metrics", "data_fingerprint")})
    return path


BUNDLE_PREFIX = "bundle:"


def _embed_backbone_weights(meta: dict[str, Any], folder: Path) -> None:
    """Copy backbone weights given as a local file into the bundle (``backbone-NAME.safetensors``) so
    the bundle works on another machine; packaged ImageNet and hub weights are referenced by name."""
    for name, params in (meta.get("feature_params") or {}).items():
        pre = params.get("pretrained") if isinstance(params, dict) else None
        if not pre or pre in ("imagenet", "hub", "scratch", "none") or str(pre).startswith(BUNDLE_PREFIX):
            continue
        from safetensors.torch import save_file

        from ..features.backbones import load_state_dict_file

        fname = f"backbone-{name}.safetensors"
        sd = {k: v.contiguous() for k, v in load_state_dict_file(pre).items()}
        save_file(sd, str(folder / fname))
        params["pretrained"] = BUNDLE_PREFIX + fname


def _resolve_bundle_files(meta: dict[str, Any], folder: Path) -> None:
    for params in (meta.get("feature_params") or {}).values():
        pre = params.get("pretrained") if isinstance(params, dict) else None
        if isinstance(pre, str) and pre.startswith(BUNDLE_PREFIX):
            f = folder / pre[len(BUNDLE_PREFIX):]
            if not f.exists() or "/" in pre[len(BUNDLE_PREFIX):] or "\\" in pre:
                raise ModelFormatError(f"{folder}: backbone weights {pre} are missing; the bundle is incomplete")
            params["pretrained"] = str(f)


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate ``model.json`` of a bundle folder."""
    p = Path(path)
    mj = p / MODEL_JSON if p.is_dir() else p
    if not mj.exists():
        raise ModelFormatError(f"{p}: not a model bundle (no {MODEL_JSON}); pass the folder written by "
                               "'imgclass train' (runs/NAME/model)")
    try:
        meta = json.loads(mj.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"{mj}: unreadable ({exc}); the bundle is damaged, retrain or re-copy it") from None
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ModelFormatError(f"{mj}: no format_version; not an imgclass bundle")
    if version > FORMAT_VERSION:
        raise ModelFormatError(f"{mj}: bundle format {version} is newer than this imgclass understands "
                               f"({FORMAT_VERSION}); upgrade imgclass (pip install -U imgclass)")
    return meta


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
    kind = meta.get("kind")
    if kind == "feature_pipeline":
        return _load_feature_pipeline(folder, meta)
    if kind == "deep":
        from .deep import DeepClassifier

        return DeepClassifier.from_bundle(folder, meta)
    raise ModelFormatError(f"{folder}: unknown model kind {kind!r}; upgrade imgclass")


def _load_feature_pipeline(folder: Path, meta: dict[str, Any]):
    import skops.io as sio

    from ..features import make_extractor
    from ..transforms import Preprocess
    from .classical import FeaturePipeline

    est = folder / ESTIMATOR_FILE
    if not est.exists():
        raise ModelFormatError(f"{folder}: {ESTIMATOR_FILE} is missing; the bundle is incomplete")
    try:
        untrusted = sio.get_untrusted_types(file=est)
    except Exception as exc:
        raise ModelFormatError(f"{est}: not a valid skops file ({exc}); the bundle is damaged") from None
    refused = [t for t in untrusted if not t.startswith(TRUSTED_PREFIXES)]
    if refused:
        raise ModelFormatError(f"{est}: holds untrusted types {refused[:5]}; refusing to load it. Only "
                               "load bundles from people you trust, and retrain instead")
    try:
        payload = sio.load(est, trusted=untrusted)
    except Exception as exc:
        raise ModelFormatError(f"{est}: cannot load ({exc}); the bundle is damaged or from another version") from None
    _resolve_bundle_files(meta, folder)
    try:
        extractor = make_extractor(meta["features"], meta.get("feature_params"))
        extractor.set_state(payload.get("extractor_state", {}))
        model = FeaturePipeline(extractor, meta["classifier"], Preprocess.from_dict(meta.get("preprocessing")),
                                seed=meta.get("seed", 0), method=meta.get("method"),
                                classifier_params=meta.get("classifier_params"))
    except (KeyError, TypeError) as exc:
        raise ModelFormatError(f"{folder / MODEL_JSON}: missing or bad field {exc}") from None
    model.classifier_ = payload["classifier"]
    model.balance = meta.get("balance", "none")
    model.hierarchy = meta.get("hierarchy", "flat")
    model.classes_ = list(meta["classes"])
    model.task_ = meta.get("task", "multiclass")
    model.taxonomy_ = meta.get("taxonomy")
    if meta.get("decision"):
        from ..tasks.decision import Decision

        model.decision_ = Decision.from_dict(meta["decision"])
    model.meta_ = {k: meta.get(k) for k in ("calibration", "metrics", "data_fingerprint")}
    model.meta_["bundle"] = str(folder)
    return model
