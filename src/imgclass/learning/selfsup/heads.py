"""The heads put on a backbone for each objective: projection MLP, SCAN's cluster heads, a cosine classifier."""

from __future__ import annotations

import math

from .config import PretrainConfig


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
