"""Frozen deep embeddings (``lite0+logreg``) and ImageNet predictions (``imagenet:lite0``).

The backbone is exported once to ONNX (cached on disk) and run with ONNX Runtime, several times
faster than torch eager on a CPU (``imgclass.runtime``); each joblib worker keeps one
single-threaded session, so decoding and inference of two chunks overlap on two cores. Embeddings
are cached on disk (see ``EmbeddingCache``) keyed by backbone, pre-processing and file content.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError
from ..runtime import cache_dir, export_onnx, ort_threads, session
from .backbones import LITE, backbone_config, create_backbone, lite_weights_file
from .classical import FeatureExtractor


def _weights_id(backbone: str, pretrained: str | None) -> str:
    if pretrained in (None, "scratch", "none"):
        return "scratch"
    if pretrained == "imagenet" and backbone in LITE:
        p = lite_weights_file(backbone)
        return f"imagenet-{p.name}"
    if pretrained in ("imagenet", "hub"):
        return "hub"
    p = Path(pretrained)
    st = p.stat()
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"file-{h.hexdigest()[:16]}-{st.st_size}"


class EmbeddingCache:
    """A SQLite key-value store of float32 vectors: one database per (backbone, weights, pre-processing).

    SQLite gives atomic commits and safe concurrent readers from worker processes for free.
    """

    def __init__(self, namespace: str):
        self.path = cache_dir() / "embeddings" / f"{namespace}.sqlite"

    def _connect(self, readonly: bool) -> sqlite3.Connection | None:
        if readonly:
            if not self.path.exists():
                return None
            return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self.path, timeout=30)
        con.execute("CREATE TABLE IF NOT EXISTS emb (key TEXT PRIMARY KEY, vec BLOB NOT NULL)")
        return con

    def get_many(self, keys: list[str]) -> dict[str, np.ndarray]:
        con = self._connect(readonly=True)
        if con is None or not keys:
            return {}
        try:
            out = {}
            for i in range(0, len(keys), 500):
                part = keys[i:i + 500]
                q = f"SELECT key, vec FROM emb WHERE key IN ({','.join('?' * len(part))})"
                try:
                    rows = con.execute(q, part).fetchall()
                except sqlite3.OperationalError:  # table not created yet
                    return out
                out.update({k: np.frombuffer(v, dtype=np.float32) for k, v in rows})
            return out
        finally:
            con.close()

    def put_many(self, items: list[tuple[str, np.ndarray]]) -> None:
        if not items:
            return
        con = self._connect(readonly=False)
        try:
            with con:
                con.executemany("INSERT OR REPLACE INTO emb (key, vec) VALUES (?, ?)",
                                [(k, np.asarray(v, dtype=np.float32).tobytes()) for k, v in items])
        finally:
            con.close()


class DeepEmbedding(FeatureExtractor):
    """Pooled embeddings of a pretrained timm backbone (``output="embedding"``), or its ImageNet
    class probabilities (``output="probabilities"``)."""

    name: ClassVar[str] = "deep"
    description: ClassVar[str] = "frozen deep embeddings of a pretrained backbone (ONNX Runtime, cached on disk)"
    cacheable: ClassVar[bool] = True

    #: Classifier defaults that suit these embeddings: 1,000+ correlated dimensions need strong
    #: regularisation, so logistic regression gets a small C.
    classifier_defaults: ClassVar[dict[str, dict[str, Any]]] = {"logreg": {"C": 0.003}}

    def __init__(self, backbone: str = "lite0", pretrained: str | None = "imagenet", size: int | None = None,
                 output: str = "embedding", batch_size: int = 32, cache: bool = True, tta: bool = True):
        if output not in ("embedding", "probabilities"):
            raise ConfigError(f"output {output!r}: choose embedding or probabilities")
        cfg = backbone_config(backbone)
        self.backbone, self.pretrained, self.output = backbone, pretrained, output
        self.size = int(size or cfg.embed_size or cfg.input_size)  # a pretrain run: its FixRes test size
        self.batch_size, self.cache = batch_size, cache
        self.tta = tta and output == "embedding"  # average the embeddings of the image and its mirror
        self.config = cfg
        self.name = backbone  # type: ignore[misc]  (instances are named by their backbone)
        self._params = {"backbone": backbone, "pretrained": pretrained, "size": self.size, "output": output,
                        "batch_size": batch_size, "cache": cache, "tta": self.tta}
        self._onnx_path: str | None = None

    def preprocess_defaults(self) -> dict[str, Any]:
        """Pre-processing that matches the backbone's pretraining: centre crop, its interpolation and
        normalisation."""
        return {"size": self.size, "resize": "crop", "interpolation": self.config.interpolation,
                "mean": list(self.config.mean), "std": list(self.config.std)}

    # -- the ONNX model, exported once per (backbone, weights, size, output)
    def _model_key(self) -> str:
        wid = _weights_id(self.backbone, self.pretrained)
        return f"{self.config.arch}-{wid}-{self.output}"

    def namespace(self, preprocess: dict[str, Any]) -> str:
        blob = json.dumps({"model": self._model_key(), "pre": preprocess, "tta": self.tta}, sort_keys=True)
        return f"{self.config.arch}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def prepare(self) -> str:
        """Export the backbone to ONNX (once; cached on disk) and return the file path."""
        if self._onnx_path and os.path.exists(self._onnx_path):
            return self._onnx_path
        path = cache_dir() / "onnx" / f"{self._model_key()}-{self.size}.onnx"  # the graph has a fixed input size
        if not path.exists():
            import torch

            model = create_backbone(self.backbone, pretrained=self.pretrained,
                                    num_classes=1000 if self.output == "probabilities" else 0).eval()
            if self.output == "probabilities":
                model = torch.nn.Sequential(model, torch.nn.Softmax(dim=1))
            export_onnx(model, self.size, path)
        self._onnx_path = str(path)
        return self._onnx_path

    def _session(self):
        # one thread per worker process (the joblib workers are the parallelism), one session per process
        return session(self.prepare(), threads=ort_threads(1), inter_threads=1, cache=True)

    def transform(self, images: list[np.ndarray]) -> np.ndarray:
        sess = self._session()
        mean = np.asarray(self.config.mean, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
        std = np.asarray(self.config.std, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
        out = []
        for i in range(0, len(images), self.batch_size):
            batch = np.stack([self._fit_size(im) for im in images[i:i + self.batch_size]]).astype(np.float32)
            x = (batch.transpose(0, 3, 1, 2) - mean) / std
            y = sess.run(None, {"image": np.ascontiguousarray(x)})[0]
            if self.tta:
                y = (y + sess.run(None, {"image": np.ascontiguousarray(x[..., ::-1])})[0]) / 2
            out.append(y)
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)

    def _fit_size(self, im: np.ndarray) -> np.ndarray:
        if im.shape[0] == self.size and im.shape[1] == self.size:
            return im
        from .classical import _resize

        return _resize(im, self.size)


def is_backbone_name(name: str) -> bool:
    """True for lite0/lite1/lite2 and timm architecture names."""
    if name in LITE:
        return True
    from .backbones import is_known_arch

    try:
        return is_known_arch(name)
    except Exception:
        return False


# --------------------------------------------------------------------------- multi-layer statistics
#: stages of an EfficientNet-Lite whose pooled activations the ``layers`` detector uses (timm ``blocks``
#: index: 2 = 40 channels at 1/8 resolution, 3 = 80 at 1/16, 4 = 112 at 1/16, 5 = 192 at 1/32)
LAYER_BLOCKS = (2, 3, 4, 5)
#: output channels of those stages per backbone (the layout of ``layer_statistics``' vectors)
LAYER_CHANNELS = {"lite0": (40, 80, 112, 192), "lite1": (40, 80, 112, 192), "lite2": (48, 88, 120, 208)}


def layer_statistics_module(backbone: str, pretrained):
    """A torch module: image -> [mean and std over positions of each ``LAYER_BLOCKS`` stage] + for each
    of those stages and the final 1280-channel map, two spatial statistics on the map pooled to 7 x 7:
    cosine(centre 3 x 3 mean, border ring mean) and the mean cosine of every position to the map's mean."""
    import torch
    import torch.nn.functional as F


    class LayerStats(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.m = create_backbone(backbone, pretrained=pretrained, num_classes=0).eval()

        @staticmethod
        def _spatial(x):
            h, w = int(x.shape[-2]), int(x.shape[-1])  # fixed input size: constants in the ONNX graph
            if h % 7 == 0 and w % 7 == 0 and h > 7:
                x = F.avg_pool2d(x, (h // 7, w // 7))
                h = w = 7
            # centre = the middle 3/7 of each side, border ring = the outer 1/7 (3 x 3 and ring of 7 x 7)
            r0, r1, c0, c1 = round(2 * h / 7), round(5 * h / 7), round(2 * w / 7), round(5 * w / 7)
            i0, i1, j0, j1 = round(h / 7), round(6 * h / 7), round(w / 7), round(6 * w / 7)
            centre = x[:, :, r0:r1, c0:c1].mean((2, 3))
            ring = h * w - (i1 - i0) * (j1 - j0)
            border = (x.sum((2, 3)) - x[:, :, i0:i1, j0:j1].sum((2, 3))) / max(1, ring)
            cb = F.cosine_similarity(centre, border, dim=1, eps=1e-6)
            mean = x.mean((2, 3), keepdim=True)
            uni = F.cosine_similarity(x, mean.expand_as(x), dim=1, eps=1e-6).mean((1, 2))
            return [cb[:, None], uni[:, None]]

        def forward(self, x):
            m = self.m
            x = m.bn1(m.conv_stem(x))
            pooled, spatial = [], []
            for i, b in enumerate(m.blocks):
                x = b(x)
                if i in LAYER_BLOCKS:
                    pooled += [x.mean((2, 3)), x.std((2, 3))]
                    spatial += self._spatial(x)
            spatial += self._spatial(m.bn2(m.conv_head(x)))
            return torch.cat(pooled + spatial, 1)

    return LayerStats()


class LayerStatistics(DeepEmbedding):
    """``layer_statistics_module`` of the backbone as a feature extractor (ONNX Runtime, cached on disk
    like the embeddings): per-stage activation statistics and layout cues that the pooled embedding
    averages away (used by ``curation`` to find out-of-distribution images)."""

    def _model_key(self) -> str:
        return super()._model_key() + "-layerstats-v1"

    def prepare(self) -> str:
        if self._onnx_path and os.path.exists(self._onnx_path):
            return self._onnx_path
        path = cache_dir() / "onnx" / f"{self._model_key()}-{self.size}.onnx"
        if not path.exists():
            export_onnx(layer_statistics_module(self.backbone, self.pretrained), self.size, path)
        self._onnx_path = str(path)
        return self._onnx_path
