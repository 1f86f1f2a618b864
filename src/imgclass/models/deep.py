"""Deep classifiers trained end to end (``lite0``, ``resnet18@scratch``, ``smallcnn``).

The estimator holds a timm ``nn.Module``; ``imgclass.training`` fits it. Prediction exports the
network to ONNX once (cached by a hash of its weights) and runs ONNX Runtime, which is faster than
torch eager on CPU; ``engine="torch"`` keeps everything in torch.

A bundle whose ONNX export is already cached predicts without importing torch or timm (about 5 s
of start-up): the network is only built from ``weights.safetensors`` when something needs it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..data import ImageDataset
from ..data.decode import DEFAULT_MAX_PIXELS
from ..errors import ConfigError, ModelFormatError
from ..features import decode_to_tensor
from ..features.backbones import (
    BackboneConfig,
    backbone_config,
    create_backbone,
    looks_like_path,
    pretrained_dir,
    resolve_arch,
)
from ..runtime import cache_dir, export_onnx, ort_threads, session
from ..transforms import Preprocess
from .base import ImageClassifier, calibrated, sources_of, with_gaps

WEIGHTS_FILE = "weights.safetensors"
#: pixels per inference batch (64 images of 256 x 256): bounds activation memory for large input sizes
_BATCH_PIXELS = 64 * 256 * 256


def _state_hash(arrays) -> str:
    """Digest of ``(name, array)`` pairs in name order, floats as float32: the same for a network's
    state dict and for the safetensors file it was saved to."""
    h = hashlib.sha256()
    for k, v in sorted(arrays, key=lambda kv: kv[0]):
        h.update(k.encode())
        h.update(np.ascontiguousarray(v).tobytes())
    return h.hexdigest()[:20]


def _arrays_hash(arrays: dict[str, np.ndarray]) -> str:
    """``_state_hash`` of a bundle's weights as read by ``weights.load_arrays`` (floats as float32)."""
    return _state_hash((k, v.astype(np.float32) if v.dtype.kind == "f" else v) for k, v in arrays.items())


def _arch_of(backbone: str) -> str:
    """``backbone_config(backbone).arch`` without importing timm for plain architecture names."""
    if pretrained_dir(backbone) is not None or looks_like_path(backbone):
        return backbone_config(backbone).arch
    return resolve_arch(backbone)


def _decode_pixels(sources, preprocess: Preprocess, n_jobs: int | None, max_pixels: int | None,
                   description: str):
    """``decode_to_tensor`` as a numpy ``(n_ok, 3, H, W)`` uint8 array: ONNX Runtime needs no torch."""
    from ..features import decode_to_array

    return decode_to_array(sources, preprocess, n_jobs, max_pixels, description)


