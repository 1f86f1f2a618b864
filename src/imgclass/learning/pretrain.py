"""Self-supervised pretraining of a backbone on unlabelled images: SimCLR, BYOL, rotation prediction,
and clustering objectives (SCAN and its self-labelling step).

``pretrain("photos/", method="simclr", backbone="smallcnn", out="runs/simclr")`` decodes the images
once (class sub-folders, if any, are ignored), trains the backbone without labels and writes
``runs/simclr/backbone.safetensors`` + ``backbone.json`` (architecture, input size, mean/std: timm's
pretrained config travelling with the weights). The run directory is then a backbone name
everywhere one is accepted: ``--method runs/simclr+logreg`` (linear probe on frozen features),
``--method runs/simclr`` (fine-tuning), ``--features runs/simclr`` (clustering).

- **simclr** (Chen et al. 2020): two augmented views per image, a 2-layer projection head and the
  NT-Xent loss (each view must pick its partner among the 2B-1 others of the batch);
- **byol** (Grill et al. 2020): an online network with a predictor regresses the projection of the
  other view made by a target network, an EMA of the online one (no negatives);
- **rotation** (Gidaris et al. 2018): predict which of 0/90/180/270 degrees an augmented image was
  rotated by (one view per image: the cheapest).
- **scan** (Van Gansbeke et al. 2020, "SCAN: Learning to Classify Images without Labels"): starting
  from trained features (``NAME@imagenet`` or an earlier run), each image's ``neighbors`` nearest
  images are mined once; then the backbone and ``heads`` linear cluster heads (``clusters`` outputs)
  learn to put an image and a random neighbour, each as a random view, in the same cluster with
  confidence, while the batch's mean prediction keeps its entropy (``entropy_weight``) so no cluster
  is left empty. The features come out grouped by cluster: ``imgclass cluster --features runs/scan``.
- **selflabel** (SCAN's self-labelling step): starting from trained features (usually a SCAN run),
  k-means splits the images into ``clusters``; a cosine classifier starts at its centroids. Each
  epoch every image goes to its most probable cluster, the ``confident`` share of each cluster with
  the highest probability is kept, and the backbone and classifier learn to give those clusters to
  random augmented views, each cluster weighted by the inverse of its size. Confident, mostly right
  clusters teach the network what the uncertain images have in common with them.

The features are taken before the heads (globally pooled backbone output).

**Domain adaptation** (``unfreeze=N``, SimCLR, SCAN and self-labelling): starting from ``NAME@imagenet`` or an earlier run,
only the last ``N`` blocks and the heads train. The frozen trunk runs once over a bank of ``view_bank``
augmented views per image (``_view_bank``), and each step pairs two different cached views of each
image (SCAN: a cached view of an image and one of a neighbour). This is how ImageNet features are
adapted to another domain without labels on a CPU, e.g. to cluster small photos whose ImageNet
embeddings group by texture and background more than by object (``bench/cluster.py --adapt``, then
``--scan``).

Why not Lightly: ``pip install lightly`` (1.6.0, checked with ``pip install --dry-run -c constraints.txt``)
keeps the torch pin but pulls pytorch-lightning, torchmetrics, hydra-core, omegaconf and aiohttp for
what is here about 60 lines (two losses, a projection head, batch augmentations); so they are written
by hand.

Speed tricks for small CPUs, each named where it is used:

- **decode once** into a uint8 tensor (``decode_to_tensor``), as the training engine does;
- **augment whole batches on tensors**: one ``affine_grid``/``grid_sample`` does the random resized
  crop *and* the flip of every image of the batch, colour jitter and grayscale are per-image factors
  broadcast over the batch (torchvision's v2 transforms draw one set of parameters per call, i.e. per
  batch, so per-image parameters are drawn here);
- **both views in one forward pass** (a batch of 2B), channels-last (set by the engine);
- **smaller views** (``view_size``): training on crops smaller than the probe size costs less per
  image, and random resized crops make objects look larger than at test time anyway (FixRes).

There is one training loop (DESIGN.md): ``SelfSupervisedTrainer`` is the engine's ``Trainer`` with
only the objective replaced (``_train_epoch``: views → loss) and no validation score. The optimiser,
warmup + cosine schedule, EMA (BYOL's target network), atomic weights-only checkpoints with RNG states,
exact resume, the progress bar with rate and ETA, and the epoch log are the engine's.
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .._util import ConfigDict, atomic_path, atomic_write_bytes, atomic_write_json, figure_png
from ..errors import ConfigError, DataError
from ..features.backbones import pretrain_test_size, pretrain_view_size
from ..training.engine import TrainData, Trainer

METHODS = ("simclr", "byol", "rotation", "scan", "selflabel")
#: the objectives that train on cached views with --unfreeze
BANK_METHODS = ("simclr", "scan", "selflabel")
#: the objectives that start from trained features (SCAN mines its neighbours with them, self-labelling
#: takes its first clusters from them)
NEEDS_WEIGHTS = ("scan", "selflabel")
#: the objectives that split the images into --clusters groups (and also cache the plain images in the bank)
CLUSTER_METHODS = ("scan", "selflabel")
#: a run's view bank (``--unfreeze``), in its ``checkpoints/``; reused by ``--resume`` and by runs started from it
BANK_FILE = "view_bank.safetensors"

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
        from ..training.engine import TrainConfig

        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr, optimizer=self.optimizer,
                           schedule="cosine", warmup=self.warmup, weight_decay=self.weight_decay,
                           label_smoothing=0.0, augment="none", head_epochs=0, grad_clip=self.grad_clip,
                           ema=self.tau if self.method == "byol" else 0.0, hflip=self.hflip, tta=False,
                           backbone_lr_scale=self.backbone_lr_scale, threads=self.threads, seed=self.seed)


# --------------------------------------------------------------------------- augmentation
class ViewAugment:
    """Random views of a uint8 batch ``(b, 3, h, w)`` → float ``(b, 3, size, size)`` in [0, 255]: random
    resized crop (area ``crop_scale``-1, aspect 3/4-4/3) and horizontal flip, colour jitter with
    probability ``p_jitter`` (brightness, contrast, saturation, hue) and grayscale with ``p_gray`` —
    SimCLR's CIFAR recipe (no blur at small sizes). Every image gets its own parameters, drawn from
    ``generator``. ``randaugment=N`` adds SCAN's strong augmentation after the crop: N random RandAugment
    operations per image (shear, translate, rotate, posterize, solarize, equalize, ...; magnitude 9)."""

    def __init__(self, generator, size: int, crop_scale: float = 0.2, jitter: float = 0.4, p_jitter: float = 0.8,
                 p_gray: float = 0.2, hflip: bool = True, randaugment: int = 0):
        self.g, self.size, self.crop_scale, self.jitter = generator, size, crop_scale, jitter
        self.p_jitter, self.p_gray, self.hflip, self.randaugment = p_jitter, p_gray, hflip, randaugment

    def _strong(self, x):
        """torchvision's RandAugment on each image of the float batch ``x`` (values 0-255). It draws one set of
        operations per call from torch's global generator, hence one call per image, under a seed drawn
        from ``self.g`` so the views stay reproducible."""
        import torch
        from torchvision.transforms import v2

        ra = v2.RandAugment(num_ops=self.randaugment)
        seed = int(torch.randint(2**31 - 1, (1,), generator=self.g))
        u8 = x.round().clamp_(0, 255).to(torch.uint8)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return torch.stack([ra(img) for img in u8]).float()

    def _u(self, b: int, lo: float, hi: float):
        import torch

        return torch.rand(b, generator=self.g) * (hi - lo) + lo

    def __call__(self, x):
        import torch
        import torch.nn.functional as F

        b = len(x)
        # random resized crop + flip as one affine sampling grid per image (bilinear, reflection at borders)
        area = self._u(b, self.crop_scale, 1.0)
        ratio = torch.exp(self._u(b, math.log(3 / 4), math.log(4 / 3)))
        w = torch.sqrt(area * ratio).clamp(max=1.0)
        h = torch.sqrt(area / ratio).clamp(max=1.0)
        cx = (torch.rand(b, generator=self.g) * 2 - 1) * (1 - w)
        cy = (torch.rand(b, generator=self.g) * 2 - 1) * (1 - h)
        flip = torch.rand(b, generator=self.g) < 0.5 if self.hflip else torch.zeros(b, dtype=torch.bool)
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = torch.where(flip, -w, w)
        theta[:, 0, 2] = cx
        theta[:, 1, 1] = h
        theta[:, 1, 2] = cy
        grid = F.affine_grid(theta, [b, 3, self.size, self.size], align_corners=False)
        out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        if self.randaugment:
            out = self._strong(out)
        # colour jitter (torchvision's ColorJitter maths, one draw per image, identity where not applied)
        on = (torch.rand(b, generator=self.g) < self.p_jitter).view(b, 1, 1, 1)
        s = self.jitter

        def factor(strength):
            return torch.where(on, self._u(b, 1 - strength, 1 + strength).view(b, 1, 1, 1), torch.ones(()))

        out = (out * factor(s)).clamp_(0, 255)
        mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
        out = ((out - mean) * factor(s) + mean).clamp_(0, 255)
        gray = _gray(out)
        out = ((out - gray) * factor(s) + gray).clamp_(0, 255)
        angle = torch.where(on.view(b), self._u(b, -s / 4, s / 4), torch.zeros(())) * 2 * math.pi
        out = _rotate_hue(out, angle).clamp_(0, 255)
        to_gray = (torch.rand(b, generator=self.g) < self.p_gray).view(b, 1, 1, 1)
        return torch.where(to_gray, _gray(out).expand_as(out), out)


_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


def _gray(x):
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])


def _rotate_hue(x, angle):
    """Shift the hue of each image by ``angle`` radians: a rotation of the chroma plane in YIQ space
    (one 3x3 matrix per image; no per-pixel HSV conversion)."""
    import torch

    T = torch.tensor(_YIQ)
    c, s = torch.cos(angle), torch.sin(angle)
    R = torch.zeros(len(angle), 3, 3)
    R[:, 0, 0] = 1
    R[:, 1, 1], R[:, 1, 2], R[:, 2, 1], R[:, 2, 2] = c, -s, s, c
    M = torch.linalg.inv(T) @ R @ T
    return torch.einsum("bij,bjhw->bihw", M, x)


# --------------------------------------------------------------------------- losses and network
def nt_xent(z1, z2, temperature: float = 0.2):
    """SimCLR's NT-Xent loss: for each of the 2B views, cross-entropy of picking its partner among the
    2B-1 other views by cosine similarity / ``temperature``."""
    import torch
    import torch.nn.functional as F

    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T / temperature).masked_fill(torch.eye(2 * n, dtype=torch.bool), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, target)


def byol_loss(p, t):
    """BYOL's loss: 2 - 2 cos(prediction, target projection), the target without gradient."""
    import torch.nn.functional as F

    return (2 - 2 * F.cosine_similarity(p, t.detach(), dim=-1)).mean()


