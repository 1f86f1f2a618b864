"""Method specs (the strings that name an estimator: ``hog+svm``, ``lite0``) and the task options of a fit."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass

from ..errors import ConfigError


@dataclass(frozen=True)
class MethodSpec:
    """A parsed method spec. ``kind`` is ``"features"`` (FEATURES+CLASSIFIER) or ``"deep"``."""

    text: str
    kind: str
    features: tuple[str, ...] = ()
    classifier: str | None = None
    backbone: str | None = None
    pretrained: str | None = None


@dataclass(frozen=True)
class TaskOptions:
    """How a model decides and balances: one value from ``api.train`` down to the estimator.

    ``positive`` and ``threshold_for`` (binary: ``f1``, ``youden``, ``precision=0.95``), ``min_confidence``
    (hierarchical fallback), ``hierarchy`` (``flat`` or ``local``), ``balance`` (``none``, ``weights``,
    ``sampler``; ``None`` = the train config's) and ``calibrate`` (fit a temperature on validation).
    """

    positive: str | None = None
    threshold_for: str | None = None
    min_confidence: float | None = None
    hierarchy: str = "flat"
    balance: str | None = None
    calibrate: bool = True

    def check(self, ds) -> None:
        """Refuse options that do not fit the dataset ``ds``, before a run folder or a model is made."""
        from ..tasks.decision import tune_decision

        task = ds.task or "multiclass"
        if self.hierarchy not in ("flat", "local"):
            raise ConfigError(f"--hierarchy {self.hierarchy!r}: choose flat or local")
        if self.hierarchy == "local" and task != "hierarchical":
            raise ConfigError("--hierarchy local needs hierarchical data (nested folders or --taxonomy); "
                              f"this is {task}")
        if self.balance is not None and self.balance not in ("none", "weights", "sampler"):
            raise ConfigError(f"--balance {self.balance!r}: choose none, weights or sampler")
        tune_decision(task, list(ds.classes), None, None, taxonomy=ds.taxonomy, positive=self.positive,
                      threshold_for=self.threshold_for, min_confidence=self.min_confidence)

    def to_dict(self) -> dict:
        return asdict(self)


def parse_spec(text: str | MethodSpec) -> MethodSpec:
    """Parse a method spec; raises ``ConfigError`` naming the bad part.

    >>> parse_spec("hog,color_hist+svm").features
    ('hog', 'color_hist')
    """
    from ..features.backbones import BACKBONE_WEIGHTS, read_pretrained_dir
    from ..features.classical import EXTRACTORS
    from .classical import CLASSIFIERS

    if isinstance(text, MethodSpec):
        return text
    raw = (text or "").strip()
    t = raw.lower()
    if not t:
        raise ConfigError("--method is empty; e.g. --method hog+svm (see 'imgclass methods')")
    if "+" in t:
        feats, _, clf = t.rpartition("+")
        names = tuple(_folder_or_lower(f.strip()) for f in raw.rpartition("+")[0].split(",") if f.strip())
        t = raw if any(os.path.isabs(n) for n in names) else t
        for n in names:
            if n not in EXTRACTORS:
                from ..features.deep import is_backbone_name

                if not is_backbone_name(n):
                    raise ConfigError(f"--method {text}: unknown features {n!r}; choose from "
                                      f"{', '.join(EXTRACTORS)}, lite0/lite1/lite2 or a timm backbone "
                                      "(see 'imgclass methods')")
        if clf not in CLASSIFIERS:
            raise ConfigError(f"--method {text}: unknown classifier {clf!r}; choose from "
                              f"{', '.join(CLASSIFIERS)} (see 'imgclass methods')")
        if not names:
            raise ConfigError(f"--method {text}: name features before '+', e.g. hog+{clf}")
        return MethodSpec(text=t, kind="features", features=names, classifier=clf)
    from ..features.deep import is_backbone_name

    folder = _folder_or_lower(raw)
    if os.path.isabs(folder):  # a pretrained folder: its architecture, fine-tuned from its weights
        return MethodSpec(text=raw, kind="deep", backbone=read_pretrained_dir(folder)["arch"],
                          pretrained=os.path.join(folder, BACKBONE_WEIGHTS))
    backbone, _, source = t.partition("@")
    if backbone and is_backbone_name(backbone):
        if source not in ("", "scratch", "imagenet", "hub"):
            raise ConfigError(f"--method {text}: after '@' use scratch, imagenet or hub "
                              "(or give weights with --pretrained FILE)")
        if not source:
            source = "scratch" if backbone == "smallcnn" else "imagenet"
        return MethodSpec(text=t, kind="deep", backbone=backbone, pretrained=None if source == "scratch" else source)
    raise ConfigError(f"--method {text}: unknown method; use FEATURES+CLASSIFIER (e.g. hog+svm), a backbone "
                      "(lite0, resnet18@scratch, smallcnn) or see 'imgclass methods'")


def _folder_or_lower(name: str) -> str:
    """A pretrained backbone folder (``runs/simclr``, from ``imgclass pretrain``) as an absolute path with its
    case kept (a bad folder is a ``ConfigError`` saying why); any other name lower-cased."""
    from ..features.backbones import check_pretrained_dir, looks_like_path, pretrained_dir

    if pretrained_dir(name) is not None or looks_like_path(name):
        return os.path.abspath(check_pretrained_dir(name))
    return name.lower()


def list_methods() -> list[tuple[str, str]]:
    """(spec, description) for every building block and the recommended combinations."""
    from ..features.classical import EXTRACTORS
    from .classical import CLASSIFIERS, RECOMMENDED

    rows = [(spec, desc) for spec, desc in RECOMMENDED]
    rows += [
        ("lite0", "fine-tune ImageNet EfficientNet-Lite0 (offline weights): head first, then the backbone"),
        ("lite1 / lite2", "the same with EfficientNet-Lite1 (240 px) / Lite2 (260 px)"),
        ("lite0+logreg", "frozen Lite0 embeddings (ONNX Runtime, cached on disk) + logistic regression"),
        ("smallcnn", "fast small CNN trained from scratch (small images; speedrun-style training)"),
        ("ARCH@scratch", "any timm architecture trained from scratch, e.g. resnet18@scratch"),
        ("imagenet:lite0", "(predict only) the pretrained ImageNet-1k classifier, no training"),
        ("RUN+logreg / RUN", "a backbone from 'imgclass pretrain --out RUN': frozen + classifier, or fine-tuned"),
    ]
    rows += [(f"{name}+CLASSIFIER", cls.description) for name, cls in EXTRACTORS.items()]
    rows += [(f"FEATURES+{name}", desc) for name, (_, desc) in CLASSIFIERS.items()]
    return rows


def split_methods(text: str) -> list[str]:
    """Split a ``--methods`` value into specs: ``hog,color_hist+svm,lbp+rf`` → 2 specs.

    Commas separate methods except inside a feature list: a comma-separated piece without ``+``
    belongs to the next method's features.
    """
    pieces = [p.strip() for p in text.replace(";", ",").split(",") if p.strip()]
    out, pending = [], []
    for p in pieces:
        if "+" in p:
            out.append(",".join(pending + [p]))
            pending = []
        else:
            pending.append(p)
    if pending:
        out.append(",".join(pending))  # let parse_spec report the incomplete spec
    return out
