"""Partial fine-tuning with cached activations of the frozen trunk.

When only the last ``N`` blocks of a pretrained network train (``--unfreeze N``), the frozen early
blocks compute the same function every epoch. They are also the expensive part on a CPU: for
EfficientNet-Lite0 at 224 px the stem and first four stages run at high resolution and cost more
than half of the forward pass, and all of the memory traffic. So the trunk runs **once** per image
(and once per mirrored image, so horizontal flips stay exact, and with ``--augment corruptions`` once
per corrupted copy of the image) through ONNX Runtime, its output
activations are kept in memory as float16, and every epoch trains only the tail on them.
Translations are applied to the cached maps (a shift of up to one cell, i.e. 1/14 of the image at
14x14); colour jitter is not possible on cached activations.

timm has no generic "run from block i" API, so each architecture family's stem, blocks and the
layers between the blocks and ``forward_head`` are named here (EfficientNet/MobileNet, ResNet,
ConvNeXt, imgclass's smallcnn). The split is verified numerically against the full forward pass
before it is used; any other architecture trains end to end as before.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._util import progress_bar

#: family -> (stem attribute names, blocks attribute (or list of names), post-block attribute names)
_FAMILIES: list[tuple[tuple[str, ...], str | tuple[str, ...], tuple[str, ...]]] = [
    (("conv_stem", "bn1"), "blocks", ("conv_head", "bn2")),  # EfficientNet (forward_features ends in conv_head)
    (("conv_stem", "bn1"), "blocks", ()),  # MobileNetV3 (conv_head lives in forward_head)
    (("conv1", "bn1", "act1", "maxpool"), ("layer1", "layer2", "layer3", "layer4"), ()),  # ResNet
    (("stem",), "stages", ("norm_pre",)),  # ConvNeXt
    (("stem",), "blocks", ()),  # smallcnn
]


class Tail:
    """``blocks[k:]`` → post-block layers → ``forward_head`` of ``model``; shares its parameters."""

    def __init__(self, model, blocks: list, post: list):
        self.model, self.blocks, self.post = model, blocks, post

    def __call__(self, x):
        for m in self.blocks:
            x = m(x)
        for m in self.post:
            x = m(x)
        return self.model.forward_head(x)


def _get(model, name: str):
    mod = getattr(model, name, None)
    if mod is None:
        raise AttributeError(name)
    return mod


def split_network(model, unfreeze: int) -> tuple[Any, Tail] | None:
    """``(trunk, tail)`` with ``tail(trunk(x)) == model(x)``, the tail holding the last ``unfreeze``
    blocks; ``None`` when the architecture is not one of the known families or the check fails."""
    import torch

    for stem_names, blocks_attr, post_names in _FAMILIES:
        try:
            stem = [_get(model, n) for n in stem_names]
            blocks = ([_get(model, n) for n in blocks_attr] if isinstance(blocks_attr, tuple)
                      else list(_get(model, blocks_attr)))
            post = [_get(model, n) for n in post_names]
        except AttributeError:
            continue
        if not 0 < unfreeze < len(blocks):
            return None
        k = len(blocks) - unfreeze
        trunk = torch.nn.Sequential(*stem, *blocks[:k]).eval()
        tail = Tail(model, blocks[k:], post)
        if _matches(model, trunk, tail):
            return trunk, tail
    return None


def _matches(model, trunk, tail) -> bool:
    import torch

    size = getattr(model, "pretrained_cfg", {}).get("input_size", (3, 64, 64))[-1] or 64
    x = torch.randn(2, 3, min(int(size), 96), min(int(size), 96), generator=torch.Generator().manual_seed(0))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return bool(torch.allclose(model(x), tail(trunk(x)), atol=1e-4, rtol=1e-3))
    except Exception:  # a family whose attribute names match but whose forward differs
        return False
    finally:
        model.train(was)


class ActivationCache:
    """Trunk activations of a uint8 image tensor (float16): for the images, their mirror images
    (unless flips are off) and, for ``--augment corruptions``, one corrupted copy of each image."""

    def __init__(self, plain, mirrored=None, corrupted=None):
        self.plain, self.mirrored, self.corrupted = plain, mirrored, corrupted

    def __len__(self) -> int:
        return len(self.plain)

    @property
    def nbytes(self) -> int:
        views = 1 + (self.mirrored is not None) + (self.corrupted is not None)
        return views * self.plain.numel() * self.plain.element_size()

    @classmethod
    def compute(cls, trunk, x, mean, std, description: str = "cache frozen blocks",
                batch_size: int = 64, mirrored: bool = True, corrupt=None) -> ActivationCache:
        """Run ``trunk`` over ``x`` (uint8 ``(n, 3, h, w)``) with ONNX Runtime (~2.5x torch eager here);
        ``mirrored``: also over the mirror images, for flip augmentation and flip TTA; ``corrupt``: a
        function of a uint8 ``(h, w, 3)`` array, also run over each image's corrupted copy."""
        import torch

        from ..runtime import export_onnx, ort_threads, session

        sess = session(export_onnx(trunk, tuple(x.shape[2:])), threads=ort_threads(torch.get_num_threads()))
        m = np.asarray(mean, np.float32).reshape(1, 3, 1, 1) * 255
        s = np.asarray(std, np.float32).reshape(1, 3, 1, 1) * 255
        plain, mirror, corrupted = [], [], []
        views = 1 + bool(mirrored) + (corrupt is not None)
        with progress_bar(views * len(x), description) as bar:
            for i in range(0, len(x), batch_size):
                a = (x[i:i + batch_size].numpy().astype(np.float32) - m) / s
                plain.append(torch.from_numpy(sess.run(None, {"image": a})[0]).half())
                if mirrored:
                    mirror.append(torch.from_numpy(sess.run(None, {"image": np.ascontiguousarray(a[..., ::-1])})[0]).half())
                if corrupt is not None:
                    imgs = x[i:i + batch_size].permute(0, 2, 3, 1).numpy()
                    c = np.stack([corrupt(im) for im in imgs]).transpose(0, 3, 1, 2).astype(np.float32)
                    corrupted.append(torch.from_numpy(sess.run(None, {"image": (c - m) / s})[0]).half())
                bar.advance(views * len(a))
        if not plain:
            empty = torch.zeros(0)
            return cls(empty, empty if mirrored else None, empty if corrupt is not None else None)
        return cls(torch.cat(plain), torch.cat(mirror) if mirrored else None,
                   torch.cat(corrupted) if corrupt is not None else None)

    def batch(self, idx, flip=None, shift: int = 0, generator=None, corrupt=None):
        """float32 activations for ``idx``; ``flip`` (bool per row) picks mirrored ones, ``corrupt``
        (bool per row) the corrupted copies; ``shift`` translates each row by up to ``shift`` cells
        (edge-replicating padding)."""
        import torch

        if flip is not None and self.mirrored is None:
            raise ValueError("these activations were cached without their mirror images")
        if corrupt is not None and self.corrupted is None:
            raise ValueError("these activations were cached without corrupted copies")
        x = self.plain[idx] if flip is None else torch.where(flip[:, None, None, None], self.mirrored[idx],
                                                             self.plain[idx])
        if corrupt is not None:
            x = torch.where(corrupt[:, None, None, None], self.corrupted[idx], x)
        x = x.float()
        if shift > 0:
            b, _, h, w = x.shape
            xp = torch.nn.functional.pad(x, (shift, shift, shift, shift), mode="replicate")
            dx = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
            dy = torch.randint(0, 2 * shift + 1, (b,), generator=generator)
            rows = dy[:, None] + torch.arange(h)[None, :]
            cols = dx[:, None] + torch.arange(w)[None, :]
            x = xp.permute(0, 2, 3, 1)[torch.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]
            x = x.permute(0, 3, 1, 2)
        return x.contiguous(memory_format=torch.channels_last)


def cache_shift(preset: str, side: int) -> int:
    """Cells of translation on a ``side``-wide cached map for an augmentation preset (about 1/8 of the
    image for ``standard``, 1/6 for ``strong``, as the image-level presets)."""
    if preset in ("none", "light"):
        return 0
    frac = 1 / 8 if preset in ("standard", "corruptions") else 1 / 6
    return max(1, math.floor(side * frac + 0.5)) if side >= 4 else 0
