"""mixup / cutmix of a normalised training batch and its targets (the image presets are
``transforms.augment``'s)."""

from __future__ import annotations

import math

import numpy as np


def mix_batch(x, y, n_classes: int, mixup: float, cutmix: float, generator):
    """mixup / cutmix (one of them per batch when both are on) of a normalised float batch; returns the
    mixed batch and soft targets."""
    import torch

    g = generator
    soft = y.float() if y.ndim == 2 else torch.nn.functional.one_hot(y, n_classes).float()
    use_cut = cutmix > 0 and (mixup <= 0 or torch.rand(1, generator=g).item() < 0.5)
    alpha = cutmix if use_cut else mixup
    lam = float(np.random.default_rng(int(torch.randint(0, 2**31, (1,), generator=g))).beta(alpha, alpha))
    perm = torch.randperm(len(x), generator=g)
    if use_cut:
        h, w = x.shape[2:]
        ch, cw = int(h * math.sqrt(1 - lam)), int(w * math.sqrt(1 - lam))
        cy, cx = int(torch.randint(0, h, (1,), generator=g)), int(torch.randint(0, w, (1,), generator=g))
        y0, y1, x0, x1 = max(cy - ch // 2, 0), min(cy + ch // 2, h), max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    else:
        x = lam * x + (1 - lam) * x[perm]
    return x, lam * soft + (1 - lam) * soft[perm]
