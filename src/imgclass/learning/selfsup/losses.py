"""The self-supervised objectives (NT-Xent, BYOL, SCAN) and the nearest-neighbour mining SCAN trains on."""

from __future__ import annotations

import numpy as np


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

    from ...features.neighbours import cosine_neighbours

    n = len(features)
    _, nb = cosine_neighbours(features.float().numpy(), k + 1)
    rows = np.arange(n)[:, None]
    nb = np.where(nb < 0, rows, nb)  # a hit HNSW could not fill: the image itself, a harmless pair
    # the first k hits that are not the row itself (identical rows can rank before it)
    nb = np.take_along_axis(nb, np.argsort(nb == rows, axis=1, kind="stable"), axis=1)[:, :k]
    return torch.from_numpy(np.ascontiguousarray(nb, dtype=np.int64))
