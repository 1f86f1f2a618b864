"""Learning-rate range test (``imgclass lr-find``): train for a few steps with an exponentially
growing LR, record the smoothed loss, and suggest the LR where the loss falls fastest."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .._util import atomic_write_bytes, figure_png
from ..data import ImageDataset
from ..errors import ConfigError, DataError
from .config import TrainConfig, TrainData
from .engine import Trainer


@dataclass
class LRFindResult:
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    suggestion: float | None = None

    def plot(self, path: str | Path, title: str = "learning-rate range test") -> Path:

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.plot(self.lrs, self.losses)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("smoothed training loss")
        if self.suggestion:
            ax.axvline(self.suggestion, color="tab:red", linestyle="--", label=f"suggested {self.suggestion:.2e}")
            ax.legend()
        ax.set_title(title)
        fig.tight_layout()
        atomic_write_bytes(path, figure_png(fig))
        return Path(path)


def lr_find(train: ImageDataset, method: str, start: float = 1e-6, end: float = 1.0, steps: int = 100,
            batch_size: int = 32, img_size: int | None = None, pretrained: str | None = None,
            optimizer: str = "adamw", seed: int = 0, n_jobs: int | None = None) -> LRFindResult:
    """Run the range test on ``train`` (no weights are kept). Stops early once the loss explodes."""
    import torch

    from ..models import build_model, parse_spec
    from ..models.deep_fit import decode_images
    from ..models.deep_fit import targets as _targets

    spec = parse_spec(method)
    if spec.kind != "deep":
        raise ConfigError(f"lr-find: {method} is not a deep method; classical methods have no learning rate")
    if not (0 < start < end):
        raise ConfigError("lr-find: need 0 < --start < --end")
    torch.manual_seed(seed)
    model = build_model(method, seed=seed, n_jobs=n_jobs, img_size=img_size, pretrained=pretrained)
    labelled = train.subset(np.flatnonzero(train.labelled_mask))
    model.classes_, model.task_ = list(train.classes), train.task or "multiclass"
    x, ok, _ = decode_images(model, labelled, "decode")
    if len(x) < 2:
        raise DataError("lr-find needs at least two readable labelled images")
    cfg = TrainConfig(epochs=1, batch_size=batch_size, lr=start, optimizer=optimizer, schedule="constant",
                      head_epochs=0, seed=seed, grad_clip=None)
    net = model.build_network(len(model.classes_))
    trainer = Trainer(net, TrainData(x, _targets(labelled, ok), []), None, cfg, model.preprocess.mean,
                      model.preprocess.std, task=model.task_, pretrained=False)
    factor = (end / start) ** (1 / max(steps - 1, 1))
    g = torch.Generator().manual_seed(seed)
    res = LRFindResult()
    avg, best = 0.0, math.inf
    net.train()
    for i in range(steps):
        lr = start * factor**i
        for group in trainer.opt.param_groups:
            group["lr"] = lr
        idx = torch.randint(0, len(x), (min(batch_size, len(x)),), generator=g)
        xb = trainer._normalize(trainer.augment(x[idx]))
        loss = trainer.criterion(net(xb), trainer.train.y[idx].float() if trainer.train.y.ndim == 2 else trainer.train.y[idx])
        trainer.opt.zero_grad(set_to_none=True)
        loss.backward()
        trainer.opt.step()
        value = loss.item()
        if not math.isfinite(value):
            break
        avg = 0.9 * avg + 0.1 * value
        smooth = avg / (1 - 0.9 ** (i + 1))
        res.lrs.append(lr)
        res.losses.append(smooth)
        best = min(best, smooth)
        if i > 10 and smooth > 4 * best:
            break
    res.suggestion = suggest(res.lrs, res.losses)
    return res


def suggest(lrs: list[float], losses: list[float]) -> float | None:
    """The LR of steepest descent of the smoothed loss (ignoring the noisy ends)."""
    if len(lrs) < 8:
        return None
    lo, hi = len(lrs) // 10, len(lrs) - max(1, len(lrs) // 10)
    grads = np.gradient(np.asarray(losses), np.log(np.asarray(lrs)))
    return float(lrs[lo + int(np.argmin(grads[lo:hi]))])
