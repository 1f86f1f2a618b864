"""Deep classifiers trained end to end (``lite0``, ``resnet18@scratch``, ``smallcnn``).

The estimator holds a timm ``nn.Module``; ``imgclass.training`` fits it. Prediction exports the
network to ONNX once (cached by a hash of its weights) and runs ONNX Runtime, measured several
times faster than torch eager on this CPU; ``engine="torch"`` keeps everything in torch.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..data.decode import DEFAULT_MAX_PIXELS, ImageSource
from ..errors import ConfigError, ModelFormatError
from ..features import decode_to_tensor
from ..features.backbones import backbone_config, create_backbone
from ..features.deep import cache_dir, export_onnx
from ..tasks.decision import Decision
from ..transforms import Preprocess
from .classical import _sources_of, calibrated, predictions, with_gaps

WEIGHTS_FILE = "weights.safetensors"


class DeepClassifier:
    """A timm backbone with a classification head, trained end to end.

    ``pretrained``: ``"imagenet"`` (offline for lite0-2), ``"hub"``, a weights file, or ``None``.
    ``train_config`` is a ``TrainConfig`` dict used by ``imgclass.training``.
    """

    kind = "deep"

    def __init__(self, backbone: str, pretrained: str | None = "imagenet", img_size: int | None = None,
                 preprocess: Preprocess | None = None, train_config: dict[str, Any] | None = None, seed: int = 0,
                 n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS, method: str | None = None,
                 engine: str = "onnx"):
        self.backbone, self.pretrained = backbone, pretrained
        self.backbone_cfg = backbone_config(backbone)
        size = int(img_size or self.backbone_cfg.input_size)
        if preprocess is None:
            preprocess = Preprocess(size=size, resize="crop" if pretrained else "squash",
                                    interpolation=self.backbone_cfg.interpolation, mean=self.backbone_cfg.mean,
                                    std=self.backbone_cfg.std)
        if preprocess.size is None:
            preprocess = replace(preprocess, size=size)
        if preprocess.mean is None:
            preprocess = replace(preprocess, mean=self.backbone_cfg.mean, std=self.backbone_cfg.std)
        self.preprocess = preprocess
        self.train_config = dict(train_config or {})
        self.seed, self.n_jobs, self.max_pixels, self.engine = seed, n_jobs, max_pixels, engine
        self.method = method or (backbone if pretrained else f"{backbone}@scratch")
        self.classes_: list[str] = []
        self.task_ = "multiclass"
        self.taxonomy_: dict | None = None
        self.decision_ = None
        self.hierarchy = "flat"  # hierarchical tasks: flat (leaf softmax) | local (softmax per parent node)
        self.model_ = None
        self.errors_: list[tuple[str, str]] = []
        self.history_: list[dict] = []
        self.meta_: dict[str, Any] = {}
        self.timings_: dict[str, float] = {}
        self._onnx: tuple[str, Any] | None = None

    # ---------------------------------------------------------------- network
    def build_network(self, num_classes: int, drop_rate: float = 0.0):
        """Create the network with ``num_classes`` outputs (pretrained weights per ``pretrained``)."""
        kwargs = {"drop_rate": drop_rate} if drop_rate else {}
        self.model_ = create_backbone(self.backbone, pretrained=self.pretrained, num_classes=num_classes, **kwargs)
        self._onnx = None
        return self.model_

    def _tree(self):
        from ..tasks.hierarchy import Tree

        return Tree(self.taxonomy_ or {c: None for c in self.classes_}, self.classes_)

    @property
    def n_outputs(self) -> int:
        """Outputs of the network: one per class, or one per taxonomy node for ``hierarchy="local"``."""
        if self.task_ == "hierarchical" and self.hierarchy == "local":
            return len(self._tree().nodes)
        return len(self.classes_)

    @property
    def tta(self) -> bool:
        return bool(self.train_config.get("tta", True)) and self.hflip

    @property
    def hflip(self) -> bool:
        """False when trained with ``--no-hflip``: a mirrored image is another class."""
        return bool(self.train_config.get("hflip", True))

    def _check_fitted(self):
        if self.model_ is None:
            raise ConfigError("this model is not trained yet; call imgclass.train() or load a bundle")

    def _weights_hash(self) -> str:
        import torch

        h = hashlib.sha256()
        for k, v in self.model_.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().to(torch.float32).contiguous().numpy().tobytes() if v.dtype.is_floating_point
                     else v.detach().contiguous().numpy().tobytes())
        return h.hexdigest()[:20]

    def _session(self):
        """An ONNX Runtime session for the current weights (exported once, cached on disk)."""
        import onnxruntime as ort

        key = self._weights_hash()
        if self._onnx is not None and self._onnx[0] == key:
            return self._onnx[1]
        size = self.preprocess.size if isinstance(self.preprocess.size, int) else self.preprocess.size[0]
        path = cache_dir() / "onnx" / f"deep-{self.backbone_cfg.arch}-{size}-{key}.onnx"
        if not path.exists():
            export_onnx(self.model_, size, path)
        so = ort.SessionOptions()
        so.intra_op_num_threads = int(os.environ.get("IMGCLASS_ORT_THREADS", "0")) or (os.cpu_count() or 1)
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self._onnx = (key, sess)
        return sess

    def logits_from_tensor(self, x, batch_size: int = 64) -> np.ndarray:
        """Logits for a uint8 ``(n, 3, h, w)`` tensor (flip TTA when the model was trained with it)."""
        self._check_fitted()
        mean = np.asarray(self.preprocess.mean, np.float32).reshape(1, 3, 1, 1) * 255
        std = np.asarray(self.preprocess.std, np.float32).reshape(1, 3, 1, 1) * 255
        out = []
        if self.engine == "onnx":
            sess = self._session()

            def run(a):
                return sess.run(None, {"image": np.ascontiguousarray(a)})[0]
        else:
            import torch

            net = self.model_.eval()

            def run(a):
                with torch.no_grad():
                    return net(torch.from_numpy(np.ascontiguousarray(a))).numpy()
        for s in range(0, len(x), batch_size):
            a = (x[s:s + batch_size].numpy().astype(np.float32) - mean) / std
            logits = run(a)
            if self.tta:
                logits = (logits + run(a[..., ::-1])) / 2
            out.append(logits)
        return np.concatenate(out) if out else np.zeros((0, self.n_outputs), np.float32)

    def proba_from_logits(self, logits: np.ndarray) -> np.ndarray:
        """Probabilities (with the fitted temperature, once calibrated) from network outputs."""
        if self.task_ == "hierarchical" and self.hierarchy == "local":
            from ..tasks.hierarchy import leaf_probabilities_from_node_logits

            return calibrated(self, leaf_probabilities_from_node_logits(self._tree(), logits))
        if self.task_ == "multilabel":
            return calibrated(self, 1.0 / (1.0 + np.exp(-logits)))
        z = logits - logits.max(axis=1, keepdims=True)
        e = np.exp(z)
        return calibrated(self, e / e.sum(axis=1, keepdims=True))

    # ---------------------------------------------------------------- inference
    def predict_proba(self, X) -> np.ndarray:
        """``(n, n_classes)`` probabilities; NaN rows for images that could not be read."""
        self._check_fitted()
        sources = _sources_of(X)
        x, ok, errors = decode_to_tensor(sources, self.preprocess, n_jobs=self.n_jobs, max_pixels=self.max_pixels,
                                         description="predict")
        self.errors_ = errors
        return with_gaps(len(sources), ok, self.proba_from_logits(self.logits_from_tensor(x)) if len(x) else [],
                         len(self.classes_))

    def predict(self, X: Sequence[ImageSource], top_k: int = 1):
        return predictions(self, self.predict_proba(X), top_k)

    # ---------------------------------------------------------------- persistence
    def save(self, path, **meta) -> Path:
        from .bundle import save_deep_bundle

        return save_deep_bundle(self, path, **meta)

    @classmethod
    def from_bundle(cls, folder: Path, meta: dict[str, Any]) -> DeepClassifier:
        from safetensors.torch import load_file

        wfile = folder / WEIGHTS_FILE
        if not wfile.exists():
            raise ModelFormatError(f"{folder}: {WEIGHTS_FILE} is missing; the bundle is incomplete")
        try:
            model = cls(meta["backbone"], pretrained=None, preprocess=Preprocess.from_dict(meta["preprocessing"]),
                        train_config=meta.get("train_config"), seed=meta.get("seed", 0), method=meta.get("method"))
            model.pretrained = meta.get("pretrained")
            model.classes_ = list(meta["classes"])
            model.task_ = meta.get("task", "multiclass")
            model.taxonomy_ = meta.get("taxonomy")
            model.decision_ = Decision.from_dict(meta["decision"]) if meta.get("decision") else None
            model.hierarchy = meta.get("hierarchy", "flat")
            net = create_backbone(meta["backbone"], pretrained=None, num_classes=model.n_outputs)
            net.load_state_dict(load_file(str(wfile)), strict=True)
        except (KeyError, TypeError) as exc:
            raise ModelFormatError(f"{folder}: bad model.json field {exc}") from None
        except RuntimeError as exc:
            raise ModelFormatError(f"{wfile}: weights do not fit {meta.get('backbone')} ({str(exc).splitlines()[0]})") from None
        model.model_ = net.eval()
        model.history_ = list(meta.get("history") or [])
        model.meta_ = {k: meta.get(k) for k in ("calibration", "metrics", "data_fingerprint")}
        model.meta_["bundle"] = str(folder)
        return model

    def config(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "arch": self.backbone_cfg.arch, "pretrained": self.pretrained,
                "train_config": self.train_config, "hierarchy": self.hierarchy}

    def __repr__(self) -> str:
        return f"DeepClassifier(method={self.method!r}, classes={len(self.classes_)}, fitted={self.model_ is not None})"

