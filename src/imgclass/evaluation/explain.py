"""``explain(model, image)``: where a model looked, as a heatmap over the image it saw.

No attribution maths is written here; each method comes from a maintained library:

- ``gradcam`` and ``gradcam++``: pytorch-grad-cam, on the last spatial feature map of a CNN, or on
  the last transformer block of a ViT with its patch tokens reshaped into their grid (the class and
  distillation tokens are dropped);
- ``integrated-gradients``: Captum's ``IntegratedGradients`` from the dataset-mean image (zero
  after normalisation);
- ``occlusion``: Captum's ``Occlusion`` with a grey patch about 1/8 of the image wide. It needs only
  ``predict_proba``, so it also explains classical (feature + scikit-learn) pipelines.

The explained score is the target's logit for single- and multi-label models (one heatmap per
label), and the log-probability of a taxonomy node for hierarchical ones, so a fallback node such as
"animal" can be explained as well as a leaf.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write_bytes, figure_png
from ..data.decode import DEFAULT_MAX_PIXELS, ImageSource, load_image
from ..errors import ConfigError

METHODS = ("gradcam", "gradcam++", "integrated-gradients", "occlusion")
GRADIENT_METHODS = ("gradcam", "gradcam++", "integrated-gradients")
CLASSICAL_VIEW = 224  # longest side of the view a classical pipeline is occluded on


@dataclass
class Explanation:
    """One heatmap: ``image`` is the uint8 ``(h, w, 3)`` view the model saw and ``heatmap`` a float
    ``(h, w)`` map in [0, 1] over it (1 = most important for ``target``)."""

    image: np.ndarray
    heatmap: np.ndarray
    target: str
    probability: float
    method: str
    source: str | None = None
    path: str | None = None  # where ``save`` wrote it, when written through ``imgclass.explain(out=...)``

    @property
    def peak(self) -> tuple[int, int]:
        """``(row, column)`` of the hottest pixel."""
        r, c = np.unravel_index(int(np.argmax(self.heatmap)), self.heatmap.shape)
        return int(r), int(c)

    def overlay(self, alpha: float = 0.5) -> np.ndarray:
        """The image blended with the heatmap in matplotlib's ``jet`` colours (uint8 ``(h, w, 3)``)."""
        from matplotlib import colormaps

        heat = colormaps["jet"](np.clip(self.heatmap, 0, 1))[..., :3] * 255
        return np.clip((1 - alpha) * self.image + alpha * heat, 0, 255).astype(np.uint8)

    def figure(self):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(7, 3.8))
        axes[0].imshow(self.image)
        axes[0].set_title("input" + (f": {Path(self.source).name}" if self.source else ""), fontsize=9)
        axes[1].imshow(self.overlay())
        r, c = self.peak
        axes[1].plot([c], [r], marker="+", color="white", ms=12, mew=2)
        axes[1].set_title(f"{self.target} {self.probability:.1%} · {self.method}", fontsize=9)
        for ax in axes:
            ax.set_axis_off()
        fig.tight_layout()
        return fig

    def save(self, path: str | os.PathLike) -> Path:
        """Write the input and the overlay side by side as a PNG (atomically)."""
        atomic_write_bytes(path, figure_png(self.figure()))
        return Path(path)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "probability": self.probability,
                "method": self.method, "peak": list(self.peak), "size": list(self.heatmap.shape), "path": self.path}


# --------------------------------------------------------------------------- targets
def _tree(model):
    """The model's taxonomy tree (classical pipelines have no ``_tree()`` method, deep models do)."""
    from ..tasks.hierarchy import Tree

    return Tree(model.taxonomy_ or {c: None for c in model.classes_}, list(model.classes_))


def _targets(model, P: np.ndarray, target: str | Sequence[str] | None) -> list[str]:
    """The names to explain: the given ones (checked), else what the model predicts (every label
    above its threshold for multi-label models)."""
    from ..models import predictions

    task = getattr(model, "task_", "multiclass")
    known = list(model.classes_)
    if task == "hierarchical":
        known = list(_tree(model).nodes)
    if target is not None:
        names = [target] if isinstance(target, str) else list(target)
        for t in names:
            if t not in known:
                raise ConfigError(f"--target {t!r}: not a class of this model; choose from {', '.join(known[:20])}"
                                  + (" ..." if len(known) > 20 else ""))
        return names
    pred = predictions(model, P[None, :])[0]
    if task == "multilabel":
        return [lab for lab, _ in pred.labels] or [model.classes_[int(np.argmax(P))]]
    return [pred.label]


