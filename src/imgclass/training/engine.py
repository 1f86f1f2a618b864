"""The one training engine for deep models: fine-tuning, partial fine-tuning and training from scratch.

One readable loop in the spirit of the CIFAR-10 speedruns; every speed trick is named where it is used:

- **decode once**: images are decoded and pre-processed once into a uint8 tensor in memory, so an
  epoch costs only the network (small and medium datasets; see ``MAX_IN_MEMORY_BYTES``); larger data,
  and tar shards with ``stream``, are decoded batch by batch by DataLoader workers instead
  (``training.streaming``);
- **batch augmentation on tensors** (``transforms.augment``): flips, translations and brightness/contrast
  jitter are applied to whole batches in the training process, with no per-image Python pipeline;
- **channels-last** memory format for convolutions on CPU;
- **one-cycle / cosine schedules with warmup**, label smoothing, optional mixup/cutmix, EMA of weights
  (``training.ema``);
- **head first**: pretrained backbones train the new head alone for ``head_epochs`` before the backbone
  is unfrozen with a lower learning rate (``backbone_lr_scale``); ``unfreeze=N`` trains only the last
  N blocks;
- **flip TTA** at evaluation;
- **DistributedDataParallel** under torchrun (``training.distributed``): a ``DistributedSampler`` gives each
  rank its part of every epoch, each rank takes ``batch_size / world`` images per step (the same global
  batch as one process), gradients are averaged by DDP, validation sums are all-reduced, and only
  rank 0 writes checkpoints;
- ``device`` ``auto|cpu|cuda|mps`` with bf16/fp16 autocast on GPUs (``precision``).

The loss of a step comes from ``Trainer.compute_loss(batch)``: the task's loss (with FixMatch,
``training.fixmatch``, when unlabelled images are given) unless a ``loss_fn(net, batch)`` is passed or a
subclass overrides it, so other objectives (self-supervised, distillation) reuse the whole step; a
subclass may also choose an epoch's batches (``batches``) and how the EMA moves (``update_ema``).

Checkpoints ``last.pt`` and ``best.pt`` are written atomically at the end of every epoch with the
model, optimiser, scheduler, EMA and RNG states, so ``resume`` continues exactly, also after SIGKILL.
They hold only tensors and plain Python values and are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._util import progress_bar
from ..errors import ConfigError
from ..transforms.augment import BatchAugment, StrongView
from .augment import mix_batch
from .checkpoint import read_checkpoint, rng_state, set_rng_state, write_checkpoint
from .config import OPTIMIZERS, SCHEDULES, TrainConfig, TrainData
from .ema import EMA
from .fixmatch import FixMatch, pseudo_label_threshold
from .losses import NodeSoftmaxLoss
from .optim import build_optimizer, set_trainable

__all__ = ["EMA", "OPTIMIZERS", "SCHEDULES", "Batch", "BatchAugment", "NodeSoftmaxLoss", "StrongView", "TrainConfig",
           "TrainData", "Trainer", "pseudo_label_threshold", "set_trainable"]


class Batch:
    """One training step's items: ``idx`` (their positions in the training data), ``x`` (their uint8
    images ``(b, 3, h, w)``, taken from memory on first use unless streamed) and ``y`` (their targets)."""

    def __init__(self, data: TrainData, idx, images=None):
        self.data, self.idx, self._images = data, idx, images

    def __len__(self) -> int:
        return len(self.idx)

    @property
    def x(self):
        if self._images is None:
            self._images = self.data.x[self.idx]
        return self._images

    @property
    def y(self):
        return self.data.y[self.idx]


# --------------------------------------------------------------------------- the trainer
class Trainer:
    """Train ``model`` on in-memory (or streamed) tensors, checkpointing into ``ckpt_dir`` every epoch.

    ``node_loss`` (a ``NodeSoftmaxLoss``) switches to one output per taxonomy node (``--hierarchy local``).
    ``criterion(logits, target)`` replaces the task's loss, with ``n_classes`` outputs when ``train.y``
    holds something else than one column per class (distillation packs teacher probabilities and labels).
    ``loss_fn(net, batch)`` replaces the whole loss of a step (see ``compute_loss``); the optimiser,
    schedule, EMA, checkpoints and resume stay the engine's.
    """

    def __init__(self, model, train: TrainData, val: TrainData | None, cfg: TrainConfig, mean, std,
                 task: str = "multiclass", ckpt_dir: str | Path | None = None, pretrained: bool = False,
                 on_epoch: Callable[[dict], Any] | None = None, log: Callable[[str], Any] = lambda m: None,
                 node_loss: NodeSoftmaxLoss | None = None, unlabeled: TrainData | None = None,
                 criterion: Callable | None = None, n_classes: int | None = None,
                 loss_fn: Callable[[Any, Batch], Any] | None = None):
        import torch

        from . import distributed

        self.torch = torch
        self.model, self.train, self.val, self.cfg, self.loss_fn = model, train, val, cfg, loss_fn
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
        if n_classes is None and node_loss is not None:
            n_classes = node_loss.A.shape[1]
        elif n_classes is None:
            n_classes = train.y.shape[1] if train.y.ndim == 2 else int(train.y.max()) + 1
        self.n_classes = n_classes
        self.node_loss = node_loss
        # images per class of the labelled set: class weights (--balance weights), alignment target (FixMatch)
        counts = (torch.bincount(train.y[train.y >= 0], minlength=n_classes).float()
                  if train.y.ndim == 1 else None)
        weight = self._build_criterion(counts, criterion)
        self.fixmatch = None
        if self.unlabeled is not None:  # weak view: flip + shift; strong view: RandAugment + Cutout
            # the threshold is read from the loss actually used (CrossEntropyLoss carries its smoothing)
            threshold = pseudo_label_threshold(
                cfg.pseudo_threshold, float(getattr(self.criterion, "label_smoothing", 0.0)), n_classes)
            self.fixmatch = FixMatch(self.unlabeled, cfg, self.g, threshold, counts)
        self._setup_steps()
        self.model = self.model.to(self.device, memory_format=torch.channels_last)
        if weight is not None:
            self.criterion.weight = weight.to(self.device)
        if node_loss is not None:
            node_loss.A = node_loss.A.to(self.device)
        self.phase = None
        self._build_optimizer("head" if pretrained and cfg.head_epochs > 0 else "all")
        self.net = self._wrap_ddp()
        self.scaler = torch.amp.GradScaler(self.device.split(":")[0], enabled=self.amp_dtype == torch.float16)
        self.ema = EMA(self.model, cfg.ema) if cfg.ema > 0 else None
        self.split = self._split_frozen_trunk()  # (trunk, tail) when the frozen trunk's activations are cached
        self._cache: dict[str, Any] = {}

    # -- set-up
    def _build_criterion(self, counts, criterion: Callable | None):
        """The task's loss (or the given ``criterion``); returns the class weights still to be moved to the device."""
        torch, cfg = self.torch, self.cfg
        weight = None
        if cfg.balance == "weights" and counts is not None:
            c = counts.clamp_min(1)
            weight = c.sum() / (len(c) * c)
        if self.task == "multilabel":
            self.criterion = torch.nn.BCEWithLogitsLoss()
        elif self.node_loss is not None:
            self.criterion = self.node_loss
        else:
            self.criterion = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
        if criterion is not None:
            self.criterion, weight = criterion, None
        return weight

    def _setup_steps(self) -> None:
        """Per-rank batch size and optimiser steps per epoch, in memory or streamed (``training.streaming``)."""
        from .streaming import StreamingImages

        cfg, train = self.cfg, self.train
        # each rank takes its share of the global batch; DistributedSampler pads every rank to ceil(n / world)
        self.local_batch = max(1, cfg.batch_size // self.dist.world)
        self.steps_per_epoch = max(1, math.ceil(math.ceil(len(train.x) / self.dist.world) / self.local_batch))
        self.streaming = isinstance(train.x, StreamingImages)  # decoded while training
        if self.streaming:
            if train.x.sequential and cfg.balance == "sampler":
                raise ConfigError("--balance sampler needs random access to the images; tar shards are streamed "
                                  "in order, so use --balance weights (or --stream off)")
            order_len = None if train.x.sequential else math.ceil(len(train.x) / self.dist.world)
            self.steps_per_epoch = train.x.steps(order_len, self.local_batch, self.dist.world)

    def _wrap_ddp(self):
        """The network the steps run: the model, or under torchrun one DDP wrapper for the whole run, built
        with every parameter the run will ever train so it holds across the head -> all phase change (in
        the head phase the frozen backbone's parameters get no gradient, which find_unused_parameters allows)."""
        if not self.dist.enabled:
            return self.model
        set_trainable(self.model, "all", self.cfg.unfreeze)
        net = self.torch.nn.parallel.DistributedDataParallel(self.model, find_unused_parameters=self.phase == "head")
        set_trainable(self.model, self.phase, self.cfg.unfreeze)
        return net

    def _split_frozen_trunk(self):
        """``(trunk, tail)`` when the frozen trunk's activations can be cached, else ``None``: the cache holds
        fixed views, so not with FixMatch (fresh strong views), rotation/zoom, a custom ``loss_fn``, DDP, a
        GPU or streaming."""
        cfg = self.cfg
        if (self.pretrained and cfg.unfreeze is not None and cfg.cache_frozen and self.unlabeled is None
                and self.loss_fn is None and not (cfg.degrees or cfg.scale) and not self.dist.enabled
                and self.device == "cpu" and not self.streaming):
            from .frozen import split_network

            return split_network(self.model, cfg.unfreeze)
        return None

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
        self.phase = phase
        self.opt, self.sched = build_optimizer(self.model, self.cfg, phase, self.pretrained, self.steps_per_epoch)

    def _normalize(self, x):
        return ((x - self.mean) / self.std).contiguous(memory_format=self.torch.channels_last)

    # -- one epoch
    def _epoch_order(self):
        """This rank's item order for the epoch (``None`` for shards, read in the stream's own order)."""
        torch, cfg = self.torch, self.cfg
        n = len(self.train.x)
        rank, world = self.dist.rank, self.dist.world
        if self.streaming and self.train.x.sequential:
            return None
        if cfg.balance == "sampler" and self.train.y.ndim == 1:
            counts = torch.bincount(self.train.y).float()
            w = (1.0 / counts)[self.train.y]
            order = torch.multinomial(w, n, replacement=True, generator=self.g)
            if world > 1:  # the same draw on every rank (same generator state); equal parts
                order = order[: n // world * world][rank::world]
            return order
        if world > 1:
            from torch.utils.data.distributed import DistributedSampler

            sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed)
            sampler.set_epoch(self.epoch)
            return torch.tensor(list(sampler), dtype=torch.long)
        return torch.randperm(n, generator=self.g)

    def batches(self):
        """This epoch's training batches (``Batch``), the same number on every rank (a subclass may pick others)."""
        order = self._epoch_order()
        bs = self.local_batch
        if self.streaming:  # (indices, decoded images)
            parts = self.train.x.batches(self.epoch, order, bs, self.dist.rank, self.dist.world)
        else:
            parts = ((order[s:s + bs], None) for s in range(0, len(order), bs))
        for idx, images in parts:
            if len(idx) >= 2:  # every rank has the same number of indices, so all ranks skip together
                yield Batch(self.train, idx, images)

    def _train_mode(self) -> None:
        self.model.train()
        for mod in self.model.modules():  # frozen layers keep their BatchNorm statistics
            if isinstance(mod, self.torch.nn.modules.batchnorm._BatchNorm) and not any(
                    p.requires_grad for p in mod.parameters()):
                mod.eval()

    def _inputs(self, batch: Batch):
        """``(network input, network)`` of a batch: augmented and normalised images through the whole
        network, or cached trunk activations (with cached flips/shifts) through the tail."""
        torch, cfg = self.torch, self.cfg
        if self.split is None:
            return self._normalize(self.augment(batch.x).to(self.device)), self.net
        cache = self._activations("train")
        flip = torch.rand(len(batch), generator=self.g) < 0.5 if cfg.augment != "none" and cfg.hflip else None
        corrupt = torch.rand(len(batch), generator=self.g) < 0.5 if cfg.augment == "corruptions" else None
        return cache.batch(batch.idx, flip, self._shift, self.g, corrupt), self.split[1]

    def compute_loss(self, batch: Batch):
        """The loss of one training step (run under autocast). With ``loss_fn`` it is
        ``loss_fn(net, batch)``; otherwise the task's loss on the augmented (and mixed) batch plus, with
        unlabelled images, the weighted FixMatch loss. Subclasses override this for other objectives."""
        if self.loss_fn is not None:
            return self.loss_fn(self.net, batch)
        cfg = self.cfg
        x, net = self._inputs(batch)
        y = batch.y.to(self.device)
        if cfg.mixup > 0 or cfg.cutmix > 0:
            x, target = mix_batch(x, y, self.n_classes, cfg.mixup, cfg.cutmix, self.g)
        else:
            target = y.float() if y.ndim == 2 else y
        loss = self.criterion(net(x).float(), target)
        if self.fixmatch is not None:
            n = len(batch) * max(1, cfg.unlabeled_ratio)
            loss = loss + cfg.unlabeled_weight * self.fixmatch.loss(self.model, self._normalize, self.device, n)
        return loss

    def _step(self, loss) -> None:
        """Backward pass, gradient clipping, optimiser and schedule step, EMA update."""
        torch, cfg = self.torch, self.cfg
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sched.step()
        if self.ema is not None:
            self.update_ema()

    def update_ema(self) -> None:
        """Move the EMA weights towards the model's after a step; subclasses override it to change the decay
        as training goes (BYOL's target network)."""
        self.ema.update(self.model)

    def _train_epoch(self, bar) -> float:
        """One pass over this rank's part of the training data; returns the mean loss over all ranks."""
        torch = self.torch
        self._train_mode()
        amp = torch.autocast(self.device.split(":")[0], dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        total, count = 0.0, 0
        for batch in self.batches():
            with amp:
                loss = self.compute_loss(batch)
            self._step(loss)
            total += loss.item() * len(batch)
            count += len(batch)
            bar.advance(len(batch) * self.dist.world)
        bar.advance(max(0, len(self.train.x) - count * self.dist.world))  # items no batch took
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
        return {
            "epoch": self.epoch, "phase": self.phase, "best": self.best, "bad_epochs": self.bad_epochs,
            "model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(), "ema": self.ema.model.state_dict() if self.ema else None,
            "history": self.history,
            "rng": rng_state(self.g),
        }

    def _save(self, name: str) -> None:
        if self.ckpt_dir is None or not self.dist.is_main:  # under DDP only rank 0 writes
            return
        write_checkpoint(self.ckpt_dir / name, self.state())

    def load_checkpoint(self, path: str | Path) -> None:
        st = read_checkpoint(path)
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
        set_rng_state(st["rng"], self.g)

    # -- the loop
    def fit(self) -> list[dict]:
        """Train until ``cfg.epochs`` (or early stopping); returns the history, one record per epoch."""
        cfg = self.cfg
        if cfg.threads:
            self.torch.set_num_threads(cfg.threads)
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
            self.epoch += 1
            if self._end_epoch(self._epoch_record(loss, time.perf_counter() - t0)):
                break
        from .distributed import barrier

        barrier()  # rank 0 has written its last checkpoint before any rank reads best.pt
        return self.history

    @property
    def metric_key(self) -> str:
        """The validation metric that picks ``best.pt`` and drives early stopping."""
        return "val_micro_f1" if self.task == "multilabel" else "val_accuracy"

    def _epoch_record(self, loss: float, train_s: float) -> dict:
        rec = {"epoch": self.epoch, "phase": self.phase, "train_loss": loss,
               "lr": self.opt.param_groups[0]["lr"], "train_s": train_s,
               "img_per_s": len(self.train.x) / max(train_s, 1e-9), **self._score()}
        if self.fixmatch is not None:
            rec.update(self.fixmatch.epoch_record())
        return rec

    def _end_epoch(self, rec: dict) -> bool:
        """Record the epoch, write the checkpoints, log; returns True when early stopping ends the run."""
        cfg = self.cfg
        self.history.append(rec)
        score = rec.get(self.metric_key)
        improved = score is not None and (self.best is None or score > self.best)
        if improved:
            self.best, self.bad_epochs = score, 0
        else:
            self.bad_epochs += 1
        self._save("last.pt")
        if improved:
            self._save("best.pt")
        if self.dist.is_main:
            self.log(f"epoch {self.epoch}/{cfg.epochs}: loss {rec['train_loss']:.4f}"
                     + (f", {self.metric_key} {score:.4f}" if score is not None else "")
                     + f", {rec['img_per_s']:.0f} img/s")
        if self.on_epoch and self.dist.is_main:
            self.on_epoch(rec)
        if cfg.early_stopping and self.bad_epochs >= cfg.early_stopping:
            self.log(f"early stopping: no improvement for {cfg.early_stopping} epochs")
            return True
        return False
