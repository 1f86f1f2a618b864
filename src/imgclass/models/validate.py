"""The schema of ``model.json``: every field a bundle feeds into imgclass, checked before any use.

A bundle comes from outside (people share them), so its ``model.json`` is parsed with bounded size and
nesting, then each field is checked for type and range: classes, task, pre-processing sizes against the
pixel budget, the decision rule, the calibration temperature, feature parameters, and every path it names.
Every refusal is a ``ModelFormatError`` naming the file and what to do.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import ModelFormatError

#: the bundle format this imgclass writes; a newer one is refused
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
#: largest ``model.json`` read (bundles hold a short history and metrics: tens of kilobytes)
MAX_META_BYTES = 8 * 1024 * 1024
#: deepest nesting of lists/dicts accepted in a bundle's JSON, and most values in it
MAX_DEPTH = 24
MAX_VALUES = 500_000
MAX_CLASSES = 100_000
#: largest model input (pre-processing size) a bundle may ask for: what one image costs in the extractor
#: or network must stay far inside the memory of a small machine, whatever the decode pixel limit
MAX_INPUT_PIXELS = 640 * 640
MAX_INPUT_SIDE = 4096
TASKS = ("binary", "multiclass", "multilabel", "hierarchical")
KINDS = ("feature_pipeline", "deep")
#: weight sources that are names, not files
WEIGHT_NAMES = ("imagenet", "hub", "scratch", "none")
BUNDLE_PREFIX = "bundle:"

_FIX = "retrain or re-export the model, and only load bundles from people you trust"


def refuse(where: str | os.PathLike, what: str) -> ModelFormatError:
    """The one-line refusal of a bundle file: where, what is wrong and what to do."""
    return ModelFormatError(f"{where}: {what}; {_FIX}")


# ----------------------------------------------------------------------------- bounded JSON
def read_json(path: Path, max_bytes: int = MAX_META_BYTES) -> Any:
    """Parse a JSON file of at most ``max_bytes`` with bounded nesting and value count."""
    try:
        with open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise refuse(path, f"unreadable ({exc.strerror or exc})") from None
    if len(raw) > max_bytes:
        raise refuse(path, f"larger than {max_bytes // (1024 * 1024)} MB")
    return parse_json(raw, path)


def parse_json(raw: bytes | str, where: str | os.PathLike) -> Any:
    """``json.loads`` of untrusted text, refusing deep nesting and huge documents with a clear error."""
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise refuse(where, "not UTF-8 text") from None
    # a cheap bound before parsing: nesting deeper than MAX_DEPTH needs that many brackets
    if raw.count("[") + raw.count("{") > MAX_VALUES:
        raise refuse(where, f"more than {MAX_VALUES} lists and objects")
    try:
        doc = json.loads(raw)
    except RecursionError:
        raise refuse(where, "nested too deeply") from None
    except ValueError as exc:
        raise refuse(where, f"not valid JSON ({exc})") from None
    _check_shape(doc, where)
    return doc


def _check_shape(doc: Any, where) -> None:
    stack, count = [(doc, 1)], 0
    while stack:
        value, depth = stack.pop()
        count += 1
        if depth > MAX_DEPTH:
            raise refuse(where, f"nested deeper than {MAX_DEPTH} levels")
        if count > MAX_VALUES:
            raise refuse(where, f"more than {MAX_VALUES} values")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)


# ----------------------------------------------------------------------------- small type checks
def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _probability(v: Any, where, name: str) -> None:
    if not (is_number(v) and 0.0 <= v <= 1.0):
        raise refuse(where, f"{name} {v!r} is not a probability in [0, 1]")


def check_classes(classes: Any, where, name: str = "classes") -> list[str]:
    """A non-empty list of unique, non-empty class names."""
    if not isinstance(classes, list) or not classes or len(classes) > MAX_CLASSES:
        raise refuse(where, f"{name} must be a list of 1 to {MAX_CLASSES} class names")
    if not all(isinstance(c, str) and c and len(c) <= 1000 for c in classes):
        raise refuse(where, f"{name} must hold non-empty strings")
    if len(set(classes)) != len(classes):
        raise refuse(where, f"{name} holds a class twice")
    return classes


def check_taxonomy(tax: Any, classes: list[str], where, required: bool = False) -> None:
    """``{node: parent or None}`` naming every class, with no cycle."""
    if tax is None:
        if required:
            raise refuse(where, "a hierarchical model needs a taxonomy")
        return
    if not isinstance(tax, dict) or len(tax) > 4 * MAX_CLASSES:
        raise refuse(where, "taxonomy must be an object {node: parent}")
    if not all(isinstance(k, str) and k and (p is None or (isinstance(p, str) and p in tax)) for k, p in tax.items()):
        raise refuse(where, "taxonomy parents must be nodes of the taxonomy or null")
    if required and any(c not in tax for c in classes):
        raise refuse(where, "taxonomy does not name every class")
    depth: dict[str, int] = {}
    for node in tax:
        seen, n = [], node
        while n is not None and n not in depth:
            if n in seen:
                raise refuse(where, f"taxonomy has a cycle through {n!r}")
            seen.append(n)
            n = tax[n]
        base = depth.get(n, 0) if n is not None else 0
        for i, s in enumerate(reversed(seen)):
            depth[s] = base + i + 1


def check_size(size: Any, where, name: str = "preprocessing.size") -> None:
    """A model input size: a positive int or ``[h, w]``, within the pixel limit and the input budget."""
    from ..data.decode import DEFAULT_MAX_PIXELS

    if is_int(size):
        h = w = size
    elif isinstance(size, list) and len(size) == 2 and all(is_int(s) for s in size):
        h, w = size
    else:
        raise refuse(where, f"{name} {size!r} must be a positive integer or [height, width]")
    if h < 1 or w < 1 or h > MAX_INPUT_SIDE or w > MAX_INPUT_SIDE or h * w > min(MAX_INPUT_PIXELS, DEFAULT_MAX_PIXELS):
        raise refuse(where, f"{name} {size!r} is outside 1..{MAX_INPUT_SIDE} pixels a side or above the "
                            f"{MAX_INPUT_PIXELS}-pixel input limit")


def check_preprocess(d: Any, where, name: str = "preprocessing") -> None:
    """The ``Preprocess.to_dict()`` block: known keys, types and ranges."""
    from ..transforms import _INTERP, DENOISE, EQUALIZE, RESIZE_MODES

    if d is None:
        return
    if not isinstance(d, dict):
        raise refuse(where, f"{name} must be an object")
    known = {"size", "resize", "interpolation", "grayscale", "denoise", "denoise_strength", "equalize", "mean", "std"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise refuse(where, f"{name} has unknown keys {unknown[:5]}")
    if d.get("size") is not None:
        check_size(d["size"], where, f"{name}.size")
    for key, allowed in (("resize", RESIZE_MODES), ("interpolation", tuple(_INTERP)), ("denoise", DENOISE),
                         ("equalize", EQUALIZE)):
        if key in d and d[key] not in allowed:
            raise refuse(where, f"{name}.{key} {d[key]!r} is not one of {', '.join(allowed)}")
    if "grayscale" in d and not isinstance(d["grayscale"], bool):
        raise refuse(where, f"{name}.grayscale must be true or false")
    if "denoise_strength" in d and not (is_number(d["denoise_strength"]) and 0 <= d["denoise_strength"] <= 20):
        raise refuse(where, f"{name}.denoise_strength {d['denoise_strength']!r} is outside 0..20")
    for key in ("mean", "std"):
        v = d.get(key)
        if v is None:
            continue
        if not (isinstance(v, list) and len(v) == 3 and all(is_number(x) and abs(x) <= 1e3 for x in v)):
            raise refuse(where, f"{name}.{key} must be three finite numbers")
        if key == "std" and min(v) <= 1e-6:
            raise refuse(where, f"{name}.std must be positive")


def check_decision(d: Any, meta: dict[str, Any], where) -> None:
    """The ``decision`` block: the task's rule with thresholds in [0, 1], naming the model's classes."""
    from ..tasks.decision import Decision

    if d is None:
        return
    if not isinstance(d, dict):
        raise refuse(where, "decision must be an object")
    classes = meta["classes"]
    known = set(Decision.__dataclass_fields__)
    if not set(d) <= known:
        raise refuse(where, f"decision has unknown keys {sorted(set(d) - known)[:5]}")
    if d.get("task", meta["task"]) != meta["task"]:
        raise refuse(where, f"decision.task {d.get('task')!r} differs from task {meta['task']!r}")
    if "classes" in d and d["classes"] != classes:
        raise refuse(where, "decision.classes differ from classes")
    if d.get("positive") is not None and d["positive"] not in classes:
        raise refuse(where, f"decision.positive {d['positive']!r} is not a class")
    for key in ("threshold", "min_confidence"):
        if d.get(key) is not None:
            _probability(d[key], where, f"decision.{key}")
    if d.get("thresholds") is not None:
        t = d["thresholds"]
        if not isinstance(t, list) or len(t) != len(classes):
            raise refuse(where, f"decision.thresholds must hold one threshold per class ({len(classes)})")
        for x in t:
            _probability(x, where, "decision.thresholds")
    if d.get("objective") is not None and not (isinstance(d["objective"], str) and len(d["objective"]) < 100):
        raise refuse(where, "decision.objective must be a short string")
    if d.get("hierarchy", "flat") not in ("flat", "local"):
        raise refuse(where, "decision.hierarchy must be flat or local")
    if d.get("tuned_on") is not None and not isinstance(d["tuned_on"], dict):
        raise refuse(where, "decision.tuned_on must be an object")
    if d.get("taxonomy") is not None:
        check_taxonomy(d["taxonomy"], classes, where, required=meta["task"] == "hierarchical")


def check_temperature(t: Any, where, name: str = "temperature") -> None:
    """A calibration temperature: ``None`` or a finite number in [0.001, 1000]."""
    if t is not None and not (is_number(t) and 1e-3 <= t <= 1e3):
        raise refuse(where, f"{name} {t!r} must be a finite number in [0.001, 1000]")


def check_calibration(cal: Any, where) -> None:
    if cal is None:
        return
    if not isinstance(cal, dict):
        raise refuse(where, "calibration must be an object")
    check_temperature(cal.get("temperature"), where, "calibration.temperature")


# ----------------------------------------------------------------------------- feature parameters
#: bounds of every numeric feature parameter imgclass's extractors take (name -> (low, high))
_PARAM_RANGES: dict[str, tuple[float, float]] = {
    "orientations": (1, 64), "pixels_per_cell": (1, 1024), "cells_per_block": (1, 64), "grid": (1, 64),
    "radii": (1, 32), "bins": (1, 256), "wavelengths": (0.5, 256), "levels": (2, 256), "distances": (1, 256),
    "step": (1, 1024), "patch": (1, 1024), "k": (1, 65536), "max_descriptors": (1, 10_000_000),
    "batch_size": (1, 1024), "seed": (0, 2**63 - 1),
}


def check_feature_params(meta: dict[str, Any], where) -> None:
    """``features`` names and ``feature_params``: known shapes and bounded numbers, so an extractor
    built from them cannot allocate without bound."""
    feats = meta.get("features")
    if not (isinstance(feats, list) and 1 <= len(feats) <= 16 and all(isinstance(f, str) and f for f in feats)):
        raise refuse(where, "features must be a list of 1 to 16 extractor names")
    params = meta.get("feature_params") or {}
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise refuse(where, "feature_params must be an object of objects")
    for fname, p in params.items():
        for key, v in p.items():
            label = f"feature_params.{fname}.{key}"
            if key == "size":
                if v is not None:
                    check_size(v, where, label)
                continue
            if key in ("backbone", "pretrained", "output"):
                if v is not None and not isinstance(v, str):
                    raise refuse(where, f"{label} must be a string")
                continue
            values = v if isinstance(v, list) else [v]
            if len(values) > 8:
                raise refuse(where, f"{label} has more than 8 values")
            lo, hi = _PARAM_RANGES.get(key, (-1e6, 1e6))
            for x in values:
                if isinstance(x, bool) or x is None:
                    continue
                if not is_number(x) or not lo <= x <= hi:
                    raise refuse(where, f"{label} {x!r} is outside {lo}..{hi}")
        if isinstance(p.get("bins"), list) and math.prod(p["bins"]) > 1 << 20:
            raise refuse(where, f"feature_params.{fname}.bins ask for more than {1 << 20} bins")
        try:
            _check_feature_cost(fname, p, where)
        except (TypeError, ValueError):
            raise refuse(where, f"feature_params.{fname} hold a list where a number belongs") from None


#: most values one extractor may produce or hold per image (HOG blocks, dense keypoints)
MAX_FEATURE_VALUES = 1 << 22
MAX_KEYPOINTS = 1 << 16


def _check_feature_cost(fname: str, p: dict[str, Any], where) -> None:
    """Refuse parameter combinations whose per-image cost grows with their product (each one in range)."""
    size = p.get("size") if is_int(p.get("size")) else 64
    if fname == "hog":
        cells = size // max(1, int(p.get("pixels_per_cell", 16)))
        cpb = int(p.get("cells_per_block", 2))
        n = max(0, cells - cpb + 1) ** 2 * cpb ** 2 * int(p.get("orientations", 9)) * 3
        if n > MAX_FEATURE_VALUES:
            raise refuse(where, f"feature_params.hog describe {n} values per image (at most {MAX_FEATURE_VALUES})")
    if fname in ("sift", "orb") and (size // max(1, int(p.get("step", 8)))) ** 2 > MAX_KEYPOINTS:
        raise refuse(where, f"feature_params.{fname} ask for more than {MAX_KEYPOINTS} keypoints per image")


# ----------------------------------------------------------------------------- paths
def confined(folder: Path, ref: str, where) -> Path:
    """The file or folder ``bundle:NAME`` inside the bundle ``folder`` (no absolute path, no ``..``, no
    symlink leaving the folder)."""
    name = ref[len(BUNDLE_PREFIX):] if ref.startswith(BUNDLE_PREFIX) else ref
    if not name or name.startswith(("/", "\\", "~")) or ".." in Path(name).parts or "\\" in name or ":" in name:
        raise refuse(where, f"{ref!r} must name a file inside the bundle folder")
    root = folder.resolve()
    target = (folder / name).resolve()
    if not target.is_relative_to(root) or target == root:
        raise refuse(where, f"{ref!r} leads outside the bundle folder")
    if not target.exists():
        raise ModelFormatError(f"{where}: {ref} is missing from the bundle folder; the bundle is incomplete, "
                               "copy it again")
    if not (target.is_file() or target.is_dir()):
        raise refuse(where, f"{ref!r} is not a regular file or folder")
    return target


def bundle_file(folder: Path, name: str) -> Path:
    """``folder/name`` if it is a regular file inside the bundle folder (a symlink may not lead out of it;
    a FIFO or device is never opened); the path as given when it does not exist."""
    p = folder / name
    if not p.exists() and not p.is_symlink():
        return p
    if not p.resolve().is_relative_to(folder.resolve()):
        raise refuse(p, "is a link leading outside the bundle folder")
    if not p.is_file():
        raise refuse(p, "is not a regular file")
    return p


def check_weight_source(value: Any, folder: Path, where, name: str) -> str | None:
    """A weights source named by a bundle: a registered name, or ``bundle:FILE`` resolved inside the folder."""
    if value is None or value in WEIGHT_NAMES:
        return value
    if isinstance(value, str) and value.startswith(BUNDLE_PREFIX):
        return str(confined(folder, value, where))
    raise refuse(where, f"{name} {value!r} is neither a registered weights name ({', '.join(WEIGHT_NAMES)}) "
                        "nor a bundle: file; bundles never read files outside their folder")


def check_backbone_name(value: Any, folder: Path, where, name: str) -> str:
    """A backbone named by a bundle: an architecture name, or ``bundle:DIR`` (a pretrained folder copied
    into the bundle)."""
    from ..features.backbones import looks_like_path

    if not isinstance(value, str) or not value or len(value) > 200:
        raise refuse(where, f"{name} must be a backbone name")
    if value.startswith(BUNDLE_PREFIX):
        return str(confined(folder, value, where))
    if looks_like_path(value) or ":" in value:
        raise refuse(where, f"{name} {value!r} is a path outside the bundle; bundles never read files outside "
                            "their folder")
    return value


# ----------------------------------------------------------------------------- the whole document
def check_meta(meta: Any, where: Path) -> dict[str, Any]:
    """``meta`` if it is a well-formed ``model.json`` of a known kind, else a ``ModelFormatError``."""
    if not isinstance(meta, dict):
        raise refuse(where, "not a JSON object")
    version = meta.get("format_version")
    if not is_int(version):
        raise ModelFormatError(f"{where}: no format_version; not an imgclass bundle")
    if version > FORMAT_VERSION:
        raise ModelFormatError(f"{where}: bundle format {version} is newer than this imgclass understands "
                               f"({FORMAT_VERSION}); upgrade imgclass (pip install -U imgclass)")
    if version < 1:
        raise refuse(where, f"format_version {version} is not valid")
    if meta.get("kind") not in KINDS:
        raise ModelFormatError(f"{where}: unknown model kind {meta.get('kind')!r}; upgrade imgclass")
    meta.setdefault("task", "multiclass")
    if meta["task"] not in TASKS:
        raise refuse(where, f"task {meta['task']!r} is not one of {', '.join(TASKS)}")
    check_classes(meta.get("classes"), where)
    untrained = meta.get("untrained_classes")
    if untrained is not None and not (isinstance(untrained, list) and all(c in meta["classes"] for c in untrained)):
        raise refuse(where, "untrained_classes must list classes of the model")
    if meta["task"] == "binary" and len(meta["classes"]) != 2:
        raise refuse(where, "a binary model has exactly two classes")
    check_taxonomy(meta.get("taxonomy"), meta["classes"], where, required=meta["task"] == "hierarchical")
    check_preprocess(meta.get("preprocessing"), where)
    check_decision(meta.get("decision"), meta, where)
    check_calibration(meta.get("calibration"), where)
    for key, allowed in (("hierarchy", ("flat", "local")), ("balance", ("none", "weights", "sampler"))):
        if key in meta and meta[key] not in allowed:
            raise refuse(where, f"{key} {meta[key]!r} is not one of {', '.join(allowed)}")
    if "seed" in meta and not (is_int(meta["seed"]) and 0 <= meta["seed"] < 2**63):
        raise refuse(where, "seed must be a non-negative integer")
    for key in ("method", "classifier", "arch"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise refuse(where, f"{key} must be a string")
    for key in ("classifier_params", "train_config", "metrics", "onnx"):
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise refuse(where, f"{key} must be an object")
    if meta.get("history") is not None and not isinstance(meta["history"], list):
        raise refuse(where, "history must be a list")
    if meta["kind"] == "feature_pipeline":
        check_feature_params(meta, where)
        if not isinstance(meta.get("classifier"), str):
            raise refuse(where, "classifier must name a classifier")
    else:
        if not isinstance(meta.get("backbone"), str):
            raise refuse(where, "backbone must name a backbone")
        if meta.get("preprocessing") is None or (meta["preprocessing"].get("size") is None):
            raise refuse(where, "a deep model needs preprocessing.size")
    return meta


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``model.json`` of a bundle folder, checked against the bundle schema (``check_meta``)."""
    p = Path(path)
    mj = bundle_file(p, MODEL_JSON) if p.is_dir() else p
    if not mj.is_file():
        raise ModelFormatError(f"{p}: not a model bundle (no {MODEL_JSON}); pass the folder written by "
                               "'imgclass train' (runs/NAME/model)")
    return check_meta(read_json(mj), mj)
