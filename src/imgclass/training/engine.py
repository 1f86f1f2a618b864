"""The one training engine for deep models: fine-tuning, partial fine-tuning and training from scratch.

One readable loop in the spirit of the CIFAR-10 speedruns; every speed trick is named where it is used:

- **decode once**: images are decoded and pre-processed once into a uint8 tensor in memory, so an
  epoch costs only the network (small and medium datasets; see ``MAX_IN_MEMORY_BYTES``); larger data,
  and tar shards with ``stream``, are decoded batch by batch by DataLoader workers instead
  (``training.streaming``);
- **batch augmentation on tensors**: flips, translations and brightness/contrast jitter are applied
  to whole batches in the training process, with no per-image Python pipeline or worker processes;
- **channels-last** memory format for convolutions on CPU;
- **one-cycle / cosine schedules with warmup**, label smoothing, optional mixup/cutmix, EMA of weights;
- **head first**: pretrained backbones train the new head alone for ``head_epochs`` before the backbone
  is unfrozen with a lower learning rate (``backbone_lr_scale``); ``unfreeze=N`` trains only the last
  N blocks;
- **flip TTA** at evaluation;
- **DistributedDataParallel** under torchrun (``training.distributed``): a ``DistributedSampler`` gives each
  rank its part of every epoch, each rank takes ``batch_size / world`` images per step (the same global
  batch as one process), gradients are averaged by DDP, validation sums are all-reduced, and only
  rank 0 writes checkpoints;
- ``device`` ``auto|cpu|cuda|mps`` with bf16/fp16 autocast on GPUs (``precision``).

Checkpoints ``last.pt`` and ``best.pt`` are written atomically at the end of every epoch with the
model, optimiser, scheduler, EMA and RNG states, so ``resume`` continues exactly, also after SIGKILL.
They hold only tensors and plain Python values and are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._util import ConfigDict, atomic_write_bytes, progress_bar
from ..errors import ConfigError, DataError

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
    # from drifting onto a few classes: without it, lite0 FixMatch on CIFAR-10 with 250 labels peaked at
    # 0.556 after 33 epochs and fell to 0.40 by epoch 100 as the pseudo-labels piled onto a few classes.
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


# --------------------------------------------------------------------------- augmentation
class BatchAugment:
    """Augmentation on a uint8 batch tensor ``(b, 3, h, w)``; presets mirror ``imgclass.transforms``."""

    def __init__(self, preset: str, generator, hflip: bool = True, degrees: float = 0.0, scale: float = 0.0):
        from ..transforms import AUGMENT_PRESETS

        if preset not in AUGMENT_PRESETS:
            raise ConfigError(f"--augment {preset!r}: choose one of {', '.join(AUGMENT_PRESETS)}")
        self.preset, self.g, self.hflip = preset, generator, hflip
        self.degrees, self.scale = float(degrees), float(scale)

    def _affine(self, x):
        """Random rotation and zoom of a float batch: one ``affine_grid`` + ``grid_sample`` for the whole
        batch (torchvision's v2 RandomAffine draws one set of parameters per call, i.e. per batch)."""
        import torch

        b = x.shape[0]
        theta = (torch.rand(b, generator=self.g) * 2 - 1) * self.degrees * np.pi / 180
        zoom = 1 + (torch.rand(b, generator=self.g) * 2 - 1) * self.scale  # > 1 magnifies
        cos, sin = torch.cos(theta) / zoom, torch.sin(theta) / zoom
        zero = torch.zeros(b)
        mat = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = torch.nn.functional.affine_grid(mat, list(x.shape), align_corners=False)
        # border padding: the corners uncovered by a rotation repeat the edge (a photo's edge, a page's
        # background) instead of turning black
        return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def __call__(self, x):
        import torch

        if self.preset == "none":
            return x.float()
        b, _, h, w = x.shape
        if self.hflip:
            flip = torch.rand(b, generator=self.g) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        x = x.float()
        if self.degrees or self.scale:
            x = self._affine(x)
        if self.preset == "light":
            return x
        if self.preset == "corruptions":  # ImageNet-C-style corruptions on half of the images (numpy)
            from ..transforms import RandomCorruption

            rc = RandomCorruption(seed=int(torch.randint(0, 2**31, (1,), generator=self.g)))
            u8 = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            x = torch.from_numpy(np.stack([rc.apply_array(im) for im in u8])).permute(0, 3, 1, 2).float()
        # translate by up to 1/8 of the side with reflection padding (random crop after padding)
        pad = max(1, h // 8) if self.preset in ("standard", "corruptions") else max(1, h // 6)
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        dx = torch.randint(0, 2 * pad + 1, (b,), generator=self.g)
        dy = torch.randint(0, 2 * pad + 1, (b,), generator=self.g)
        rows = (dy[:, None] + torch.arange(h)[None, :])  # (b, h)
        cols = (dx[:, None] + torch.arange(w)[None, :])  # (b, w)
        idx_b = torch.arange(b)[:, None, None]
        out = xp.permute(0, 2, 3, 1)[idx_b, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        strength = 0.4 if self.preset == "strong" else 0.2
        bright = 1 + (torch.rand(b, 1, 1, 1, generator=self.g) * 2 - 1) * strength
        contrast = 1 + (torch.rand(b, 1, 1, 1, generator=self.g) * 2 - 1) * strength
        mean = out.mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - mean) * contrast + mean) * bright
        return out.clamp_(0, 255)


class StrongView:
    """FixMatch's strong view of a uint8 batch ``(b, 3, h, w)``: RandAugment (two random operations
    at a random magnitude, as in Sohn et al. 2020), then the ``strong`` batch preset (flip, shift,
    colour jitter), then Cutout (one grey square of up to half the side).

    RandAugment and Cutout are torchvision's (``v2.RandAugment``, ``v2.RandomErasing``) called once
    per image: a v2 transform draws one set of parameters per call, and one draw for a whole batch
    would make every strong view in it alike. They use torch's global generator (seeded by the
    trainer). At 64 px they take ~1 ms per image on one core; the 100-epoch CIFAR run in
    ``bench/semi.py`` kept its speed per epoch.
    """

    def __init__(self, generator, hflip: bool = True, magnitudes: int = 31):
        from torchvision.transforms import v2

        self.base = BatchAugment("strong", generator, hflip)
        self.g, self.bins = generator, int(magnitudes)
        self.ra = [v2.RandAugment(num_ops=2, magnitude=m, num_magnitude_bins=self.bins) for m in range(self.bins)]
        self.cutout = v2.RandomErasing(p=1.0, scale=(0.02, 0.25), ratio=(1.0, 1.0), value=127.0)

    def __call__(self, x):
        import torch

        mags = torch.randint(0, self.bins, (x.shape[0],), generator=self.g).tolist()
        x = torch.stack([self.ra[m](im) for m, im in zip(mags, x)])
        x = self.base(x)
        return torch.stack([self.cutout(im) for im in x])


# --------------------------------------------------------------------------- model helpers
def _blocks(model):
    """The sequence of trainable stages (timm's ``blocks`` or ``stages`` or ``layerN``)."""
    for attr in ("blocks", "stages"):
        if hasattr(model, attr):
            return list(getattr(model, attr))
    layers = [getattr(model, f"layer{i}") for i in range(1, 5) if hasattr(model, f"layer{i}")]
    return layers


def set_trainable(model, phase: str, unfreeze: int | None) -> None:
    """``phase="head"``: only the classifier trains; ``"all"``: everything, or the last ``unfreeze`` blocks
    plus the head layers after them."""
    head = model.get_classifier()
    for p in model.parameters():
        p.requires_grad = phase == "all" and unfreeze is None
    for p in head.parameters():
        p.requires_grad = True
    if phase == "all" and unfreeze is not None:
        blocks = _blocks(model)
        for blk in blocks[len(blocks) - unfreeze:] if unfreeze > 0 else []:
            for p in blk.parameters():
                p.requires_grad = True
        for name in ("conv_head", "bn2", "norm", "head", "fc_norm", "final_conv"):
            mod = getattr(model, name, None)
            if mod is not None and hasattr(mod, "parameters"):
                for p in mod.parameters():
                    p.requires_grad = True


class EMA:
    """Exponential moving average of the weights (and a copy of the buffers)."""

    def __init__(self, model, decay: float):
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def update(self, model) -> None:
        import torch

        with torch.no_grad():
            for e, p in zip(self.model.state_dict().values(), model.state_dict().values()):
                if e.dtype.is_floating_point:
                    e.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
                else:
                    e.copy_(p)


# --------------------------------------------------------------------------- the trainer
@dataclass
class TrainData:
    x: Any  # uint8 tensor (n, 3, h, w)
    y: Any  # long tensor (n,) or float (n, C) for multilabel
    skipped: list


class NodeSoftmaxLoss:
    """The ``local`` hierarchical strategy for a network with one logit per taxonomy node: a softmax
    within each group of siblings gives P(node | parent) (one classifier per parent node, sharing the
    backbone); the loss is the negative log-probability of the true leaf, i.e. the sum of the
    cross-entropies of every parent's classifier along the true path."""

    def __init__(self, groups, ancestor_matrix):
        import torch

        self.groups = [torch.as_tensor(g, dtype=torch.long) for g in groups]
        self.A = torch.as_tensor(np.asarray(ancestor_matrix), dtype=torch.float32).T  # (n_nodes, n_leaves)

    def leaf_log_probs(self, logits):
        import torch

        log_cond = torch.zeros_like(logits)
        for idx in self.groups:
            log_cond[:, idx] = torch.log_softmax(logits[:, idx], dim=1)
        return log_cond @ self.A

    def __call__(self, logits, target):
        import torch

        logp = self.leaf_log_probs(logits)
        if target.ndim == 2:  # soft targets (mixup/cutmix)
            return -(target * logp).sum(dim=1).mean()
        return torch.nn.functional.nll_loss(logp, target)


def pseudo_label_threshold(threshold: float, label_smoothing: float, n_classes: int) -> float:
    """The confidence a weak-view prediction needs to become a FixMatch pseudo-label.

    ``threshold`` is read on the scale of what the network is trained toward: with label smoothing
    ``e`` over ``K`` classes its target for the true class is ``1 - e + e / K`` (0.91 for e = 0.1,
    K = 10), so a well-fitted network seldom reaches a fixed 0.95. Measured on cifar10-12k (250 labels,
    lite0 at 64 px, 40 epochs): with the unscaled 0.95 only ~27 of 1,000 unlabelled views per epoch
    passed and FixMatch matched the labels-only run (0.5275 vs 0.5255); scaled, ~260 pass (~80% right)
    and FixMatch reaches 0.5410 (bench/semi.py --method lite0 --semi fixmatch --img-size 64)."""
    if not 0 <= label_smoothing < 1 or n_classes < 1:
        return threshold
    return threshold * (1.0 - label_smoothing + label_smoothing / n_classes)


class Trainer:
    """Train ``model`` on in-memory tensors, checkpointing into ``ckpt_dir`` every epoch.

    ``node_loss`` (a ``NodeSoftmaxLoss``) switches to one output per taxonomy node (``--hierarchy local``).
    ``criterion(logits, target)`` replaces the task's loss, with ``n_classes`` outputs when ``train.y``
    holds something else than one column per class (distillation packs teacher probabilities and labels).
    """

    def __init__(self, model, train: TrainData, val: TrainData | None, cfg: TrainConfig, mean, std,
                 task: str = "multiclass", ckpt_dir: str | Path | None = None, pretrained: bool = False,
                 on_epoch: Callable[[dict], Any] | None = None, log: Callable[[str], Any] = lambda m: None,
                 node_loss: NodeSoftmaxLoss | None = None, unlabeled: TrainData | None = None,
                 criterion: Callable | None = None, n_classes: int | None = None):
        import torch

        from . import distributed

        self.torch = torch
        self.model, self.train, self.val, self.cfg = model, train, val, cfg
        self.dist = distributed.info()
        self.device = distributed.resolve_device(cfg.device)
        self.amp_dtype = distributed.autocast_dtype(self.device, cfg.precision)
        if self.dist.enabled and unlabeled is not None:
            raise ConfigError("--unlabeled (FixMatch) runs on one process; drop --nproc / torchrun for it")
        self.task, self.pretrained, self.on_epoch, self.log = task, pretrained, on_epoch, log
        self.mean = (torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255).to(self.device)
        self.std = (torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255).to(self.device)
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.history: list[dict] = []
        self.epoch = 0
        self.best: float | None = None
        self.bad_epochs = 0
        self.g = torch.Generator().manual_seed(cfg.seed)
        self.augment = BatchAugment(cfg.augment, self.g, cfg.hflip, cfg.degrees, cfg.scale)
        self.unlabeled = unlabeled if unlabeled is not None and len(unlabeled.x) else None
        if self.unlabeled is not None:  # FixMatch views: flip + shift (weak); RandAugment + Cutout (strong)
            self.weak = BatchAugment("standard" if cfg.augment != "none" else "light", self.g, cfg.hflip)
            self.strong = StrongView(self.g, cfg.hflip)
        self._pseudo = [0, 0, 0]  # this epoch: pseudo-labels used, of those scored, of those correct
        if n_classes is None and node_loss is not None:
            n_classes = node_loss.A.shape[1]
        elif n_classes is None:
            n_classes = train.y.shape[1] if train.y.ndim == 2 else int(train.y.max()) + 1
        self.n_classes = n_classes
        self.node_loss = node_loss
        # images per class of the labelled set: class weights (--balance weights), alignment target (FixMatch)
        counts = (torch.bincount(train.y[train.y >= 0], minlength=n_classes).float()
                  if train.y.ndim == 1 else None)
        if self.unlabeled is not None and counts is not None:  # distribution alignment: target and running mean
            self._prior, self._pool_probs = (counts + 1.0) / (counts + 1.0).sum(), []
        weight = None
        if cfg.balance == "weights" and counts is not None:
            c = counts.clamp_min(1)
            weight = c.sum() / (len(c) * c)
        if task == "multilabel":
            self.criterion = torch.nn.BCEWithLogitsLoss()
        elif node_loss is not None:
            self.criterion = node_loss
        else:
            self.criterion = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        if criterion is not None:
            self.criterion, weight = criterion, None
        # read from the loss actually used (CrossEntropyLoss carries its smoothing; BCE and node losses none)
        self.pseudo_threshold = pseudo_label_threshold(
            cfg.pseudo_threshold, float(getattr(self.criterion, "label_smoothing", 0.0)), n_classes)
        # each rank takes its share of the global batch; DistributedSampler pads every rank to ceil(n / world)
        self.local_batch = max(1, cfg.batch_size // self.dist.world)
        self.steps_per_epoch = max(1, math.ceil(math.ceil(len(train.x) / self.dist.world) / self.local_batch))
        from .streaming import StreamingImages

        self.streaming = isinstance(train.x, StreamingImages)  # decoded while training (training.streaming)
        if self.streaming:
            if train.x.sequential and cfg.balance == "sampler":
                raise ConfigError("--balance sampler needs random access to the images; tar shards are streamed "
                                  "in order, so use --balance weights (or --stream off)")
            order_len = None if train.x.sequential else math.ceil(len(train.x) / self.dist.world)
            self.steps_per_epoch = train.x.steps(order_len, self.local_batch, self.dist.world)
        self.model = self.model.to(self.device, memory_format=torch.channels_last)
        if weight is not None:
            self.criterion.weight = weight.to(self.device)
        if node_loss is not None:
            node_loss.A = node_loss.A.to(self.device)
        self.phase = None
        self._build_optimizer("head" if pretrained and cfg.head_epochs > 0 else "all")
        self.net = self.model
        if self.dist.enabled:
            # one DDP wrapper for the whole run, built with every parameter the run will ever train, so it
            # holds across the head -> all phase change; in the head phase the frozen backbone's parameters
            # get no gradient, which find_unused_parameters allows
            set_trainable(self.model, "all", cfg.unfreeze)
            self.net = torch.nn.parallel.DistributedDataParallel(
                self.model, find_unused_parameters=self.phase == "head")
            set_trainable(self.model, self.phase, cfg.unfreeze)
        self.scaler = torch.amp.GradScaler(self.device.split(":")[0], enabled=self.amp_dtype == torch.float16)
        self.ema = EMA(self.model, cfg.ema) if cfg.ema > 0 else None
        self.split = None  # (trunk, tail) when the frozen trunk's activations are cached
        # the cache holds fixed views, and FixMatch needs fresh strong augmentations of unlabelled images
        if (pretrained and cfg.unfreeze is not None and cfg.cache_frozen and self.unlabeled is None
                and not (cfg.degrees or cfg.scale) and not self.dist.enabled and self.device == "cpu" and not self.streaming):
            from .frozen import split_network

            self.split = split_network(self.model, cfg.unfreeze)
        self._cache: dict[str, Any] = {}

    def _activations(self, which: str):
        """Cached trunk activations of the train or val images (computed on first use; not checkpointed,
        since recomputing them is deterministic)."""
        if which not in self._cache:
            from .frozen import ActivationCache

            data = self.train if which == "train" else self.val
            t0 = time.perf_counter()
            corrupt = None
            if which == "train" and self.cfg.augment == "corruptions":  # one corrupted copy per image, cached too
                from ..transforms import RandomCorruption

                corrupt = RandomCorruption(p=1.0, seed=self.cfg.seed).apply_array
            self._cache[which] = ActivationCache.compute(self.split[0], data.x, self.mean[0, :, 0, 0] / 255,
                                                         self.std[0, :, 0, 0] / 255, f"cache frozen blocks ({which})",
                                                         mirrored=self.cfg.hflip, corrupt=corrupt)
            self.log(f"cached frozen-block activations of {len(data.x)} {which} images "
                     f"({self._cache[which].nbytes / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s")
        return self._cache[which]

    # -- optimiser per phase (a new one when the backbone is unfrozen)
    def _build_optimizer(self, phase: str) -> None:
        torch = self.torch
        cfg = self.cfg
        self.phase = phase
        set_trainable(self.model, phase, cfg.unfreeze)
        lr = cfg.default_lr()
        head_ids = {id(p) for p in self.model.get_classifier().parameters()}
        params = [p for p in self.model.parameters() if p.requires_grad]
        if self.pretrained and phase == "all":
            groups = [{"params": [p for p in params if id(p) in head_ids], "lr": lr},
                      {"params": [p for p in params if id(p) not in head_ids], "lr": lr * cfg.backbone_lr_scale}]
        else:
            groups = [{"params": params, "lr": lr}]
        if cfg.optimizer == "adamw":
            self.opt = torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.default_weight_decay())
        elif cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True, weight_decay=cfg.default_weight_decay())
        else:
            self.opt = torch.optim.RMSprop(groups, lr=lr, momentum=0.9, weight_decay=cfg.default_weight_decay())
        head_phase = self.pretrained and cfg.head_epochs > 0
        epochs = cfg.head_epochs if phase == "head" else cfg.epochs - (cfg.head_epochs if head_phase else 0)
        total = max(1, epochs * self.steps_per_epoch)
        max_lrs = [g["lr"] for g in groups]
        if cfg.schedule == "onecycle":
            pct = max(cfg.warmup, 1e-3)
            if pct * total == 1:  # OneCycleLR divides by (pct * total - 1): a one-step warmup needs a nudge
                pct = min(0.5, 1.5 / total)
            self.sched = torch.optim.lr_scheduler.OneCycleLR(self.opt, max_lr=max_lrs, total_steps=total,
                                                             pct_start=pct, anneal_strategy="cos")
        elif cfg.schedule == "cosine":
            warm = max(1, int(cfg.warmup * total))
            self.sched = torch.optim.lr_scheduler.LambdaLR(
                self.opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
        else:
            self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: 1.0)

    def _normalize(self, x):
        return ((x - self.mean) / self.std).contiguous(memory_format=self.torch.channels_last)

    def _mix(self, x, y):
        """mixup / cutmix (one of them per batch when both are on); returns x and soft targets."""
        torch = self.torch
        cfg = self.cfg
        soft = y.float() if y.ndim == 2 else torch.nn.functional.one_hot(y, self.n_classes).float()
        use_cut = cfg.cutmix > 0 and (cfg.mixup <= 0 or torch.rand(1, generator=self.g).item() < 0.5)
        alpha = cfg.cutmix if use_cut else cfg.mixup
        lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=self.g))).beta(alpha, alpha))
        perm = torch.randperm(len(x), generator=self.g)
        if use_cut:
            h, w = x.shape[2:]
            ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
            cy, cx = int(torch.randint(0, h, (1,), generator=self.g)), int(torch.randint(0, w, (1,), generator=self.g))
            y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
            x = x.clone()
            x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
            lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
        else:
            x = lam * x + (1 - lam) * x[perm]
        return x, lam * soft + (1 - lam) * soft[perm]

    def _align(self, prob):
        """Distribution alignment (Berthelot et al., "ReMixMatch", ICLR 2020): scale the predictions by
        the labelled class frequencies over the running mean prediction on the pool, renormalise."""
        torch = self.torch
        self._pool_probs = (self._pool_probs + [prob.mean(0)])[-int(self.cfg.distribution_alignment):]
        running = torch.stack(self._pool_probs).mean(0).clamp_min(1e-6)
        out = prob * (self._prior / running)
        return out / out.sum(dim=1, keepdim=True)

    def _fixmatch_loss(self, n: int):
        """FixMatch: predictions on a weak view of ``n`` unlabelled images that reach
        ``pseudo_threshold`` become targets for the strong view of the same images."""
        torch = self.torch
        u = self.unlabeled
        idx = torch.randint(0, len(u.x), (n,), generator=self.g)
        xu = u.x[idx]
        with torch.no_grad():
            prob = torch.softmax(self.model(self._normalize(self.weak(xu).to(self.device))), dim=1).cpu()
            if self.cfg.distribution_alignment > 0:
                prob = self._align(prob)
        conf, pseudo = prob.max(dim=1)
        mask = conf >= self.pseudo_threshold
        truth = u.y[idx]
        scored = mask & (truth >= 0)
        self._pseudo[0] += int(mask.sum())
        self._pseudo[1] += int(scored.sum())
        self._pseudo[2] += int((pseudo[scored] == truth[scored]).sum())
        if not mask.any():
            return torch.zeros((), requires_grad=False)
        logits = self.model(self._normalize(self.strong(xu[mask]).to(self.device)))
        return torch.nn.functional.cross_entropy(logits, pseudo[mask].to(self.device), reduction="sum") / n

    # -- one epoch
    def _train_epoch(self, bar) -> float:
        torch = self.torch
        cfg = self.cfg
        self.model.train()
        for mod in self.model.modules():  # frozen layers keep their BatchNorm statistics
            if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in mod.parameters()):
                mod.eval()
        n = len(self.train.x)
        rank, world = self.dist.rank, self.dist.world
        if self.streaming and self.train.x.sequential:
            order = None  # shards are read in the stream's own shuffled order
        elif cfg.balance == "sampler" and self.train.y.ndim == 1:
            counts = torch.bincount(self.train.y).float()
            w = (1.0 / counts)[self.train.y]
            order = torch.multinomial(w, n, replacement=True, generator=self.g)
            if world > 1:  # the same draw on every rank (same generator state); equal parts
                order = order[: n // world * world][rank::world]
        elif world > 1:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
            sampler.set_epoch(self.epoch)
            order = torch.tensor(list(sampler), dtype=torch.long)
        else:
            order = torch.randperm(n, generator=self.g)
        total, count = 0.0, 0
        bs = self.local_batch
        amp = torch.autocast(self.device.split(":")[0], dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        if self.streaming:  # (indices, decoded images), the same number of batches on every rank
            batches = self.train.x.batches(self.epoch, order, bs, rank, world)
        else:
            batches = ((order[s:s + bs], None) for s in range(0, len(order), bs))
        for idx, images in batches:
            if len(idx) < 2:  # every rank has the same number of indices, so all ranks skip together
                continue
            if self.split is not None:
                cache = self._activations("train")
                flip = torch.rand(len(idx), generator=self.g) < 0.5 if cfg.augment != "none" and cfg.hflip else None
                corrupt = torch.rand(len(idx), generator=self.g) < 0.5 if cfg.augment == "corruptions" else None
                x = cache.batch(idx, flip, self._shift, self.g, corrupt)
                net = self.split[1]
            else:
                x = self._normalize(self.augment(self.train.x[idx] if images is None else images).to(self.device))
                net = self.net
            y = self.train.y[idx].to(self.device)
            if cfg.mixup > 0 or cfg.cutmix > 0:
                x, target = self._mix(x, y)
            else:
                target = y.float() if y.ndim == 2 else y
            with amp:
                logits = net(x)
                loss = self.criterion(logits.float(), target)
                if self.unlabeled is not None:
                    loss = loss + cfg.unlabeled_weight * self._fixmatch_loss(len(idx) * max(1, cfg.unlabeled_ratio))
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
            self.sched.step()
            if self.ema is not None:
                self.ema.update(self.model)
            total += loss.item() * len(idx)
            count += len(idx)
            bar.advance(len(idx) * world)
        from .distributed import all_reduce_sum

        total, count = all_reduce_sum([total, count])
        return total / max(count, 1)

    def predict_logits(self, x, model=None, tta: bool | None = None, batch_size: int = 256):
        """Logits for a uint8 tensor, in eval mode (with horizontal-flip TTA when enabled)."""
        torch = self.torch
        model = model or (self.ema.model if self.ema is not None else self.model)
        tta = self.cfg.tta if tta is None else tta
        model.eval()
        outs = []
        with torch.no_grad():
            for s in range(0, len(x), batch_size):
                xb = self._normalize(x[s:s + batch_size].to(self.device).float())
                out = model(xb)
                if tta:
                    out = (out + model(xb.flip(3))) / 2
                outs.append(out.float().cpu())
        return torch.cat(outs) if outs else torch.zeros(0, self.n_classes)

    @property
    def _shift(self) -> int:
        from .frozen import cache_shift

        return cache_shift(self.cfg.augment, self._activations("train").plain.shape[-1])

    def _cached_val_logits(self, batch_size: int = 256):
        """Validation logits from cached trunk activations (flip TTA from the mirrored activations)."""
        torch = self.torch
        cache = self._activations("val")
        tail = self.split[1]
        if self.ema is not None:  # the EMA copy has its own parameters: split it the same way, once
            if "ema_tail" not in self._cache:
                from .frozen import split_network

                self._cache["ema_tail"] = split_network(self.ema.model, self.cfg.unfreeze)[1]
            tail = self._cache["ema_tail"]
        tail.model.eval()
        outs = []
        with torch.no_grad():
            for s in range(0, len(cache), batch_size):
                idx = torch.arange(s, min(s + batch_size, len(cache)))
                out = tail(cache.batch(idx))
                if self.cfg.tta:
                    out = (out + tail(cache.batch(idx, torch.ones(len(idx), dtype=torch.bool)))) / 2
                outs.append(out)
        return torch.cat(outs)

    def _score(self) -> dict[str, float]:
        """Validation metrics; under DDP each rank scores a contiguous block of the validation images and
        the sums (correct, loss, count; or tp/fp/fn) are all-reduced, so every rank sees the same numbers."""
        from .distributed import all_reduce_sum, shard_range

        torch = self.torch
        if self.val is None or not len(self.val.x):
            return {}
        lo, hi = shard_range(len(self.val.x), self.dist.rank, self.dist.world)
        if self.split is not None:
            logits = self._cached_val_logits()
        else:
            logits = self.predict_logits(self.val.x[lo:hi])
        y = self.val.y[lo:hi]
        if self.task == "multilabel":
            pred = (logits.sigmoid() >= 0.5).float()
            truth = y.float()
            tp, fp, fn = all_reduce_sum([(pred * truth).sum(), (pred * (1 - truth)).sum(), ((1 - pred) * truth).sum()])
            return {"val_micro_f1": 2 * tp / max(2 * tp + fp + fn, 1e-9)}
        if self.node_loss is not None:
            logits = self.node_loss.leaf_log_probs(logits.to(self.device)).cpu()
        loss = float(torch.nn.functional.cross_entropy(logits, y, reduction="sum")) if len(y) else 0.0
        right, loss, n = all_reduce_sum([(logits.argmax(1) == y).sum(), loss, len(y)])
        return {"val_accuracy": right / max(n, 1), "val_loss": loss / max(n, 1)}

    # -- checkpoints
    def state(self) -> dict[str, Any]:
        torch = self.torch
        return {
            "epoch": self.epoch, "phase": self.phase, "best": self.best, "bad_epochs": self.bad_epochs,
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "ema": self.ema.model.state_dict() if self.ema else None,
            "history": self.history,
            "rng": {"torch": torch.get_rng_state(), "generator": self.g.get_state(),
                    "numpy": _np_state(), "python": list(random.getstate()[1]) + [random.getstate()[2] or 0]},
        }

    def _save(self, name: str) -> None:
        if self.ckpt_dir is None or not self.dist.is_main:  # under DDP only rank 0 writes
            return
        buf = io.BytesIO()
        self.torch.save(self.state(), buf)
        atomic_write_bytes(self.ckpt_dir / name, buf.getvalue())

    def load_checkpoint(self, path: str | Path) -> None:
        torch = self.torch
        try:
            st = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise DataError(f"{path}: unreadable checkpoint ({exc}); start a new run instead of --resume") from None
        if st["phase"] != self.phase:
            self._build_optimizer(st["phase"])
        self.model.load_state_dict(st["model"])
        self.opt.load_state_dict(st["optimizer"])
        if self.device != "cpu":  # optimiser state loads on the CPU; move it next to its parameters
            for state in self.opt.state.values():
                for k, v in state.items():
                    if hasattr(v, "to") and getattr(v, "ndim", 0) > 0:
                        state[k] = v.to(self.device)
        self.sched.load_state_dict(st["scheduler"])
        if self.ema is not None and st.get("ema") is not None:
            self.ema.model.load_state_dict(st["ema"])
        self.epoch, self.best, self.bad_epochs = st["epoch"], st["best"], st["bad_epochs"]
        self.history = list(st["history"])
        torch.set_rng_state(st["rng"]["torch"])
        self.g.set_state(st["rng"]["generator"])
        _set_np_state(st["rng"]["numpy"])
        py = st["rng"]["python"]
        random.setstate((3, tuple(py[:-1]), py[-1] or None))

    # -- the loop
    def fit(self) -> list[dict]:
        torch = self.torch
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        metric_key = "val_micro_f1" if self.task == "multilabel" else "val_accuracy"
        if self.split is not None and self.epoch < cfg.epochs:
            self._activations("train")
            if self.val is not None and len(self.val.x):
                self._activations("val")
        while self.epoch < cfg.epochs:
            if self.pretrained and self.phase == "head" and self.epoch >= cfg.head_epochs:
                self._build_optimizer("all")
            t0 = time.perf_counter()
            with progress_bar(len(self.train.x), f"epoch {self.epoch + 1}/{cfg.epochs}") as bar:
                loss = self._train_epoch(bar)
            train_s = time.perf_counter() - t0
            self.epoch += 1
            rec = {"epoch": self.epoch, "phase": self.phase, "train_loss": loss,
                   "lr": self.opt.param_groups[0]["lr"], "train_s": train_s,
                   "img_per_s": len(self.train.x) / max(train_s, 1e-9), **self._score()}
            if self.unlabeled is not None:
                used, scored, right = self._pseudo
                rec["pseudo_labels"] = used
                if scored:
                    rec["pseudo_accuracy"] = right / scored
                self._pseudo = [0, 0, 0]
            self.history.append(rec)
            score = rec.get(metric_key)
            improved = score is not None and (self.best is None or score > self.best)
            if improved:
                self.best, self.bad_epochs = score, 0
            else:
                self.bad_epochs += 1
            self._save("last.pt")
            if improved:
                self._save("best.pt")
            if self.dist.is_main:
                self.log(f"epoch {self.epoch}/{cfg.epochs}: loss {loss:.4f}"
                         + (f", {metric_key} {score:.4f}" if score is not None else "")
                         + f", {rec['img_per_s']:.0f} img/s")
            if self.on_epoch and self.dist.is_main:
                self.on_epoch(rec)
            if cfg.early_stopping and self.bad_epochs >= cfg.early_stopping:
                self.log(f"early stopping: no improvement for {cfg.early_stopping} epochs")
                break
        from .distributed import barrier

        barrier()  # rank 0 has written its last checkpoint before any rank reads best.pt
        return self.history


def _np_state() -> dict:
    st = np.random.get_state()
    return {"keys": st[1].tolist(), "pos": int(st[2]), "has_gauss": int(st[3]), "gauss": float(st[4])}


def _set_np_state(d: dict) -> None:
    np.random.set_state(("MT19937", np.asarray(d["keys"], dtype=np.uint32), d["pos"], d["has_gauss"], d["gauss"]))
