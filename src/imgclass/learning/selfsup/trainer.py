"""``SelfSupervisedTrainer``: the engine's ``Trainer`` with a self-supervised objective in place of labels."""

from __future__ import annotations

import math

import numpy as np

from ...errors import ConfigError
from ...features.backbones import pretrain_view_size
from ...training.engine import TrainData, Trainer
from ...transforms.augment import ViewAugment
from .config import NEEDS_WEIGHTS, PretrainConfig
from .losses import byol_loss, nt_xent, scan_loss


class SelfSupervisedTrainer(Trainer):
    """The engine's ``Trainer`` with the objective in its loss hook (``compute_loss``: views → loss), its own
    batches (``batches``: full ones, confident images for self-labelling), BYOL's rising EMA decay
    (``update_ema``) and no validation score; the step, optimiser, schedule, checkpoints and exact resume
    are the engine's."""

    def __init__(self, net, x, cfg: PretrainConfig, mean, std, ckpt_dir=None, log=lambda m: None,
                 on_epoch=None, tail=None):
        """``x``: uint8 images ``(n, 3, h, w)``, or with ``tail`` (``--unfreeze``) the view bank
        ``(n, views, c, h', w')`` of trunk activations that ``tail`` (the trained last blocks) continues;
        for scan the views from index ``view_bank`` on are the images as they are and mirrored (``_view_bank``)."""
        import torch

        data = TrainData(x, torch.zeros(len(x), dtype=torch.long), [])  # no labels: a dummy target
        # a view bank or SCAN start from trained weights: the backbone takes backbone_lr_scale of the heads' rate
        super().__init__(net, data, None, cfg.train_config(), mean, std, ckpt_dir=ckpt_dir, log=log,
                         on_epoch=on_epoch, pretrained=tail is not None or cfg.method in NEEDS_WEIGHTS)
        self.ssl, self.tail = cfg, tail
        self.neighbors = None  # scan: (n, k) nearest neighbours of each image, set before fit()
        self.truth = None  # selflabel: every image's known label, only to report how right the clusters are
        self.picked: dict[str, float] = {}  # selflabel: what relabel() reported at the start of the epoch
        self.targets = self.weights = None  # selflabel: this epoch's cluster per image (-1: not trained on)
        self._unchanged_features = None  # selflabel: init_clusters' features, until the first relabel()
        self.total_steps = cfg.epochs * max(1, len(x) // cfg.batch_size)
        if cfg.method == "selflabel":  # an epoch trains on the confident share only: the schedule spans those steps
            self.steps_per_epoch = max(1, int(cfg.confident * len(x)) // min(cfg.batch_size, len(x)))
            self._build_optimizer(self.phase)
        self.views = None if tail is not None else ViewAugment(
            self.g, pretrain_view_size(cfg.to_dict(), x.shape[-1]), cfg.crop_scale, cfg.jitter, cfg.p_jitter,
            cfg.p_gray, cfg.hflip, cfg.randaugment)

    def _score(self) -> dict[str, float]:
        # no labels: nothing to validate on (the linear probe is the judge); self-labelling records the
        # share of confident images it trained on this epoch (and, with known labels, how right they were)
        return dict(self.picked) if self.ssl.method == "selflabel" and self.picked else {}

    def features(self, batch_size: int = 256):
        """Pooled backbone features of every image as it is (the plain cached view with a bank), averaged
        with its mirror image unless flips are off, in eval mode: what SCAN mines its neighbours with,
        and the same flip-averaged embedding ``imgclass cluster`` computes."""
        import torch

        self.model.eval()
        x, out, vb = self.train.x, [], self.ssl.view_bank
        flip = self.ssl.hflip
        with torch.no_grad():
            for s in range(0, len(x), batch_size):
                if self.tail is not None:  # the bank holds the plain view at view_bank, mirrored after it
                    xb = x[s:s + batch_size, vb:vb + 1 + flip].float()
                    f = torch.stack([self.tail(xb[:, j].contiguous(memory_format=torch.channels_last))
                                     for j in range(xb.shape[1])]).mean(0)
                else:
                    xb = self._normalize(x[s:s + batch_size].float())
                    f = self.model.backbone(xb)
                    if flip:
                        f = (f + self.model.backbone(xb.flip(-1))) / 2
                out.append(f)
        return torch.cat(out)

    def init_clusters(self) -> np.ndarray:
        """Self-labelling's start: k-means with ``imgclass cluster``'s defaults (``cluster.cluster_features``:
        L2, PCA 50, k-means++ with 10 restarts) on the starting features; the classifier's directions are
        the clusters' mean centred, normalised features. Returns the clusters."""
        import torch
        import torch.nn.functional as F

        from ..cluster.algorithms import cluster_features

        feats = self.features().float()
        self._unchanged_features = feats  # the first relabel() sees the same network: no second pass
        k = self.ssl.clusters
        labels = cluster_features(feats.numpy(), k, seed=self.ssl.seed)
        head = self.model.head
        with torch.no_grad():
            head.centre.copy_(feats.mean(0))
            fc = F.normalize(feats - head.centre, dim=1)
            head.weight.copy_(torch.stack([fc[torch.from_numpy(labels == c)].mean(0) if (labels == c).any()
                                           else fc[c] for c in range(k)]))
        return labels

    def relabel(self) -> dict[str, float]:
        """Self-labelling's targets for the next epoch: every image goes to its most probable cluster (the
        network as it is now, on the image as it is and mirrored); the ``confident`` share of each cluster
        with the highest probability is trained on, each cluster weighted by the inverse of its count so
        a growing cluster cannot swallow the others (SCAN's class-balanced self-labelling)."""
        import torch

        self.model.eval()
        feats, self._unchanged_features = self._unchanged_features, None
        with torch.no_grad():
            feats = self.features() if feats is None else feats
            self.model.head.centre.copy_(feats.mean(0))  # the backbone moved: centre its features again
            p = self.model.head(feats).softmax(1)
        conf, assigned = p.max(1)
        k, n = self.ssl.clusters, len(p)
        targets = torch.full((n,), -1, dtype=torch.long)
        for c in range(k):
            members = torch.nonzero(assigned == c).flatten()
            if len(members):
                keep = max(1, int(round(self.ssl.confident * len(members))))
                top = members[torch.argsort(conf[members], descending=True, stable=True)[:keep]]
                targets[top] = c
        counts = torch.bincount(targets[targets >= 0], minlength=k).float()
        self.targets = targets
        self.weights = torch.where(counts > 0, counts.sum() / (k * counts.clamp_min(1)), torch.zeros(k))
        picked = targets >= 0
        rec = {"confident": float(picked.float().mean()), "clusters_used": float((counts > 0).sum()),
               "mean_confidence": float(conf[picked].mean())}
        if self.truth is not None:
            from ..cluster.metrics import cluster_accuracy

            t = np.asarray(self.truth)
            rec["confident_accuracy"] = cluster_accuracy(t[picked.numpy()], targets[picked].numpy())
        return rec

    def _selflabel_loss(self, xb, idx):
        """Self-labelling: cross-entropy between the cluster picked for each confident image (on the
        image as it is) and the classifier's output on a random augmented view of it."""
        import torch
        import torch.nn.functional as F

        net, b = self.model, len(xb)
        if self.tail is not None:  # an augmented cached view (not the plain or mirrored slots)
            pick = torch.randint(0, self.ssl.view_bank, (b,), generator=self.g)
            v = xb[torch.arange(b), pick].float().contiguous(memory_format=torch.channels_last)
            logits = net.head(self.tail(v))
        else:
            logits = net(self._normalize(self.views(xb)))
        return F.cross_entropy(logits, self.targets[idx], weight=self.weights)

    def _scan_loss(self, xb, idx):
        """SCAN: each image and one of its mined neighbours, each as a random view, through the backbone
        and the cluster heads; the mean of the heads' losses."""
        import torch

        net, b = self.model, len(xb)
        nb = self.neighbors[idx, torch.randint(0, self.neighbors.shape[1], (b,), generator=self.g)]
        xn = self.train.x[nb]
        if self.tail is not None:  # any cached view: augmented, as it is or mirrored
            rows = torch.arange(b)
            pick = [torch.randint(0, xb.shape[1], (b,), generator=self.g) for _ in range(2)]
            v = torch.cat([xb[rows, pick[0]], xn[rows, pick[1]]]).float().contiguous(memory_format=torch.channels_last)
            logits = net.head(self.tail(v))
        else:
            logits = net(self._normalize(torch.cat([self.views(xb), self.views(xn)])))
        return scan_loss(logits[:, :b], logits[:, b:], self.ssl.entropy_weight).mean()

    def _loss(self, xb, idx):
        import torch
        import torch.nn.functional as F

        net, b = self.model, len(xb)
        if self.ssl.method == "scan":
            return self._scan_loss(xb, idx)
        if self.ssl.method == "selflabel":
            return self._selflabel_loss(xb, idx)
        if self.tail is not None:  # two different cached views of each image
            first = torch.randint(0, xb.shape[1], (b,), generator=self.g)
            second = (first + torch.randint(1, xb.shape[1], (b,), generator=self.g)) % xb.shape[1]
            rows = torch.arange(b)
            v = torch.cat([xb[rows, first], xb[rows, second]]).float().contiguous(memory_format=torch.channels_last)
            z = net.head(self.tail(v))
            return nt_xent(z[:b], z[b:], self.ssl.temperature)
        if self.ssl.method == "rotation":
            v = self.views(xb)
            k = torch.randint(0, 4, (b,), generator=self.g)
            for r in (1, 2, 3):
                v[k == r] = torch.rot90(v[k == r], r, dims=(2, 3))
            return F.cross_entropy(net(self._normalize(v)), k)
        v = self._normalize(torch.cat([self.views(xb), self.views(xb)]))
        z = net(v)
        if self.ssl.method == "simclr":
            return nt_xent(z[:b], z[b:], self.ssl.temperature)
        p = net.predictor(z)
        target = self.ema.model.train()  # BYOL's target network uses batch statistics like the online one
        with torch.no_grad():
            t = target(v)
        return byol_loss(p[:b], t[b:]) + byol_loss(p[b:], t[:b])

    def batches(self):
        """This epoch's batches: a random order of all images (self-labelling: of the confident ones, picked
        again each epoch), in full batches only; a last partial batch would bring fewer negatives and a
        noisier loss."""
        from ...training.engine import Batch

        order = self.torch.randperm(len(self.train.x), generator=self.g)
        if self.ssl.method == "selflabel":
            self.picked = self.relabel()
            self.log(f"self-labelling: {self.picked['confident']:.0%} of the images in "
                     f"{self.picked['clusters_used']:.0f} clusters" + (
                         f", {self.picked['confident_accuracy']:.3f} right under the best cluster-to-class "
                         "matching (labels not used)" if "confident_accuracy" in self.picked else ""))
            order = order[self.targets[order] >= 0]
            self._train_mode()  # relabel() evaluated the network
        bs = min(self.cfg.batch_size, len(order))
        for s in range(0, len(order) - bs + 1, bs):
            yield Batch(self.train, order[s:s + bs])

    def compute_loss(self, batch):
        """The self-supervised objective on one batch (views drawn from ``self.g``); a non-finite loss stops
        the run with advice rather than training on NaNs."""
        loss = self._loss(batch.x, batch.idx)
        if not self.torch.isfinite(loss):
            raise ConfigError(f"the {self.ssl.method} loss became {loss.item()} at epoch {self.epoch + 1}; "
                              f"lower --lr{' (or raise --temperature)' if self.ssl.method == 'simclr' else ''}")
        return loss

    def update_ema(self) -> None:
        """BYOL's target network: tau rises from its start to 1 along a cosine over the run's steps."""
        step = self.sched.last_epoch
        self.ema.decay = 1 - (1 - self.ssl.tau) * (math.cos(math.pi * min(1.0, step / self.total_steps)) + 1) / 2
        super().update_ema()
