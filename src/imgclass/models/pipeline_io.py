"""A feature pipeline's part of the bundle: the backbone weights its deep features read, and the checks
that the stored classifier answers for exactly the model's classes.

Every file a pipeline's features name is copied into the bundle when saving and confined to it when
loading; a bundle never reads outside its folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .validate import BUNDLE_PREFIX, MODEL_JSON, WEIGHT_NAMES, bundle_file, confined, refuse


def embed_backbone_weights(meta: dict[str, Any], folder: Path) -> None:
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


def resolve_bundle_files(meta: dict[str, Any], folder: Path) -> None:
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


def untrained_classes(model) -> list[str]:
    """Classes a single-label classifier gives no output for (no training images; their column is 0)."""
    clf = model.classifier_
    if isinstance(clf, dict) or model.task_ == "multilabel" or not hasattr(clf, "classes_"):
        return []
    seen = {int(c) for c in clf.classes_}
    return [c for i, c in enumerate(model.classes_) if i not in seen]


def check_outputs(model, est: Path, untrained: list[str]) -> None:
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
            if untrained_classes(model) != untrained:
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
