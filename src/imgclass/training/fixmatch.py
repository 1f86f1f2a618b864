"""FixMatch (Sohn et al. 2020) for the ``Trainer``: confident predictions on a weak view of unlabelled
images become targets for a strong view of the same images, with distribution alignment (ReMixMatch)."""

from __future__ import annotations

from ..transforms.augment import BatchAugment, StrongView
from .config import TrainConfig, TrainData


def pseudo_label_threshold(threshold: float, label_smoothing: float, n_classes: int) -> float:
    """The confidence a weak-view prediction needs to become a FixMatch pseudo-label.

    ``threshold`` is read on the scale of what the network is trained toward: with label smoothing
    ``e`` over ``K`` classes its target for the true class is ``1 - e + e / K`` (0.91 for e = 0.1,
    K = 10), so a well-fitted network seldom reaches a fixed 0.95 and hardly any pseudo-label would pass.
    """
    if not 0 <= label_smoothing < 1 or n_classes < 1:
        return threshold
    return threshold * (1.0 - label_smoothing + label_smoothing / n_classes)


class DistributionAlignment:
    """Distribution alignment (Berthelot et al., "ReMixMatch", ICLR 2020): scale the predictions by the
    labelled class frequencies (``prior``) over the running mean prediction on the pool (the last
    ``window`` batches), then renormalise, so pseudo-labels do not drift onto a few classes."""

    def __init__(self, prior, window: int):
        self.prior, self.window = prior, int(window)
        self.pool_probs: list = []

    def __call__(self, prob):
        import torch

        self.pool_probs = (self.pool_probs + [prob.mean(0)])[-self.window:]
        running = torch.stack(self.pool_probs).mean(0).clamp_min(1e-6)
        out = prob * (self.prior / running)
        return out / out.sum(dim=1, keepdim=True)


class FixMatch:
    """The unlabelled part of a training step: ``loss`` draws ``n`` unlabelled images, predicts on a weak
    view (flip + shift), keeps the predictions that reach ``threshold`` as pseudo-labels and returns the
    cross-entropy of the strong view (RandAugment + Cutout) against them. ``counts`` tallies this
    epoch's pseudo-labels (used, of those with a known label, of those right)."""

    def __init__(self, unlabeled: TrainData, cfg: TrainConfig, generator, threshold: float, class_counts=None):
        self.unlabeled, self.g, self.threshold = unlabeled, generator, threshold
        self.weak = BatchAugment("standard" if cfg.augment != "none" else "light", generator, cfg.hflip)
        self.strong = StrongView(generator, cfg.hflip)
        self.align = None
        if class_counts is not None and cfg.distribution_alignment > 0:
            prior = (class_counts + 1.0) / (class_counts + 1.0).sum()
            self.align = DistributionAlignment(prior, cfg.distribution_alignment)
        self.counts = [0, 0, 0]

    def loss(self, model, normalize, device: str, n: int):
        """The unlabelled loss of one step, averaged over the ``n`` drawn images."""
        import torch

        u = self.unlabeled
        idx = torch.randint(0, len(u.x), (n,), generator=self.g)
        xu = u.x[idx]
        with torch.no_grad():
            prob = torch.softmax(model(normalize(self.weak(xu).to(device))), dim=1).cpu()
            if self.align is not None:
                prob = self.align(prob)
        conf, pseudo = prob.max(dim=1)
        mask = conf >= self.threshold
        truth = u.y[idx]
        scored = mask & (truth >= 0)
        self.counts[0] += int(mask.sum())
        self.counts[1] += int(scored.sum())
        self.counts[2] += int((pseudo[scored] == truth[scored]).sum())
        if not mask.any():
            return torch.zeros((), requires_grad=False)
        logits = model(normalize(self.strong(xu[mask]).to(device)))
        return torch.nn.functional.cross_entropy(logits, pseudo[mask].to(device), reduction="sum") / n

    def epoch_record(self) -> dict[str, float]:
        """This epoch's pseudo-label counts for the history (and a fresh tally for the next epoch)."""
        used, scored, right = self.counts
        self.counts = [0, 0, 0]
        rec: dict[str, float] = {"pseudo_labels": used}
        if scored:
            rec["pseudo_accuracy"] = right / scored
        return rec