def scan_loss(anchors, neighbours, entropy_weight: float = 5.0):
    """SCAN's loss (Van Gansbeke et al. 2020) per head, for cluster logits ``(heads, b, k)`` of ``b`` images
    and of one of their nearest neighbours each: minus the log of the dot product of the two cluster
    distributions (an image and its neighbour fall in the same cluster, confidently), minus
    ``entropy_weight`` times the entropy of the batch's mean distribution (every cluster gets used)."""
    import torch

    pa, pn = anchors.softmax(-1), neighbours.softmax(-1)
    consistency = -torch.log((pa * pn).sum(-1).clamp_min(1e-8)).mean(-1)
    mean = pa.mean(-2)
    entropy = -(mean * torch.log(mean.clamp_min(1e-8))).sum(-1)
    return consistency - entropy_weight * entropy


def mine_neighbors(features, k: int):
    """``(n, k)`` indices of each row's ``k`` nearest other rows by cosine similarity (the project's
    FAISS search, ``features.neighbours``: exact below 5,000 rows, HNSW above)."""
    import torch

    from ..features.neighbours import cosine_neighbours

    n = len(features)
    _, nb = cosine_neighbours(features.float().numpy(), k + 1)
    rows = np.arange(n)[:, None]
    nb = np.where(nb < 0, rows, nb)  # a hit HNSW could not fill: the image itself, a harmless pair
    # the first k hits that are not the row itself (identical rows can rank before it)
    nb = np.take_along_axis(nb, np.argsort(nb == rows, axis=1, kind="stable"), axis=1)[:, :k]
    return torch.from_numpy(np.ascontiguousarray(nb, dtype=np.int64))


