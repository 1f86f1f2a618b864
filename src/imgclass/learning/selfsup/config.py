"""The options of a self-supervised pretraining run (``PretrainConfig``) and which objectives need what."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from ..._util import ConfigDict
from ...errors import ConfigError

#: simclr: NT-Xent between two views; byol: regress a target network's projection (no negatives);
#: rotation: predict 0/90/180/270 degrees; scan: cluster heads that agree with mined neighbours;
#: selflabel: train on the confident members of each k-means cluster (SCAN's second step)
METHODS = ("simclr", "byol", "rotation", "scan", "selflabel")
#: the objectives that train on cached views with --unfreeze
BANK_METHODS = ("simclr", "scan", "selflabel")
#: the objectives that start from trained features (SCAN mines its neighbours with them, self-labelling
#: takes its first clusters from them)
NEEDS_WEIGHTS = ("scan", "selflabel")
#: the objectives that split the images into --clusters groups (and also cache the plain images in the bank)
CLUSTER_METHODS = ("scan", "selflabel")

#: per method, what differs from ``PretrainConfig``'s defaults
METHOD_DEFAULTS: dict[str, dict[str, Any]] = {
    "simclr": {},
    "byol": {"lr": 1e-3},
    "rotation": {"crop_scale": 0.5},
    # SCAN's recipe (Van Gansbeke et al. 2020): a small rate for the backbone, ten times more for the heads
    "scan": {"lr": 1e-3, "backbone_lr_scale": 0.1},
    # SCAN's self-labelling step: the same rates; a cosine classifier at temperature 0.1
    "selflabel": {"lr": 1e-3, "backbone_lr_scale": 0.1, "temperature": 0.1},
}


@dataclass
class PretrainConfig(ConfigDict):
    """Every option of a pretraining run (stored in the run's ``config.yaml``)."""

    method: str = "simclr"
    backbone: str = "smallcnn"  # NAME (random init), NAME@imagenet, or a pretrained folder (its weights)
    epochs: int = 20
    batch_size: int = 256
    img_size: int | None = None  # decoded size, stored as the input size in backbone.json (default: the backbone's)
    view_size: int | None = None  # side of the augmented views (default: 3/4 of img_size, a multiple of 4; with unfreeze: img_size)
    lr: float | None = None  # None: per optimiser (AdamW 2e-3)
    optimizer: str = "adamw"
    weight_decay: float | None = None  # None: the engine's default (0.05 decoupled for AdamW)
    warmup: float = 0.05  # fraction of the steps
    grad_clip: float | None = None
    temperature: float = 0.2  # simclr
    proj_dim: int = 128  # simclr, byol
    hidden_dim: int = 512  # heads' hidden layer
    tau: float = 0.99  # byol: EMA decay of the target network, raised to 1 along a cosine
    crop_scale: float = 0.2  # smallest area fraction of a random resized crop
    jitter: float = 0.4  # brightness/contrast/saturation strength (hue: a quarter of it)
    p_jitter: float = 0.8
    p_gray: float = 0.2
    hflip: bool = True
    randaugment: int = 0  # strong views: this many RandAugment ops (torchvision, magnitude 9) per view; 0 = off
    unfreeze: int | None = None  # pretrained backbones: train only the last N blocks, on cached views
    view_bank: int = 6  # with unfreeze: augmented views per image run once through the frozen trunk
    backbone_lr_scale: float = 0.3  # pretrained starts: the backbone's learning rate relative to the heads'
    clusters: int | None = None  # scan: number of clusters the heads split the images into
    neighbors: int = 20  # scan: nearest neighbours (in the starting features) each image must agree with
    entropy_weight: float = 5.0  # scan: weight of the spread-over-all-clusters term
    heads: int = 5  # scan: cluster heads trained side by side on the shared backbone
    confident: float = 0.5  # selflabel: share of each cluster (its most confident images) trained on per epoch
    seed: int = 0
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError("--epochs must be at least 1 and --batch-size at least 2")
        for name in ("img_size", "view_size"):
            v = getattr(self, name)
            if v is not None and not 8 <= v <= 1024:
                raise ConfigError(f"--{name.replace('_', '-')} {v}: give a size between 8 and 1024 pixels")
        if not 0 < self.crop_scale <= 1:
            raise ConfigError(f"crop_scale {self.crop_scale}: give a fraction of the image area in (0, 1]")
        if not 0 <= self.randaugment <= 14:
            raise ConfigError(f"--randaugment {self.randaugment}: give a number of operations per view from 0 "
                              "(off) to 14 (e.g. 2)")
        if self.temperature <= 0:
            raise ConfigError(f"--temperature {self.temperature}: must be positive")
        if self.unfreeze is not None:
            if self.unfreeze < 1:
                raise ConfigError(f"--unfreeze {self.unfreeze}: give the number of last blocks to train (at least 1)")
            if self.method not in BANK_METHODS:
                raise ConfigError(f"--unfreeze trains on cached views, which only simclr, scan and selflabel use; "
                                  f"drop --unfreeze or use one of those methods (not {self.method})")
            if self.view_bank < 2:
                raise ConfigError(f"--view-bank {self.view_bank}: give at least 2 views per image (a step pairs two)")
        if self.method in CLUSTER_METHODS and (self.clusters is None or self.clusters < 2):
            raise ConfigError(f"--clusters {self.clusters}: --method {self.method} needs the number of clusters to "
                              "find (at least 2), e.g. --clusters 10")
        if self.method == "selflabel" and not 0 < self.confident <= 1:
            raise ConfigError(f"--confident {self.confident}: give the share of each cluster to train on, in (0, 1] "
                              "(e.g. 0.5)")
        if self.method == "scan":
            if self.neighbors < 1 or self.heads < 1 or self.entropy_weight < 0:
                raise ConfigError(f"--neighbors {self.neighbors} / heads {self.heads} / --entropy-weight "
                                  f"{self.entropy_weight}: give at least 1 neighbour and 1 head, and a weight >= 0")
        self.train_config()  # validates optimizer, lr and the rest the engine checks

    @classmethod
    def for_method(cls, method: str = "simclr", **options: Any) -> PretrainConfig:
        """The config for ``method`` with its defaults, overridden by ``options`` (``None`` = default)."""
        if method not in METHODS:
            raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"unknown pretraining options {unknown}; known: {', '.join(sorted(known))}")
        return cls(**{**METHOD_DEFAULTS[method], **{k: v for k, v in options.items() if v is not None},
                      "method": method})

    def train_config(self):
        """The engine's ``TrainConfig`` for this run: warmup + cosine, no labels-only features."""
        from ...training.engine import TrainConfig

        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
                           schedule="cosine", warmup=self.warmup, weight_decay=self.weight_decay,
                           label_smoothing=0.0, augment="none", head_epochs=0, grad_clip=self.grad_clip,
                           ema=self.tau if self.method == "byol" else 0.0, hflip=self.hflip, tta=False,
                           backbone_lr_scale=self.backbone_lr_scale, threads=self.threads, seed=self.seed)
