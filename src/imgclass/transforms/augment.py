"""Augmentation of uint8 image batches: every preset, defined once, as a callable on a ``(b, 3, h, w)``
uint8 tensor that draws its randomness from the ``torch.Generator`` it is given.

The batch is augmented in the training process as a whole (no per-image Python pipeline), and the
same generator state gives the same views, so a resumed run repeats the draws of an uninterrupted one.

============================  =====================================================================  =========================
preset / callable             what it does                                                           used by
============================  =====================================================================  =========================
``none`` (``BatchAugment``)   nothing: the batch as float                                            ``--augment none``
``light`` (``BatchAugment``)  horizontal flip (``hflip``), rotation ``degrees`` and zoom ``scale``   ``--augment light``;
                              when given (one affine grid per batch)                                 FixMatch's weak view
                                                                                                     without augmentation
``standard``                  ``light``, then a shift by up to 1/8 of the side (reflection padding)  ``--augment standard``;
                              and brightness/contrast jitter ±0.2 per image                          FixMatch's weak view
``strong``                    ``light``, then a shift by up to 1/6 of the side and brightness /      ``--augment strong``
                              contrast jitter ±0.4
``corruptions``               ``light``, one ImageNet-C-style corruption (``transforms.corruptions``,  ``--augment corruptions``
                              severity 1-3) on half of the images, then ``standard``'s shift/jitter
``StrongView``                RandAugment (2 ops, random magnitude, per image), ``strong``, then     FixMatch's strong view
                              Cutout (one grey square of up to half the side)
``ViewAugment``               random resized crop and flip, colour jitter, grayscale, optionally     self-supervised
                              RandAugment (SimCLR's CIFAR recipe; SCAN's strong views)               pretraining views
============================  =====================================================================  =========================

``BatchAugment``, ``StrongView`` and ``ViewAugment`` return float batches in [0, 255] (the caller
normalises them). torch and torchvision are imported inside the callables, so importing this module
(and ``imgclass.transforms``) stays light.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ConfigError

AUGMENT_PRESETS = ("none", "light", "standard", "strong", "corruptions")


class RandomCorruption:
    """With probability ``p``, one random corruption at a random severity up to ``max_severity``."""

    def __init__(self, p: float = 0.5, max_severity: int = 3, seed: int | None = None):
        self.p, self.max_severity = p, max_severity
        self.rng = np.random.default_rng(seed)

    def apply_array(self, arr: np.ndarray) -> np.ndarray:
        from .corruptions import CORRUPTIONS, corrupt

        if self.rng.random() >= self.p:
            return arr
        name = list(CORRUPTIONS)[int(self.rng.integers(len(CORRUPTIONS)))]
        return corrupt(arr, name, int(self.rng.integers(1, self.max_severity + 1)), seed=int(self.rng.integers(2**31)))

    def __call__(self, img):
        from PIL import Image

        return Image.fromarray(self.apply_array(np.asarray(img.convert("RGB"))))


class BatchAugment:
    """The ``--augment`` presets (table above) on a uint8 batch ``(b, 3, h, w)``."""

    def __init__(self, preset: str, generator, hflip: bool = True, degrees: float = 0.0, scale: float = 0.0):
        if preset not in AUGMENT_PRESETS:
            raise ConfigError(f"--augment {preset!r}: choose one of {', '.join(AUGMENT_PRESETS)}")
        self.preset, self.g, self.hflip = preset, generator, hflip
        self.degrees, self.scale = float(degrees), float(scale)

    def _affine(self, x):
        """Random rotation and zoom of a float batch: one ``affine_grid`` + ``grid_sample`` for the whole
        batch, with one set of parameters per image."""
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
            rc = RandomCorruption(seed=int(torch.randint(0, 2**31, (1,), generator=self.g)))
            u8 = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
            x = torch.from_numpy(np.stack([rc.apply_array(im) for im in u8])).permute(0, 3, 1, 2).float()
        # translate by up to 1/8 (1/6 for strong) of the side with reflection padding (random crop after padding)
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
    at a random magnitude, as in Sohn et al. 2020), then the ``strong`` preset (flip, shift, colour
    jitter), then Cutout (one grey square of up to half the side).

    RandAugment and Cutout are torchvision's (``v2.RandAugment``, ``v2.RandomErasing``) called once
    per image: a v2 transform draws one set of parameters per call, and one draw for a whole batch
    would make every strong view in it alike. They use torch's global generator (seeded by the
    trainer); the magnitudes and the ``strong`` preset draw from ``generator``.
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
        from ``self.g`` (the global generator's state is restored afterwards) so the views stay reproducible."""
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


__all__ = ["AUGMENT_PRESETS", "BatchAugment", "RandomCorruption", "StrongView", "ViewAugment"]