def _mlp(d_in: int, hidden: int, d_out: int):
    from torch import nn

    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, d_out))


def _cluster_heads(d: int, k: int, heads: int):
    """SCAN's heads: ``heads`` linear ``d → k`` cluster classifiers side by side; logits ``(heads, b, k)``."""
    from torch import nn

    class ClusterHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.heads = nn.ModuleList(nn.Linear(d, k) for _ in range(heads))

        def forward(self, f):
            import torch

            return torch.stack([h(f) for h in self.heads])

    return ClusterHeads()


def _cosine_classifier(d: int, k: int, temperature: float):
    """Self-labelling's head: ``k`` class directions; logits = cosine(feature - centre, direction) /
    ``temperature``. The centre is the mean feature of the images (a buffer, set with the directions
    from k-means in ``SelfSupervisedTrainer.init_clusters`` and again at each ``relabel``): pooled
    post-ReLU features all point into the same orthant, so uncentred cosines are all near 1 and the
    argmax would flip to one cluster at the first small change of the backbone. Its argmax is then the
    nearest centroid by cosine in centred features, as ``imgclass cluster`` (L2, PCA) assigns. timm and
    torchvision have no cosine classifier layer, hence this one."""
    import torch
    from torch import nn

    class CosineClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(torch.randn(k, d) / math.sqrt(d))
            self.register_buffer("centre", torch.zeros(d))

        def forward(self, f):
            import torch.nn.functional as F

            return F.normalize(f - self.centre, dim=-1) @ F.normalize(self.weight, dim=-1).T / temperature

    return CosineClassifier()


def _ssl_net(backbone, cfg: PretrainConfig):
    """backbone (pooled features) → head: projection (simclr, byol), 4-way rotation classifier, SCAN's
    cluster heads or self-labelling's cosine classifier; BYOL adds a predictor after the projection."""
    import torch
    from torch import nn

    class SSLNet(nn.Module):
        def __init__(self):
            super().__init__()
            d = backbone.num_features
            self.backbone = backbone
            if cfg.method == "scan":
                self.head = _cluster_heads(d, cfg.clusters, cfg.heads)
            elif cfg.method == "selflabel":
                self.head = _cosine_classifier(d, cfg.clusters, cfg.temperature)
            else:
                self.head = _mlp(d, cfg.hidden_dim, 4 if cfg.method == "rotation" else cfg.proj_dim)
            self.predictor = _mlp(cfg.proj_dim, cfg.hidden_dim, cfg.proj_dim) if cfg.method == "byol" else None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.backbone(x))

        def get_classifier(self) -> nn.Module:  # what the engine calls the head
            return self.head

    return SSLNet()