def _probability(model, P: np.ndarray, name: str) -> float:
    if getattr(model, "task_", "") == "hierarchical":
        from ..tasks.hierarchy import node_probabilities

        tree = _tree(model)
        return float(node_probabilities(tree, P[None, :])[0, tree.index[name]])
    return float(P[list(model.classes_).index(name)])


def _score_fn(model, name: str):
    """``f(logits) -> (n,)``: the deep network's score for ``name`` (a logit, or a node's log-probability)."""
    import torch

    if getattr(model, "task_", "") != "hierarchical":
        i = list(model.classes_).index(name)
        return lambda z: z[:, i]
    tree = _tree(model)
    if model.hierarchy == "local":  # log P(node) = sum of the sibling-softmax log-probabilities on its path
        from ..tasks.hierarchy import sibling_groups

        groups = {int(j): torch.as_tensor(g) for g in sibling_groups(tree) for j in g}
        path = [tree.index[n] for n in tree._path[name]]
        return lambda z: sum(torch.log_softmax(z[:, groups[j]], 1)[:, int((groups[j] == j).nonzero())] for j in path)
    leaves = torch.as_tensor(np.flatnonzero(tree.ancestor_matrix[:, tree.index[name]]))
    if len(leaves) == 1:
        return lambda z: z[:, int(leaves[0])]
    return lambda z: torch.logsumexp(z[:, leaves], 1) - torch.logsumexp(z, 1)


# --------------------------------------------------------------------------- deep
def _score_module(net, score):
    import torch

    class Score(torch.nn.Module):
        """The network with one output: the explained score (so every library sees ``target=0``)."""

        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return score(self.net(x))[:, None]

    return Score().eval()


def _cam_layer(net, x):
    """The layer Grad-CAM reads and the reshape its output needs: a ViT's last block (tokens to grid)
    or, for CNNs, the last module whose output is a spatial ``(n, c, h, w)`` map."""
    import torch

    if hasattr(net, "patch_embed") and hasattr(net, "blocks") and hasattr(net.patch_embed, "grid_size"):
        gh, gw = (int(v) for v in net.patch_embed.grid_size)
        prefix = int(getattr(net, "num_prefix_tokens", 1))

        def tokens_to_grid(t):
            t = t[:, prefix:, :]
            return t.reshape(t.size(0), gh, gw, t.size(2)).permute(0, 3, 1, 2)

        return net.blocks[-1].norm1, tokens_to_grid
    found: list = []
    hooks = [m.register_forward_hook(lambda m, i, o: found.append(m) if isinstance(o, torch.Tensor)
                                     and o.dim() == 4 and min(o.shape[-2:]) > 1 else None)
             for m in net.modules() if m is not net]
    try:
        with torch.no_grad():
            net(x)
    finally:
        for h in hooks:
            h.remove()
    if not found:
        raise ConfigError("--method gradcam: this network has no spatial feature map to read; use --method "
                          "integrated-gradients or occlusion")
    return found[-1], None


def _normalise(a: np.ndarray) -> np.ndarray:
    a = np.nan_to_num(np.asarray(a, np.float64))
    a = a - a.min()
    top = a.max()
    return (a / top).astype(np.float32) if top > 0 else np.zeros_like(a, np.float32)


def _occlusion_window(h: int, w: int) -> tuple[int, int]:
    win = max(2, min(h, w) // 8)
    return win, max(1, win // 2)


def _explain_deep(model, x_uint8, name: str, method: str) -> np.ndarray:
    import torch

    mean = torch.tensor(model.preprocess.mean, dtype=torch.float32).view(1, 3, 1, 1) * 255
    std = torch.tensor(model.preprocess.std, dtype=torch.float32).view(1, 3, 1, 1) * 255
    x = (x_uint8.float() - mean) / std
    net = model.model_.eval()
    scorer = _score_module(net, _score_fn(model, name))
    h, w = x.shape[-2:]
    if method in ("gradcam", "gradcam++"):
        from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        layer, reshape = _cam_layer(net, x)
        cls = GradCAM if method == "gradcam" else GradCAMPlusPlus
        with torch.enable_grad(), cls(model=scorer, target_layers=[layer], reshape_transform=reshape) as cam:
            heat = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)])[0]
        if not np.any(heat > 0):  # every gradient negative: Grad-CAM's ReLU leaves nothing to show
            heat = np.zeros((h, w), np.float32)
        return heat
    if method == "integrated-gradients":
        from captum.attr import IntegratedGradients

        with torch.enable_grad():
            attr = IntegratedGradients(scorer).attribute(x, baselines=torch.zeros_like(x), target=0, n_steps=32,
                                                         internal_batch_size=16)
        return attr.detach().abs().sum(1)[0].numpy()
    from captum.attr import Occlusion

    win, stride = _occlusion_window(h, w)
    with torch.no_grad():
        attr = Occlusion(scorer).attribute(x, target=0, sliding_window_shapes=(3, win, win),
                                           strides=(3, stride, stride), baselines=0.0, perturbations_per_eval=16)
    return attr.sum(1)[0].clamp_min(0).numpy()


