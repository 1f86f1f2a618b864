"""The options of a deep training run (``TrainConfig``) and the tensors it trains on (``TrainData``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._util import ConfigDict
from ..errors import ConfigError

OPTIMIZERS = ("adamw", "sgd", "rmsprop")
SCHEDULES = ("onecycle", "cosine", "constant")


@dataclass
class TrainConfig(ConfigDict):
    """Every option of a deep training run (stored in ``config.yaml`` and the bundle)."""

    epochs: int = 10
    batch_size: int = 64
    lr: float | None = None  # None: per optimiser default
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    warmup: float = 0.1  # fraction of the steps
    weight_decay: float | None = None  # None: 0.05 for AdamW (decoupled), 5e-4 for SGD/RMSprop
    label_smoothing: float = 0.1
    dropout: float = 0.0
    mixup: float = 0.0  # alpha; 0 = off
    cutmix: float = 0.0  # alpha; 0 = off
    ema: float = 0.0  # decay per step, e.g. 0.999; 0 = off
    grad_clip: float | None = 2.0
    early_stopping: int | None = None  # patience in epochs
    balance: str = "none"  # none | weights | sampler
    augment: str = "standard"
    head_epochs: int = 1  # pretrained backbones: epochs with the backbone frozen
    backbone_lr_scale: float = 0.1
    unfreeze: int | str | None = None  # train only the last N blocks (None or "all" = every block)
    cache_frozen: bool = True  # with unfreeze: run the frozen trunk once and cache its activations
    hflip: bool = True  # horizontal flips in augmentation and TTA; off for text, digits, handwriting
    # random rotation (± degrees) and zoom (side scaled by 1 ± scale) in the batch augmentation; 0 = off.
    # They need the images, so they turn the frozen-trunk activation cache off.
    degrees: float = 0.0
    scale: float = 0.0
    tta: bool = True
    # semi-supervised (FixMatch) with unlabelled images: unlabelled images per labelled one in a step,
    # the confidence a weak-view prediction needs to become a pseudo-label, and the loss weight
    unlabeled_ratio: int = 1
    pseudo_threshold: float = 0.95
    unlabeled_weight: float = 1.0
    # distribution alignment of the weak-view predictions (ReMixMatch): each is multiplied by the class
    # frequencies of the labelled images over the running mean of the predictions on the pool (the mean
    # of the last ``distribution_alignment`` batches), then renormalised; 0 = off. It keeps pseudo-labels
    # from drifting onto a few classes over long runs.
    distribution_alignment: int = 32
    threads: int | None = None
    # auto: decode the training images into memory when they fit (MAX_IN_MEMORY_BYTES), else stream them;
    # on: always stream (tar shards are then read front to back through a shuffle buffer); off: memory
    stream: str = "auto"
    shuffle_buffer: int = 1000  # streamed shards: items held for shuffling
    workers: int | None = None  # streaming: decoding processes (default: half the cores, at least 1)
    device: str = "auto"  # auto | cpu | cuda | mps (auto: a GPU when there is one)
    precision: str = "auto"  # auto (bf16/fp16 autocast on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    seed: int = 0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"--schedule {self.schedule!r}: choose one of {', '.join(SCHEDULES)}")
        if self.balance not in ("none", "weights", "sampler"):
            raise ConfigError(f"--balance {self.balance!r}: choose none, weights or sampler")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("--epochs and --batch-size must be at least 1")
        if isinstance(self.unfreeze, str):
            if self.unfreeze.strip().lower() == "all":
                self.unfreeze = None
            elif self.unfreeze.strip().isdigit():
                self.unfreeze = int(self.unfreeze)
            else:
                raise ConfigError(f"--unfreeze {self.unfreeze!r}: give a number of blocks or 'all'")
        if not self.hflip:  # a mirrored image is another class: no flip augmentation, no flip TTA
            self.tta = False
        if self.unfreeze is not None and self.unfreeze < 0:
            raise ConfigError(f"--unfreeze {self.unfreeze}: give a number of blocks (0 = head only) or 'all'")
        if isinstance(self.stream, bool):  # YAML 1.1 reads an unquoted on/off as a boolean
            self.stream = "on" if self.stream else "off"
        if self.stream not in ("auto", "on", "off"):
            raise ConfigError(f"--stream {self.stream!r}: choose auto, on or off")
        if self.precision not in ("auto", "fp32", "bf16", "fp16"):
            raise ConfigError(f"--precision {self.precision!r}: choose auto, fp32, bf16 or fp16")
        if not 0 <= self.degrees <= 180:
            raise ConfigError(f"--degrees {self.degrees}: give a rotation between 0 and 180 degrees")
        if not 0 <= self.scale < 1:
            raise ConfigError(f"--scale {self.scale}: give a zoom fraction in [0, 1), e.g. 0.15 for 0.85-1.15x")

    def default_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return 0.05 if self.optimizer == "adamw" else 5e-4

    def default_lr(self) -> float:
        return self.lr if self.lr is not None else {"adamw": 2e-3, "sgd": 0.1, "rmsprop": 1e-3}[self.optimizer]



@dataclass
class TrainData:
    """Images and targets of one part (train, val or unlabelled) as the ``Trainer`` reads them."""

    x: Any  # uint8 tensor (n, 3, h, w), or a ``StreamingImages`` decoded while training
    y: Any  # long tensor (n,) or float (n, C) for multilabel
    skipped: list
