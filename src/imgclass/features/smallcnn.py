"""``smallcnn``: a fast small CNN for small images, in the spirit of the CIFAR-10 speedruns (airbench).

Registered in timm's model registry, so it is created, exported and saved like any timm backbone.
Speed tricks, each named: BatchNorm after every conv (trains at a high LR), GELU, max-pool
downsampling (cheaper than strided convs), a global max+avg pool head, channels-last memory format
(set by the trainer), and a scaled-down width (24-48-96-192), much faster to train than 32-64-128-256.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv_bn(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.GELU())


class SmallCNN(nn.Module):
    """conv(3→w0) → 3 stages of [conv, maxpool, conv] with widths w1..w3 → max+avg pool → linear."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int, int] = (24, 48, 96, 192),
                 drop_rate: float = 0.0, in_chans: int = 3, **_: object):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.stem = _conv_bn(in_chans, w0)
        self.blocks = nn.Sequential(
            nn.Sequential(_conv_bn(w0, w1), nn.MaxPool2d(2), _conv_bn(w1, w1)),
            nn.Sequential(_conv_bn(w1, w2), nn.MaxPool2d(2), _conv_bn(w2, w2)),
            nn.Sequential(_conv_bn(w2, w3), nn.MaxPool2d(2), _conv_bn(w3, w3)),
        )
        self.num_features = 2 * w3
        self.drop = nn.Dropout(drop_rate)
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.pretrained_cfg = {"input_size": (3, 32, 32), "mean": (0.4914, 0.4822, 0.4465),
                               "std": (0.2470, 0.2435, 0.2616), "interpolation": "bilinear"}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.stem(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)
        return x if pre_logits else self.classifier(self.drop(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.classifier

    def reset_classifier(self, num_classes: int, *args, **kwargs) -> None:
        self.num_classes = num_classes
        self.classifier = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()


def register() -> None:
    """Add ``smallcnn`` to timm's registry (idempotent)."""
    import timm
    from timm.models import register_model

    if timm.list_models("smallcnn"):
        return

    @register_model
    def smallcnn(pretrained: bool = False, **kwargs) -> SmallCNN:  # noqa: ARG001 - timm signature
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        kwargs.pop("cache_dir", None)
        return SmallCNN(**kwargs)