# --------------------------------------------------------------------------- classical
def _explain_classical(model, view: np.ndarray, name: str) -> np.ndarray:
    """Captum occlusion over any ``predict_proba``: each perturbed image goes through the pipeline's
    own pre-processing and features."""
    import torch
    from captum.attr import Occlusion

    if getattr(model, "task_", "") == "hierarchical":
        from ..tasks.hierarchy import node_probabilities

        tree = _tree(model)

        def prob(P):
            return node_probabilities(tree, P)[:, tree.index[name]]
    else:
        i = list(model.classes_).index(name)

        def prob(P):
            return P[:, i]

    def forward(xb):
        arrays = [np.clip(a, 0, 255).astype(np.uint8) for a in xb.permute(0, 2, 3, 1).numpy()]
        return torch.as_tensor(prob(np.nan_to_num(model.predict_proba(arrays))), dtype=torch.float32)

    x = torch.from_numpy(view.astype(np.float32)).permute(2, 0, 1)[None]
    win, stride = _occlusion_window(*view.shape[:2])
    attr = Occlusion(forward).attribute(x, sliding_window_shapes=(3, win, win), strides=(3, stride, stride),
                                        baselines=float(view.mean()), perturbations_per_eval=32)
    return attr.sum(1)[0].clamp_min(0).numpy()


# --------------------------------------------------------------------------- entry point
def explain(model, image: ImageSource, target: str | Sequence[str] | None = None, method: str = "gradcam",
            max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[Explanation]:
    """Heatmaps of what made ``model`` score ``target`` on ``image``, one per target.

    ``target``: a class (a taxonomy node for hierarchical models) or several; by default the
    prediction (every label above its threshold for multi-label models). ``method``: one of
    ``METHODS``; classical pipelines support only ``occlusion``.
    """
    if method not in METHODS:
        raise ConfigError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    kind = getattr(model, "kind", "classical")
    if kind != "deep" and method != "occlusion":
        raise ConfigError(f"--method {method}: {model.method} is a classical pipeline without gradients; "
                          "use --method occlusion")
    source = str(image) if isinstance(image, (str, os.PathLike)) else None
    if kind == "deep":
        import torch

        from ..features import decode_to_tensor

        x, ok, errors = decode_to_tensor([image], model.preprocess, n_jobs=1, max_pixels=max_pixels,
                                         description="explain")
        if not len(x):
            raise ConfigError(f"{source or 'image'}: cannot be read ({errors[0][1] if errors else 'unknown error'})")
        with torch.no_grad():
            logits = model.model_.eval()((x.float() - torch.tensor(model.preprocess.mean).view(1, 3, 1, 1) * 255)
                                          / (torch.tensor(model.preprocess.std).view(1, 3, 1, 1) * 255))
        P = model.proba_from_logits(logits.numpy())[0]
        view = x[0].permute(1, 2, 0).numpy().copy()
        run = lambda name: _explain_deep(model, x, name, method)  # noqa: E731
    else:
        from PIL import Image

        from ..errors import ImageLoadError

        try:
            im = load_image(image, max_pixels=max_pixels)
        except ImageLoadError as exc:
            raise ConfigError(f"{exc.path}: cannot be read ({exc.reason})") from None
        if max(im.size) > CLASSICAL_VIEW:
            im.thumbnail((CLASSICAL_VIEW, CLASSICAL_VIEW), Image.Resampling.BILINEAR)
        view = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        P = np.nan_to_num(model.predict_proba([view])[0])
        run = lambda name: _explain_classical(model, view, name)  # noqa: E731
    out = []
    for name in _targets(model, P, target):
        heat = np.asarray(run(name), np.float32)
        if heat.shape != view.shape[:2]:
            from PIL import Image

            heat = np.asarray(Image.fromarray(heat).resize(view.shape[1::-1], Image.Resampling.BILINEAR))
        out.append(Explanation(view, _normalise(heat), name, _probability(model, P, name), method, source))
    return out


def output_paths(out: str | os.PathLike, explanations: Sequence[Explanation]) -> list[Path]:
    """``out`` for one explanation; ``<stem>-<target>.png`` next to it for several."""
    out = Path(out)
    if len(explanations) == 1:
        return [out]
    safe = lambda s: "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in s)  # noqa: E731
    return [out.with_name(f"{out.stem}-{safe(e.target)}{out.suffix or '.png'}") for e in explanations]