# --------------------------------------------------------------------------- the trainer
class SelfSupervisedTrainer(Trainer):
    """The engine's ``Trainer`` with a self-supervised objective (see the module docstring)."""

    def __init__(self, net, x, cfg: PretrainConfig, mean, std, ckpt_dir=None, log=lambda m: None,
                 on_epoch=None, tail=None):
        """``x``: uint8 images ``(n, 3, h, w)``, or with ``tail`` (``--unfreeze``) the view bank
        ``(n, views, c, h', w')`` of trunk activations that ``tail`` (the trained last blocks) continues;
        for scan the views from index ``view_bank`` on are the images as they are and mirrored (``_view_bank``)."""
        import torch

        data = TrainData(x, torch.zeros(len(x), dtype=torch.long), [])  # no labels: a dummy target
        # a view bank or SCAN start from trained weights: the backbone takes backbone_lr_scale of the heads' rate
        super().__init__(net, data, None, cfg.train_config(), mean, std, ckpt_dir=ckpt_dir, log=log,
                         on_epoch=on_epoch, pretrained=tail is not None or cfg.method in NEEDS_WEIGHTS)
        self.ssl, self.tail = cfg, tail
        self.neighbors = None  # scan: (n, k) nearest neighbours of each image, set before fit()
        self.truth = None  # selflabel: every image's known label, only to report how right the clusters are
        self.picked: dict[str, float] = {}  # selflabel: what relabel() reported at the start of the epoch
        self.targets = self.weights = None  # selflabel: this epoch's cluster per image (-1: not trained on)
        self._unchanged_features = None  # selflabel: init_clusters' features, until the first relabel()
        self.total_steps = cfg.epochs * max(1, len(x) // cfg.batch_size)
        if cfg.method == "selflabel":  # an epoch trains on the confident share only: the schedule spans those steps
            self.steps_per_epoch = max(1, int(cfg.confident * len(x)) // min(cfg.batch_size, len(x)))
            self._build_optimizer(self.phase)
        self.views = None if tail is not None else ViewAugment(
            self.g, pretrain_view_size(cfg.to_dict(), x.shape[-1]), cfg.crop_scale, cfg.jitter, cfg.p_jitter,
            cfg.p_gray, cfg.hflip, cfg.randaugment)

    def _score(self) -> dict[str, float]:
        # no labels: nothing to validate on (the linear probe is the judge); self-labelling records the
        # share of confident images it trained on this epoch (and, with known labels, how right they were)
        return dict(self.picked) if self.ssl.method == "selflabel" and self.picked else {}

    def features(self, batch_size: int = 256):
        """Pooled backbone features of every image as it is (the plain cached view with a bank), averaged
        with its mirror image unless flips are off, in eval mode: what SCAN mines its neighbours with,
        and the same flip-averaged embedding ``imgclass cluster`` computes. Measured on cifar10-12k train
        after four SCAN rounds, 20 neighbours share the label 72.6 % of the time with the mirror images
        and 72.2 % without."""
        import torch

        self.model.eval()
        x, out, vb = self.train.x, [], self.ssl.view_bank
        flip = self.ssl.hflip
        with torch.no_grad():
            for s in range(0, len(x), batch_size):
                if self.tail is not None:  # the bank holds the plain view at view_bank, mirrored after it
                    xb = x[s:s + batch_size, vb:vb + 1 + flip].float()
                    f = torch.stack([self.tail(xb[:, j].contiguous(memory_format=torch.channels_last))
                                     for j in range(xb.shape[1])]).mean(0)
                else:
                    xb = self._normalize(x[s:s + batch_size].float())
                    f = self.model.backbone(xb)
                    if flip:
                        f = (f + self.model.backbone(xb.flip(-1))) / 2
                out.append(f)
        return torch.cat(out)

    def init_clusters(self) -> np.ndarray:
        """Self-labelling's start: k-means with ``imgclass cluster``'s defaults (``cluster.cluster_features``:
        L2, PCA 50, k-means++ with 10 restarts) on the starting features; the classifier's directions are
        the clusters' mean centred, normalised features. Returns the clusters."""
        import torch
        import torch.nn.functional as F

        from .cluster import cluster_features

        feats = self.features().float()
        self._unchanged_features = feats  # the first relabel() sees the same network: no second pass
        k = self.ssl.clusters
        labels = cluster_features(feats.numpy(), k, seed=self.ssl.seed)
        head = self.model.head
        with torch.no_grad():
            head.centre.copy_(feats.mean(0))
            fc = F.normalize(feats - head.centre, dim=1)
            head.weight.copy_(torch.stack([fc[torch.from_numpy(labels == c)].mean(0) if (labels == c).any()
                                           else fc[c] for c in range(k)]))
        return labels

    def relabel(self) -> dict[str, float]:
        """Self-labelling's targets for the next epoch: every image goes to its most probable cluster (the
        network as it is now, on the image as it is and mirrored); the ``confident`` share of each cluster
        with the highest probability is trained on, each cluster weighted by the inverse of its count so
        a growing cluster cannot swallow the others (SCAN's class-balanced self-labelling)."""
        import torch

        self.model.eval()
        feats, self._unchanged_features = self._unchanged_features, None
        with torch.no_grad():
            feats = self.features() if feats is None else feats
            self.model.head.centre.copy_(feats.mean(0))  # the backbone moved: centre its features again
            p = self.model.head(feats).softmax(1)
        conf, assigned = p.max(1)
        k, n = self.ssl.clusters, len(p)
        targets = torch.full((n,), -1, dtype=torch.long)
        for c in range(k):
            members = torch.nonzero(assigned == c).flatten()
            if len(members):
                keep = max(1, int(round(self.ssl.confident * len(members))))
                top = members[torch.argsort(conf[members], descending=True, stable=True)[:keep]]
                targets[top] = c
        counts = torch.bincount(targets[targets >= 0], minlength=k).float()
        self.targets = targets
        self.weights = torch.where(counts > 0, counts.sum() / (k * counts.clamp_min(1)), torch.zeros(k))
        picked = targets >= 0
        rec = {"confident": float(picked.float().mean()), "clusters_used": float((counts > 0).sum()),
               "mean_confidence": float(conf[picked].mean())}
        if self.truth is not None:
            from .cluster import cluster_accuracy

            t = np.asarray(self.truth)
            rec["confident_accuracy"] = cluster_accuracy(t[picked.numpy()], targets[picked].numpy())
        return rec

    def _selflabel_loss(self, xb, idx):
        """Self-labelling: cross-entropy between the cluster picked for each confident image (on the
        image as it is) and the classifier's output on a random augmented view of it."""
        import torch
        import torch.nn.functional as F

        net, b = self.model, len(xb)
        if self.tail is not None:  # an augmented cached view (not the plain or mirrored slots)
            pick = torch.randint(0, self.ssl.view_bank, (b,), generator=self.g)
            v = xb[torch.arange(b), pick].float().contiguous(memory_format=torch.channels_last)
            logits = net.head(self.tail(v))
        else:
            logits = net(self._normalize(self.views(xb)))
        return F.cross_entropy(logits, self.targets[idx], weight=self.weights)

    def _scan_loss(self, xb, idx):
        """SCAN: each image and one of its mined neighbours, each as a random view, through the backbone
        and the cluster heads; the mean of the heads' losses."""
        import torch

        net, b = self.model, len(xb)
        nb = self.neighbors[idx, torch.randint(0, self.neighbors.shape[1], (b,), generator=self.g)]
        xn = self.train.x[nb]
        if self.tail is not None:  # any cached view: augmented, as it is or mirrored
            rows = torch.arange(b)
            pick = [torch.randint(0, xb.shape[1], (b,), generator=self.g) for _ in range(2)]
            v = torch.cat([xb[rows, pick[0]], xn[rows, pick[1]]]).float().contiguous(memory_format=torch.channels_last)
            logits = net.head(self.tail(v))
        else:
            logits = net(self._normalize(torch.cat([self.views(xb), self.views(xn)])))
        return scan_loss(logits[:, :b], logits[:, b:], self.ssl.entropy_weight).mean()

    def _loss(self, xb, idx):
        import torch
        import torch.nn.functional as F

        net, b = self.model, len(xb)
        if self.ssl.method == "scan":
            return self._scan_loss(xb, idx)
        if self.ssl.method == "selflabel":
            return self._selflabel_loss(xb, idx)
        if self.tail is not None:  # two different cached views of each image
            first = torch.randint(0, xb.shape[1], (b,), generator=self.g)
            second = (first + torch.randint(1, xb.shape[1], (b,), generator=self.g)) % xb.shape[1]
            rows = torch.arange(b)
            v = torch.cat([xb[rows, first], xb[rows, second]]).float().contiguous(memory_format=torch.channels_last)
            z = net.head(self.tail(v))
            return nt_xent(z[:b], z[b:], self.ssl.temperature)
        if self.ssl.method == "rotation":
            v = self.views(xb)
            k = torch.randint(0, 4, (b,), generator=self.g)
            for r in (1, 2, 3):
                v[k == r] = torch.rot90(v[k == r], r, dims=(2, 3))
            return F.cross_entropy(net(self._normalize(v)), k)
        v = self._normalize(torch.cat([self.views(xb), self.views(xb)]))
        z = net(v)
        if self.ssl.method == "simclr":
            return nt_xent(z[:b], z[b:], self.ssl.temperature)
        p = net.predictor(z)
        target = self.ema.model.train()  # BYOL's target network uses batch statistics like the online one
        with torch.no_grad():
            t = target(v)
        return byol_loss(p[:b], t[b:]) + byol_loss(p[b:], t[:b])

    def _train_epoch(self, bar) -> float:
        torch = self.torch
        cfg = self.cfg
        n = len(self.train.x)
        order = torch.randperm(n, generator=self.g)
        if self.ssl.method == "selflabel":  # only the confident images, picked again each epoch
            self.picked = self.relabel()
            self.log(f"self-labelling: {self.picked['confident']:.0%} of the images in "
                     f"{self.picked['clusters_used']:.0f} clusters" + (
                         f", {self.picked['confident_accuracy']:.3f} right under the best cluster-to-class "
                         "matching (labels not used)" if "confident_accuracy" in self.picked else ""))
            order = order[self.targets[order] >= 0]
        self.model.train()
        bs = min(cfg.batch_size, len(order))
        total, count = 0.0, 0
        for s in range(0, len(order) - bs + 1, bs):  # drop the last partial batch: fewer negatives, noisier loss
            idx = order[s:s + bs]
            loss = self._loss(self.train.x[idx], idx)
            if not torch.isfinite(loss):
                raise ConfigError(f"the {self.ssl.method} loss became {loss.item()} at epoch {self.epoch + 1}; "
                                  f"lower --lr{' (or raise --temperature)' if self.ssl.method == 'simclr' else ''}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            if self.ema is not None:  # BYOL: tau rises from its start to 1 along a cosine
                step = self.sched.last_epoch
                self.ema.decay = 1 - (1 - self.ssl.tau) * (math.cos(math.pi * min(1.0, step / self.total_steps)) + 1) / 2
                self.ema.update(self.model)
            total += loss.item() * len(idx)
            count += len(idx)
            bar.advance(len(idx))
        bar.advance(n - count)
        return total / max(count, 1)


# --------------------------------------------------------------------------- backbone files
def _check_backbone(name: str):
    """``(base, source, pretrained folder or None)`` of a ``--backbone`` value, or a ``ConfigError``."""
    from ..features.backbones import backbone_config, is_known_arch, pretrained_dir

    base, _, source = name.partition("@")
    run = pretrained_dir(base)
    if source not in ("", "scratch", "imagenet", "hub") or (run is not None and source):
        raise ConfigError(f"--backbone {name}: give NAME, NAME@imagenet or a pretrained folder (runs/NAME)")
    if not is_known_arch(base):
        backbone_config(base)  # raises the precise error (unknown name, missing or unfinished folder)
    return base, source, run


def init_backbone(name: str, seed: int = 0):
    """The network to pretrain and its description: ``NAME`` (random init, seeded), ``NAME@imagenet``
    (continue from pretrained weights) or a pretrained folder (continue from its weights).
    Returns ``(net, arch, BackboneConfig)``; the same ``seed`` gives the same initial weights."""
    import torch

    from ..features.backbones import backbone_config, create_backbone, read_pretrained_dir, resolve_arch

    base, source, run = _check_backbone(name)
    cfg = backbone_config(base)
    arch = read_pretrained_dir(run)["arch"] if run is not None else resolve_arch(base)
    torch.manual_seed(seed)
    pretrained = "imagenet" if run is not None else (source if source in ("imagenet", "hub") else None)
    return create_backbone(base, pretrained=pretrained, num_classes=0), arch, cfg


def save_backbone(folder: str | os.PathLike, net, arch: str, input_size: int, mean, std,
                  interpolation: str = "bilinear", **info: Any) -> Path:
    """Write ``backbone.safetensors`` and ``backbone.json`` (atomically) into ``folder``, which then works
    as a backbone name; ``info`` (method, epochs, data, ...) is recorded in the JSON."""
    import hashlib

    import torch
    from safetensors.torch import save

    from .. import __version__
    from ..features.backbones import BACKBONE_FORMAT_VERSION, BACKBONE_JSON, BACKBONE_WEIGHTS

    folder = Path(folder)
    blob = save({k: v.detach().contiguous() for k, v in net.state_dict().items()})
    atomic_write_bytes(folder / BACKBONE_WEIGHTS, blob)
    meta = {"format": "imgclass-backbone", "format_version": BACKBONE_FORMAT_VERSION, "arch": arch,
            "input_size": int(input_size), "mean": [float(m) for m in mean], "std": [float(s) for s in std],
            "interpolation": interpolation, "num_features": int(getattr(net, "num_features", 0)),
            "weights": BACKBONE_WEIGHTS, "weights_sha256": hashlib.sha256(blob).hexdigest(), **info,
            "versions": {"imgclass": __version__, "torch": torch.__version__}}
    atomic_write_json(folder / BACKBONE_JSON, meta)
    return folder


# --------------------------------------------------------------------------- the public function
@dataclass
class PretrainResult:
    """What ``pretrain`` returns. ``backbone`` (the run directory) is usable as a backbone name."""

    run_dir: Path
    backbone: str
    method: str
    arch: str
    img_size: int
    n_images: int
    epochs: int
    history: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    resumed_from: int | None = None  # the epoch a resumed run continued after
    arch_input_size: int | None = None  # the architecture's default input size (fine-tuning uses it unless told)

    @property
    def losses(self) -> list[float]:
        return [r["train_loss"] for r in self.history]


def pretrain(data: Any = None, method: str | None = None, backbone: str | None = None, *, epochs: int | None = None,
             batch_size: int | None = None, img_size: int | None = None, out: str | os.PathLike | None = None,
             resume: str | os.PathLike | None = None, seed: int | None = None, n_jobs: int | None = None,
             max_pixels: int | None = None, log: Callable[[str], Any] = lambda m: None,
             on_epoch: Callable[[dict], Any] | None = None, overwrite: bool = False, **options: Any) -> PretrainResult:
    """Pretrain ``backbone`` (default ``smallcnn``) on the images of ``data`` (a folder, CSV, JSONL or
    ``ImageDataset``; labels, if any, are ignored) with ``method`` (``simclr`` (default), ``byol``,
    ``rotation``, ``scan``); write the run directory
    ``out`` (default ``runs/<data>-<method>-<backbone>``) with ``config.yaml``, ``metrics.jsonl``,
    ``log.txt``, ``checkpoints/last.pt``, ``plots/training_curves.png`` and the backbone files.

    ``options`` are ``PretrainConfig`` fields (``lr``, ``temperature``, ``view_size``, ...). ``log``
    receives progress lines; ``on_epoch`` each epoch's record once it is checkpointed and logged.
    ``resume="runs/X"`` continues an interrupted run after its last finished epoch, with its stored
    options (options given again must agree with them); a finished run is not trained again.
    """
    from ..data import ImageDataset, load_dataset
    from ..training.run import RunDir

    given = {"epochs": epochs, "batch_size": batch_size, "img_size": img_size, "seed": seed, **options}
    if resume is not None:
        return _resume(Path(resume), data, method, backbone, given, n_jobs, max_pixels, log, on_epoch)
    if data is None:
        raise ConfigError("pretrain: give DIR (a folder of images) or --resume RUN")
    cfg = PretrainConfig.for_method(method or "simclr", backbone=backbone or "smallcnn", **given)
    _, source, from_run = _check_backbone(cfg.backbone)  # a bad name fails before anything is written
    if from_run is None and source not in ("imagenet", "hub"):
        if cfg.unfreeze is not None:
            raise ConfigError(f"--unfreeze {cfg.unfreeze} keeps the first blocks of {cfg.backbone} as they are, "
                              f"which needs trained weights: use --backbone {cfg.backbone}@imagenet or an earlier "
                              "pretrain run")
        if cfg.method in NEEDS_WEIGHTS:
            what = "finds each image's neighbours" if cfg.method == "scan" else "takes its first clusters from k-means"
            raise ConfigError(f"--method {cfg.method} {what} with the features of {cfg.backbone}, which needs trained "
                              f"weights: use --backbone {cfg.backbone}@imagenet or an earlier pretrain run (e.g. "
                              f"--method {'simclr' if cfg.method == 'scan' else 'scan'})")
    ds = data if isinstance(data, ImageDataset) else load_dataset(data)
    name = Path(os.fspath(data)).name if not isinstance(data, ImageDataset) else ds.name
    run = RunDir.create(out, hint=f"{name}-{method}-{Path(cfg.backbone).name}", overwrite=overwrite,
                        remedy="pass --resume to continue it, --overwrite to replace it, or choose another --out")
    run.write_config({"command": "pretrain", "data": os.path.abspath(data) if not isinstance(data, ImageDataset)
                      else ds.name, "pretrain": cfg.to_dict(), "n_jobs": n_jobs, "max_pixels": max_pixels,
                      "data_fingerprint": ds.fingerprint(), "platform": platform.platform()})
    run.log(f"pretrain {cfg.backbone} with {cfg.method} on {len(ds)} images")
    return _fit(run, ds, cfg, n_jobs=n_jobs, max_pixels=max_pixels, resume=False, log=log, on_epoch=on_epoch)


def _resume(path: Path, data, method, backbone, given, n_jobs, max_pixels, log, on_epoch) -> PretrainResult:
    import yaml

    from ..data import load_dataset
    from ..training.run import RunDir

    cfg_file = path / "config.yaml"
    if not path.is_dir():
        raise ConfigError(f"--resume {path}: no such run directory; give the --out folder of an earlier "
                          "'imgclass pretrain'")
    if not cfg_file.is_file():
        raise ConfigError(f"--resume {path}: no config.yaml there; give the --out folder of an earlier 'imgclass pretrain'")
    stored = yaml.safe_load(cfg_file.read_text(encoding="utf-8")) or {}
    if stored.get("command") != "pretrain" or "pretrain" not in stored:
        raise ConfigError(f"--resume {path}: not an 'imgclass pretrain' run (a training run resumes with "
                          "'imgclass train --resume')")
    cfg = PretrainConfig.from_dict(stored["pretrain"])
    asked = {"method": method, "backbone": backbone, **given}
    clash = [f"--{k.replace('_', '-')} {v} (the run has {getattr(cfg, k)})" for k, v in asked.items()
             if v is not None and hasattr(cfg, k) and getattr(cfg, k) != v]
    if data is not None and os.path.abspath(os.fspath(data)) != stored.get("data"):
        clash.append(f"DIR {data} (the run has {stored.get('data')})")
    if clash:
        raise ConfigError(f"--resume {path} continues with the run's own options; drop {', '.join(clash)} "
                          "(or start a new run with --out)")
    ds = load_dataset(stored["data"])
    if stored.get("data_fingerprint") and ds.fingerprint() != stored["data_fingerprint"]:
        log(f"warning: the images in {stored['data']} changed since the run started; continuing on the current ones")
    run = RunDir.open(path)  # refused while another process writes the run
    run.log("resume")
    return _fit(run, ds, cfg, n_jobs=n_jobs if n_jobs is not None else stored.get("n_jobs"),
                max_pixels=max_pixels if max_pixels is not None else stored.get("max_pixels"), resume=True, log=log,
                on_epoch=on_epoch)


def _fit(run, ds, cfg: PretrainConfig, *, n_jobs, max_pixels, resume: bool, log, on_epoch=None) -> PretrainResult:
    import torch

    from ..data.decode import DEFAULT_MAX_PIXELS
    from ..features import decode_to_tensor
    from ..transforms import Preprocess

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    net, arch, bcfg = init_backbone(cfg.backbone, cfg.seed)
    size = int(cfg.img_size or bcfg.input_size)
    ckpt = run.path / "checkpoints"
    done = _finished_checkpoint(ckpt / "last.pt", cfg.epochs) if resume else None
    if done is not None:  # nothing to train: no need to decode the images again
        log(f"resumed from {ckpt / 'last.pt'} after epoch {done['epoch']} (finished: nothing to train)")
        model = _ssl_net(net, cfg)
        model.load_state_dict(done["model"])
        n = (read_backbone_info(run.path).get("images") if (run.path / "backbone.json").exists() else None) or len(ds)
        return _finish(run, model, arch, size, bcfg, cfg, ds, done["epoch"], done["history"], n, [], done["epoch"])
    pre = Preprocess(size=size, resize="crop", interpolation=bcfg.interpolation, mean=bcfg.mean, std=bcfg.std)
    x, ok, skipped = decode_to_tensor(ds.sources, pre, n_jobs=n_jobs, max_pixels=max_pixels or DEFAULT_MAX_PIXELS,
                                      description="decode")
    # known labels never train; SCAN and self-labelling only report against them, when every image has one
    truth = ds.targets[ok] if ds.is_labelled and ds.targets.ndim == 1 else None
    truth = truth if truth is not None and (truth >= 0).all() else None
    if skipped:
        log(f"skipped {len(skipped)} unreadable images")
        run.log(f"skipped {len(skipped)} unreadable images: " + "; ".join(f"{p}: {r}" for p, r in skipped[:50]))
    if len(x) < 2:
        raise DataError(f"{ds.name}: fewer than two readable images; self-supervised pretraining needs many")
    if cfg.method in CLUSTER_METHODS and cfg.clusters > len(x):
        raise ConfigError(f"--clusters {cfg.clusters}: {ds.name} has only {len(x)} readable images; choose at most "
                          f"{len(x)}")

    def record(rec):
        run.log_metrics({"split": "train", **rec})
        run.log(f"epoch {rec['epoch']}: " + ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if isinstance(v, float)))
        if on_epoch is not None:
            on_epoch(rec)

    tail = None
    if cfg.unfreeze is not None:
        _, _, from_run = _check_backbone(cfg.backbone)
        reuse = [ckpt] + ([Path(from_run) / "checkpoints"] if from_run is not None else [])
        x, tail = _view_bank(net, x, cfg, bcfg, lambda m: (log(m), run.log(m)), keep=ckpt, reuse=reuse)
    trainer = SelfSupervisedTrainer(_ssl_net(net, cfg), x, cfg, bcfg.mean, bcfg.std, ckpt_dir=ckpt, log=log,
                                    on_epoch=record, tail=tail)
    if cfg.method == "scan":
        trainer.neighbors = _neighbors(run, trainer, cfg, truth, resume, log)
    if cfg.method == "selflabel":
        trainer.truth = truth
        if not (resume and (ckpt / "last.pt").exists()):  # a resumed run takes its classifier from the checkpoint
            labels = trainer.init_clusters()
            line = f"self-labelling starts from k-means into {cfg.clusters} clusters of the starting features"
            if truth is not None:
                from .cluster import clustering_metrics

                m = clustering_metrics(np.asarray(truth), labels)
                line += f" (ACC {m['acc']:.3f}, NMI {m['nmi']:.3f} against the known labels, not used)"
            log(line)
            run.log(line)
    resumed_from = None
    if resume:
        if (ckpt / "last.pt").exists():
            trainer.load_checkpoint(ckpt / "last.pt")
            resumed_from = trainer.epoch
            log(f"resumed from {ckpt / 'last.pt'} after epoch {trainer.epoch}")
        else:
            log(f"no checkpoint in {ckpt} yet: starting from epoch 1")
    trainer.fit()
    return _finish(run, trainer.model, arch, size, bcfg, cfg, ds, trainer.epoch, trainer.history, len(x), skipped,
                   resumed_from)


def _view_bank(net, x, cfg: PretrainConfig, bcfg, log, keep: Path | None = None, reuse: list[Path] = ()):
    """``--unfreeze N``: ``(bank, tail)``. The frozen trunk (all but the last N blocks) of a pretrained
    backbone computes the same function every epoch and is the costly, high-resolution part, so it runs
    once over ``view_bank`` augmented views of each image (ONNX Runtime, float16 kept; the engine's
    ``training.frozen`` split). Each step then pairs two different cached views of each image and trains
    only the last blocks and the projection head: domain adaptation of an ImageNet backbone on a CPU.
    Measured on cifar10-12k train (lite0, 128 px, --unfreeze 2): 5 views of 10,000 images cost 206 s
    and 717 MB once, then an epoch of the tail 131 s, where both views through the whole network would
    cost ~330 s per epoch. The bank is drawn from a generator seeded with ``seed``, so a resumed run gets
    the same views. The trunk never runs while training, so it gets no gradient and the optimiser leaves
    it exactly as it was.

    The bank is kept in ``keep`` (the run's ``checkpoints/``) under a key of the trunk's weights, the
    decoded images and the view options (``_bank_key``). A folder of ``reuse`` holding a bank with the
    same key supplies it instead of the trunk: ``--resume`` (its own folder) and a run started from this
    one with the same ``--unfreeze`` and views, e.g. the next SCAN round, whose trunk is still this
    run's since only the tail trained. On cifar10-12k train (7 views of 10,000 images) reading and
    checking the kept bank took 15 s where the trunk took 353 s."""
    import time

    import torch

    from ..training.frozen import ActivationCache, split_network

    split = split_network(net, cfg.unfreeze)
    if split is None:
        raise ConfigError(f"--unfreeze {cfg.unfreeze}: cannot train only the last {cfg.unfreeze} blocks of "
                          f"{cfg.backbone} (fewer blocks, or an architecture without named blocks); lower "
                          "--unfreeze or drop it to train the whole backbone")
    trunk, tail = split
    # SCAN and self-labelling also see (and mine their neighbours or pick their confident images on) the
    # images as they are, and mirrored unless --no-hflip
    plain = (1 + cfg.hflip) * (cfg.method in CLUSTER_METHODS)
    slots = cfg.view_bank + plain
    key = _bank_key(trunk, x, cfg, slots)
    for folder in reuse:
        bank = _load_bank(folder / BANK_FILE, key)
        if bank is not None:  # the key covers the image count and the slots
            log(f"view bank: {slots} views of {len(x)} images reused from {folder / BANK_FILE} (same frozen "
                "trunk, images and view options)")
            if keep is not None and folder != keep:
                _link_bank(folder / BANK_FILE, keep / BANK_FILE, bank, key)
            return bank, tail
    aug = ViewAugment(torch.Generator().manual_seed(cfg.seed + 1), pretrain_view_size(cfg.to_dict(), x.shape[-1]),
                      cfg.crop_scale, cfg.jitter, cfg.p_jitter, cfg.p_gray, cfg.hflip, cfg.randaugment)
    t0, bank = time.perf_counter(), None
    for v in range(cfg.view_bank):
        views = torch.cat([aug(x[i:i + 1024]).round_().to(torch.uint8) for i in range(0, len(x), 1024)])
        acts = ActivationCache.compute(trunk, views, bcfg.mean, bcfg.std, f"view bank {v + 1}/{slots}",
                                       mirrored=False).plain
        if bank is None:
            bank = torch.empty((len(x), slots, *acts.shape[1:]), dtype=acts.dtype)
        bank[:, v] = acts
    if plain:
        cache = ActivationCache.compute(trunk, x, bcfg.mean, bcfg.std, "view bank: the images as they are",
                                        mirrored=cfg.hflip)
        bank[:, cfg.view_bank] = cache.plain
        if cfg.hflip:
            bank[:, cfg.view_bank + 1] = cache.mirrored
    log(f"view bank: {slots} views of {len(x)} images through the frozen trunk "
        f"({bank.numel() * bank.element_size() / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s")
    if keep is not None:
        _save_bank(keep / BANK_FILE, bank, key)
    return bank, tail


def _bank_key(trunk, x, cfg: PretrainConfig, slots: int) -> str:
    """What a view bank is a function of: the frozen trunk's weights and buffers, the decoded images
    (``x``, uint8; hashing 10,000 images of 128 px takes about a second) and the options that draw the
    views. Equal keys mean the trunk would compute the same bank again."""
    import hashlib

    h = hashlib.sha256(b"imgclass-view-bank-1")
    for name, t in sorted(trunk.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update(str(tuple(x.shape)).encode())
    h.update(memoryview(x.contiguous().numpy()).cast("B"))
    views = {k: getattr(cfg, k) for k in ("view_bank", "view_size", "crop_scale", "jitter", "p_jitter", "p_gray",
                                         "hflip", "seed")}
    if cfg.randaugment:  # only when on, so the banks kept before the option existed keep their keys
        views["randaugment"] = cfg.randaugment
    h.update(json.dumps({**views, "slots": slots}, sort_keys=True).encode())
    return h.hexdigest()


def _load_bank(path: Path, key: str):
    """The bank kept at ``path`` when its key is ``key``; ``None`` when there is none, it was drawn
    differently or the file is damaged (the trunk then computes it again)."""
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            if (f.metadata() or {}).get("key") != key:
                return None
            return f.get_tensor("bank")
    except Exception:  # safetensors raises its own error type for a truncated or foreign file
        return None


def _save_bank(path: Path, bank, key: str) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({"bank": bank.contiguous()}, str(tmp), metadata={"format": "imgclass-view-bank", "key": key})


def _link_bank(src: Path, dst: Path, bank, key: str) -> None:
    """Keep a reused bank in the new run as a hard link (no second copy on disk) or, across file
    systems, as a copy, so the new run resumes and seeds later rounds on its own."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(src, tmp)
        os.replace(tmp, dst)
    except OSError:
        tmp.unlink(missing_ok=True)
        _save_bank(dst, bank, key)


def _neighbors(run, trainer: SelfSupervisedTrainer, cfg: PretrainConfig, truth, resume: bool, log):
    """SCAN's ``(n, k)`` nearest neighbours in the starting features, mined once and kept in the run
    (``checkpoints/neighbors.npy``): a resumed run trains on the neighbours of the start, not on ones
    mined again with its half-trained network."""
    import io
    import time

    import torch

    path = run.path / "checkpoints" / "neighbors.npy"
    n = len(trainer.train.x)
    if resume and path.exists():
        nb = np.load(path, allow_pickle=False)
        if nb.shape[0] == n:
            return torch.from_numpy(nb)
        log(f"{path}: kept for {nb.shape[0]} images, now {n}; mining the neighbours again")
    k = min(cfg.neighbors, n - 1)
    t0 = time.perf_counter()
    nb = mine_neighbors(trainer.features(), k)
    buf = io.BytesIO()
    np.save(buf, nb.numpy(), allow_pickle=False)
    atomic_write_bytes(path, buf.getvalue())
    line = f"neighbours: {k} per image from the starting features in {time.perf_counter() - t0:.0f} s"
    if truth is not None:
        t = torch.as_tensor(truth)
        line += f"; they share the image's label {(t[nb] == t[:, None]).float().mean().item():.3f} of the time (labels not used)"
    log(line)
    run.log(line)
    return nb


def _finished_checkpoint(path: Path, epochs: int) -> dict | None:
    """The checkpoint at ``path`` when it holds all ``epochs`` (weights-only load), else ``None``."""
    import torch

    if not path.exists():
        return None
    try:
        st = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise DataError(f"{path}: unreadable checkpoint ({exc}); start a new run instead of --resume") from None
    return st if st.get("epoch", 0) >= epochs else None


def _finish(run, model, arch, size, bcfg, cfg, ds, epoch, history, n_images, skipped, resumed_from) -> PretrainResult:
    """Write the backbone files and the loss plot; the result."""
    import torch

    from ..features.backbones import backbone_config

    model = model.to(memory_format=torch.contiguous_format)
    config = cfg.to_dict()
    # frozen embeddings are taken at FixRes's test size for the views trained on, where whole images look
    # like the crops did (``features.backbones.fixres_size``)
    save_backbone(run.path, model.backbone, arch, size, bcfg.mean, bcfg.std, bcfg.interpolation,
                  test_size=pretrain_test_size(config, size), method=cfg.method, epochs=epoch, images=n_images,
                  data=ds.name, data_fingerprint=ds.fingerprint(), config=config)
    _plot_losses(run, history, f"{cfg.method} pretraining of {arch} on {ds.name}")
    run.log(f"saved backbone to {run.path} ({arch}, {size} px)")
    return PretrainResult(run_dir=run.path, backbone=str(run.path), method=cfg.method, arch=arch, img_size=size,
                          n_images=n_images, epochs=epoch, history=list(history), skipped=skipped,
                          resumed_from=resumed_from, arch_input_size=backbone_config(arch).input_size)


def _plot_losses(run, history: list[dict], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["epoch"] for r in history], [r["train_loss"] for r in history], marker="o", label="train loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    atomic_write_bytes(run.plots_dir / "training_curves.png", figure_png(fig, dpi=100))


def read_backbone_info(folder: str | os.PathLike) -> dict[str, Any]:
    """``backbone.json`` of a pretrained folder (architecture, input size, mean/std, method, epochs, ...)."""
    from ..features.backbones import read_pretrained_dir

    info = read_pretrained_dir(folder)
    return json.loads(json.dumps(info))  # tuples → lists: plain JSON data


__all__ = ["METHODS", "PretrainConfig", "PretrainResult", "ViewAugment", "byol_loss", "init_backbone", "nt_xent",
           "pretrain", "read_backbone_info", "save_backbone"]
