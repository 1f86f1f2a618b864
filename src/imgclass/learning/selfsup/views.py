"""Random augmented views of a uint8 image batch, drawn per image on tensors (crop, flip, colour jitter, grayscale, RandAugment)."""

from __future__ import annotations

import math


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
