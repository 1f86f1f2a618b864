"""The one exporter of torch modules to ONNX, and the module that bakes pre-processing into a graph."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def cache_dir() -> Path:
    """Where imgclass caches exported models and embeddings (``IMGCLASS_CACHE`` or ~/.cache/imgclass)."""
    return Path(os.environ.get("IMGCLASS_CACHE") or Path.home() / ".cache" / "imgclass")


def export_onnx(module, size: int | tuple[int, int], path: str | os.PathLike | None = None, *,
                uint8_nhwc: bool = False, output: str = "output", opset: int = 17,
                fold_pads: bool = False) -> Path | bytes:
    """Export ``module`` (eval mode, dynamic batch) to ONNX: written atomically to ``path``, or returned
    as bytes when ``path`` is ``None``.

    The input is named ``image``: float ``N x 3 x H x W``, or with ``uint8_nhwc`` uint8 ``N x H x W x 3``
    (a module from ``preprocessed``). The graph has a fixed height and width, so ``fold_pads`` can move
    TF-"same" padding into the convolutions (``rewrite.fold_static_pads``)."""
    import io
    import warnings

    import torch

    from .._util import atomic_write_bytes

    h, w = (size, size) if isinstance(size, int) else size
    example = torch.zeros(1, h, w, 3, dtype=torch.uint8) if uint8_nhwc else torch.zeros(1, 3, h, w)
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module.eval(), example, buf, dynamo=False, input_names=["image"], output_names=[output],
                          opset_version=int(opset), dynamic_axes={"image": {0: "batch"}, output: {0: "batch"}})
    data = buf.getvalue()
    if fold_pads:
        from .rewrite import fold_static_pads

        data = fold_static_pads(data)
    if path is None:
        return data
    atomic_write_bytes(path, data)
    return Path(path)


def preprocessed(net, mean: Sequence[float], std: Sequence[float], flip: bool = False):
    """A torch module: uint8 RGB ``(N, H, W, 3)`` -> ``net``'s outputs, normalised in the graph as
    ``(pixels - 255 * mean) / (255 * std)``; ``flip`` averages the outputs of the image and its mirror."""
    import torch

    class Preprocessed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net
            # one value for every channel (EfficientNet-Lite: 0.5/0.5) becomes a scalar: the int8 graph
            # runs channels-last, where a per-channel broadcast over the innermost 3 values is slow
            scalar = len(set(mean)) == 1 and len(set(std)) == 1
            for name, v in (("mean", mean), ("std", std)):
                t = torch.tensor(v[0] if scalar else v, dtype=torch.float32) * 255
                self.register_buffer(name, t if scalar else t.view(1, 3, 1, 1))
            self.flip = bool(flip)

        def _normalise(self, image):
            return (image.permute(0, 3, 1, 2).to(torch.float32) - self.mean) / self.std

        def forward(self, image):
            if self.flip:  # the image and its mirror in one batch (mirrored as uint8: 4x fewer bytes to move)
                n = image.shape[0]
                both = self.net(self._normalise(torch.cat([image, torch.flip(image, dims=[2])])))
                return (both[:n] + both[n:]) / 2  # outputs averaged, as predict does with logits
            return self.net(self._normalise(image))

    return Preprocessed().eval()


__all__ = ["cache_dir", "export_onnx", "preprocessed"]