class DeepClassifier(ImageClassifier):
    """A timm backbone with a classification head, trained end to end.

    ``pretrained``: ``"imagenet"`` (offline for lite0-2), ``"hub"``, a weights file, or ``None``.
    ``train_config``: a ``TrainConfig`` dict for the engine (epochs, lr, ``balance``, ...). ``hierarchy``:
    ``flat`` (leaf softmax) or ``local`` (a softmax per parent node). With a validation set, ``calibrate``
    fits a temperature and ``positive`` / ``threshold_for`` / ``min_confidence`` tune the decision rule.
    """

    kind = "deep"

    def __init__(self, backbone: str, pretrained: str | None = "imagenet", img_size: int | None = None,
                 preprocess: Preprocess | None = None, train_config: dict[str, Any] | None = None, seed: int = 0,
                 n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS, method: str | None = None,
                 engine: str = "onnx", hierarchy: str = "flat", calibrate: bool = True, positive: str | None = None,
                 threshold_for: str | None = None, min_confidence: float | None = None):
        # a value passed back by get_params is stored unchanged (what sklearn.base.clone checks)
        self.backbone, self.pretrained, self.img_size = backbone, pretrained, img_size
        # the backbone's config (timm) is read only when the pre-processing is incomplete or it is needed
        self._backbone_cfg: BackboneConfig | None = None
        if preprocess is None or preprocess.size is None or preprocess.mean is None:
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
        self.train_config = train_config if train_config is not None else {}
        self.seed, self.n_jobs, self.max_pixels, self.engine = seed, n_jobs, max_pixels, engine
        self.method = method or (backbone if pretrained else f"{backbone}@scratch")
        self.hierarchy, self.calibrate = hierarchy, calibrate
        self.positive, self.threshold_for, self.min_confidence = positive, threshold_for, min_confidence
        self._init_state()
        self._net = None
        self._pending: tuple[str, int] | None = None  # (weights file, outputs) of a bundle network not built yet
        self._pending_key: str | None = None  # its ``_weights_hash``
        self.history_: list[dict] = []
        self._onnx: tuple[str, Any] | None = None

    # ---------------------------------------------------------------- training
    def fit(self, data: ImageDataset, val: ImageDataset | None = None, unlabeled: ImageDataset | None = None, *,
            log: Callable[[str], Any] = print, ckpt_dir: str | Path | None = None, resume: bool = False,
            on_epoch: Callable[[dict], Any] | None = None) -> DeepClassifier:
        """Train the network on ``data`` with the engine (``train_config``); with ``val`` keep the best
        epoch, then calibrate and tune the decision rule on it. ``unlabeled``: FixMatch's pseudo-label loss.
        ``ckpt_dir`` holds the checkpoints; ``resume`` continues from ``ckpt_dir/last.pt``."""
        from ..training.engine import TrainConfig
        from .deep_fit import train_network

        self.set_labels(data)
        if self.hierarchy not in ("flat", "local"):
            raise ConfigError(f"--hierarchy {self.hierarchy!r}: choose flat or local")
        cfg = TrainConfig.from_dict({"seed": self.seed, **self.train_config})
        done = train_network(self, data, val, cfg, unlabeled=unlabeled, ckpt_dir=ckpt_dir, resume=resume, log=log,
                             on_epoch=on_epoch)
        self.model_ = done.net
        self.history_ = done.history
        if done.semi is not None:
            self.meta_["semi"] = done.semi
        self.meta_["train_skipped"] = done.train_skipped
        self.meta_["val_skipped"] = done.val_skipped
        self.errors_ = list(done.train_skipped)
        self.meta_["data_fingerprint"] = data.fingerprint()
        P = None
        if done.val_x is not None and done.is_main:  # under DDP rank 0 alone calibrates, tunes and reports
            rows = self.proba_from_logits(self.logits_from_tensor(done.val_x)) if len(done.val_x) else []
            P = with_gaps(len(val), done.val_ok, rows, len(self.classes_))
        self._finish_fit(val if P is not None else None, P, log)
        return self

    # ---------------------------------------------------------------- network
    @property
    def backbone_cfg(self) -> BackboneConfig:
        if self._backbone_cfg is None:
            self._backbone_cfg = backbone_config(self.backbone)
        return self._backbone_cfg

    @property
    def model_(self):
        """The torch network (``None`` until trained); a bundle's is built on first use."""
        if self._net is None and self._pending is not None:
            self._net = self._load_network(*self._pending)
            self._pending = self._pending_key = None
        return self._net

    @model_.setter
    def model_(self, net) -> None:
        self._net, self._pending, self._pending_key = net, None, None

    def _load_network(self, weights: str | dict, n_outputs: int):
        """The network with ``n_outputs`` outputs holding ``weights`` (a checked safetensors file or its
        arrays); names and shapes must match exactly."""
        import torch

        from .weights import load_arrays

        arrays = load_arrays(Path(weights)) if isinstance(weights, str) else weights
        where = weights if isinstance(weights, str) else self.meta_.get("bundle", "weights")
        try:
            net = create_backbone(self.backbone, pretrained=None, num_classes=n_outputs)
            net.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()},
                                strict=True)
        except (RuntimeError, ValueError, TypeError) as exc:
            raise ModelFormatError(f"{where}: weights do not fit {self.backbone} with {n_outputs} outputs "
                                   f"({str(exc).splitlines()[0]}); the bundle is damaged, retrain it") from None
        return net.eval()

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

    @property
    def is_fitted(self) -> bool:
        return self._net is not None or self._pending is not None

    def _check_fitted(self):
        if not self.is_fitted:
            raise ConfigError("this model is not trained yet; call imgclass.train() or load a bundle")

    def _weights_hash(self) -> str:
        if self._net is None and self._pending_key is not None:  # the bundle's file, not loaded yet
            return self._pending_key
        import torch

        return _state_hash((k, (v.detach().to(torch.float32) if v.dtype.is_floating_point else v.detach()).numpy())
                           for k, v in self.model_.state_dict().items())

    def _onnx_path(self, key: str) -> Path:
        size = self.preprocess.size if isinstance(self.preprocess.size, int) else self.preprocess.size[0]
        arch = self._backbone_cfg.arch if self._backbone_cfg is not None else _arch_of(self.backbone)
        return cache_dir() / "onnx" / f"deep-{arch}-{size}-{key}-foldpad.onnx"

    def _session(self):
        """An ONNX Runtime session for the current weights (exported once, cached on disk)."""
        key = self._weights_hash()
        if self._onnx is not None and self._onnx[0] == key:
            return self._onnx[1]
        size = self.preprocess.size if isinstance(self.preprocess.size, int) else self.preprocess.size[0]
        path = self._onnx_path(key)
        if not path.exists():
            export_onnx(self.model_, size, path, fold_pads=True)
        sess = session(path, threads=ort_threads(os.cpu_count() or 1))
        outputs = sess.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != self.n_outputs:
            raise ModelFormatError(f"{self.meta_.get('bundle', 'model')}: the network has {outputs} outputs but "
                                   f"the model names {self.n_outputs}; the bundle is damaged, retrain it")
        self._onnx = (key, sess)
        return sess

    def logits_from_tensor(self, x, batch_size: int = 64) -> np.ndarray:
        """Logits for a uint8 ``(n, 3, h, w)`` tensor or array (flip TTA when the model was trained with it)."""
        self._check_fitted()
        mean = np.asarray(self.preprocess.mean, np.float32).reshape(1, 3, 1, 1) * 255
        std = np.asarray(self.preprocess.std, np.float32).reshape(1, 3, 1, 1) * 255
        out = []
        h, w = tuple(x.shape[-2:]) if len(x) else (1, 1)
        batch_size = max(1, min(batch_size, _BATCH_PIXELS // max(1, int(h) * int(w))))  # large inputs: fewer at once
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
            a = (np.asarray(x[s:s + batch_size]).astype(np.float32) - mean) / std
            if self.tta:  # the image and its mirror in one pass
                logits = run(np.concatenate([a, a[..., ::-1]]))
                logits = (logits[:len(a)] + logits[len(a):]) / 2
            else:
                logits = run(a)
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
        sources = sources_of(X)
        decode = _decode_pixels if self.engine == "onnx" else decode_to_tensor
        x, ok, errors = decode(sources, self.preprocess, n_jobs=self.n_jobs, max_pixels=self.max_pixels,
                               description="predict")
        self.errors_ = errors
        return with_gaps(len(sources), ok, self.proba_from_logits(self.logits_from_tensor(x)) if len(x) else [],
                         len(self.classes_))

    # ---------------------------------------------------------------- persistence
    def _check_saveable(self) -> None:
        if self.model_ is None:
            raise ModelFormatError("cannot save an untrained model; train it first")

    def _write_payload(self, folder: Path, meta: dict[str, Any]) -> None:
        """``weights.safetensors``: the whole network; the training history goes into ``model.json``."""
        from safetensors.torch import save_file

        meta["history"] = self.history_
        sd = {k: v.detach().contiguous() for k, v in self.model_.state_dict().items()}
        save_file(sd, str(folder / WEIGHTS_FILE))

    @classmethod
    def _from_config(cls, folder: Path, meta: dict[str, Any]) -> DeepClassifier:
        from .validate import WEIGHT_NAMES, bundle_file, check_backbone_name

        if not bundle_file(folder, WEIGHTS_FILE).is_file():
            raise ModelFormatError(f"{folder}: {WEIGHTS_FILE} is missing; the bundle is incomplete")
        backbone = check_backbone_name(meta["backbone"], folder, folder / "model.json", "backbone")
        # where the weights first came from is history: never read again, so only a name is kept
        model = cls(backbone, pretrained=meta.get("pretrained") if meta.get("pretrained") in WEIGHT_NAMES else None,
                    preprocess=Preprocess.from_dict(meta["preprocessing"]), train_config=meta.get("train_config"),
                    seed=meta.get("seed", 0), method=meta.get("method"), hierarchy=meta.get("hierarchy", "flat"))
        model.history_ = list(meta.get("history") or [])
        return model

    def _read_payload(self, folder: Path, meta: dict[str, Any]) -> None:
        """The weights, checked (header, shapes, finite values) against the network of the model's outputs."""
        from .validate import bundle_file
        from .weights import load_arrays

        wfile = bundle_file(folder, WEIGHTS_FILE)
        arrays = load_arrays(wfile)
        # an ONNX export of exactly these weights is cached (so they fit the backbone): build the
        # torch network only if something asks for it; otherwise build and check it now
        key = _arrays_hash(arrays)
        if self.engine == "onnx" and self._onnx_path(key).exists():
            self._pending, self._pending_key = (str(wfile), self.n_outputs), key
        else:
            self.model_ = self._load_network(arrays, self.n_outputs)

    def config(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "arch": self.backbone_cfg.arch, "pretrained": self.pretrained,
                "train_config": self.train_config, "hierarchy": self.hierarchy}

    def __repr__(self) -> str:
        return f"DeepClassifier(method={self.method!r}, classes={len(self.classes_)}, fitted={self.is_fitted})"

