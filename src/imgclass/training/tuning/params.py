"""Tuned parameters for ``train``: read a ``best.json``, pick the method, and route each parameter to
the deep training options, the classifier or a feature extractor."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ...errors import ConfigError, DataError


def read_best(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``best.json`` written by ``tune``; ``DataError`` naming the file when it is unusable."""
    hint = "give the best.json written by 'imgclass tune'"
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"--params {path}: cannot read it ({exc.strerror or exc}); {hint}") from None
    except ValueError as exc:
        raise DataError(f"--params {path}: not valid JSON ({exc}); {hint}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("params"), dict):
        raise DataError(f"--params {path}: has no \"params\" object; {hint}")
    return doc


def resolve_params(params: dict[str, Any] | str | os.PathLike, method: str | None) -> tuple[str, dict[str, Any]]:
    """``(method, params)`` from a ``best.json`` path or a parameter dict and the user's ``method``.

    The method defaults to the one recorded in ``best.json``; a different ``method`` is a ``ConfigError``.
    """
    from ...models import parse_spec

    if isinstance(params, (str, os.PathLike)):
        doc = read_best(params)
        values, recorded = dict(doc["params"]), doc.get("method")
    else:
        values, recorded = dict(params), None
    if recorded and method and parse_spec(method).text != parse_spec(recorded).text:
        raise ConfigError(f"--method {method} differs from {recorded} in --params {params}; drop --method "
                          f"or tune {method} first")
    method = method or recorded
    if not method:
        raise ConfigError("--params: name the method too (--method); a parameter dict does not record it")
    return method, values


def route_params(method: str, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Send tuned parameters where they belong: ``train_config`` (deep methods), or
    ``classifier_params`` and ``feature_params`` (feature pipelines; ``hog.pixels_per_cell`` style keys).
    Unknown names are a ``ConfigError`` before anything is trained."""
    from dataclasses import fields

    from ...features import make_extractor
    from ...models import make_classifier, parse_spec
    from ..engine import TrainConfig

    spec = parse_spec(method)
    if spec.kind == "deep":
        known = {f.name for f in fields(TrainConfig)}
        bad = sorted(k for k in params if k not in known)
        if bad:
            raise ConfigError(f"--params: {', '.join(bad)} are not deep training options of {spec.text}; "
                              "give the best.json that 'imgclass tune' wrote for this method")
        return {"train_config": dict(params)}
    clf: dict[str, Any] = {}
    feats: dict[str, dict[str, Any]] = {}
    for k, v in params.items():
        name, dot, p = k.partition(".")
        if not dot:
            clf[k] = v
        elif name in spec.features:
            feats.setdefault(name, {})[p] = v
        else:
            raise ConfigError(f"--params: {k} names features {name!r} that {spec.text} does not use")
    try:
        make_classifier(spec.classifier, params=clf)
    except TypeError as exc:
        raise ConfigError(f"--params: bad parameters for the {spec.classifier} classifier ({exc})") from None
    if feats:
        make_extractor(list(spec.features), feats)
    return {"classifier_params": clf, "feature_params": feats}
