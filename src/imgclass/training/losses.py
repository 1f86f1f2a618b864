"""The ``local`` hierarchical loss: one logit per taxonomy node, a softmax within each group of siblings."""

from __future__ import annotations

import numpy as np


class NodeSoftmaxLoss:
    """The ``local`` hierarchical strategy for a network with one logit per taxonomy node: a softmax
    within each group of siblings gives P(node | parent) (one classifier per parent node, sharing the
    backbone); the loss is the negative log-probability of the true leaf, i.e. the sum of the
    cross-entropies of every parent's classifier along the true path."""

    def __init__(self, groups, ancestor_matrix):
        import torch

        self.groups = [torch.as_tensor(g, dtype=torch.long) for g in groups]
        self.A = torch.as_tensor(np.asarray(ancestor_matrix), dtype=torch.float32).T  # (n_nodes, n_leaves)

    def leaf_log_probs(self, logits):
        import torch

        log_cond = torch.zeros_like(logits)
        for idx in self.groups:
            log_cond[:, idx] = torch.log_softmax(logits[:, idx], dim=1)
        return log_cond @ self.A

    def __call__(self, logits, target):
        import torch

        logp = self.leaf_log_probs(logits)
        if target.ndim == 2:  # soft targets (mixup/cutmix)
            return -(target * logp).sum(dim=1).mean()
        return torch.nn.functional.nll_loss(logp, target)
