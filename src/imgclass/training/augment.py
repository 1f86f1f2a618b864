"""Augmentation of whole uint8 batches in the training process: the batch presets, FixMatch's strong
view, and mixup / cutmix."""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError


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
    trainer).
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
