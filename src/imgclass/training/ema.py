"""Exponential moving average of a model's weights, evaluated and checkpointed next to the model."""

from __future__ import annotations


class EMA:
    """Exponential moving average of the weights (and a copy of the buffers)."""

    def __init__(self, model, decay: float):
        import copy

        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def update(self, model) -> None:
        import torch

        with torch.no_grad():
            for e, p in zip(self.model.state_dict().values(), model.state_dict().values()):
                if e.dtype.is_floating_point:
                    e.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
                else:
                    e.copy_(p)
