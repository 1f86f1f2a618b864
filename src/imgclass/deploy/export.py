"""ONNX export that carries its pre-processing and its labels.

The exported graph takes ``image``: uint8 RGB, ``(N, H, W, 3)`` at the model's input size, and
returns ``probabilities``: the calibrated class probabilities ``predict`` would give. Inside the graph:
channel reordering, normalisation (mean/std), the network, flip test-time augmentation when the model
was trained with flips, the temperature and the task's activation (softmax; sigmoid per label;
per-sibling-group softmax up the tree for hierarchical ``local`` models). What stays outside is
decoding and resizing to ``H x W``, described in the metadata (``resize`` mode and interpolation) and
done by ``OnnxModel`` with the same code as training.

Feature pipelines whose features have an ONNX form (``pixels+logreg``, ``lite0+logreg``) export to
the same contract: their features as ONNX operators, the classifier through skl2onnx, the temperature
on the log-probabilities as their Python path applies it (see ``export_classical``).

The ONNX metadata (``metadata_props``) holds ``imgclass`` = JSON with the classes, task, decision rule
(thresholds, taxonomy, fallback), calibration temperature, input size, resize mode, mean/std,
method and versions, so a bare ``.onnx`` file is enough to use the model correctly.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write_bytes, atomic_write_json
from ..errors import ConfigError, ModelFormatError
from ..runtime import feed_uint8_input

ONNX_FILE = "model.onnx"
META_KEY = "imgclass"
FORMAT = 1
QUANTIZE = ("int8", "dynamic")


def _export_module(model):
    """A torch module: uint8 NHWC image -> calibrated probabilities (see the module docstring)."""
    import torch

    from ..runtime import preprocessed
    from ..tasks.hierarchy import sibling_groups

    net = model.model_.eval()
    pre = model.preprocess
    temperature = (model.meta_.get("calibration") or {}).get("temperature")
    task = model.task_
    groups = ancestor = None
    if task == "hierarchical" and getattr(model, "hierarchy", "flat") == "local":
        tree = model._tree()
        groups = [torch.as_tensor(np.asarray(g, dtype=np.int64)) for g in sibling_groups(tree)]
        ancestor = torch.as_tensor(tree.ancestor_matrix.T.astype(np.float32))

    class Exported(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pre = preprocessed(net, pre.mean, pre.std, flip=bool(model.tta))  # normalise (+ flip TTA)
            self.t = float(temperature) if temperature else None
            if ancestor is not None:
                order = torch.cat(groups)
                self.register_buffer("inverse", torch.argsort(order))
                self.register_buffer("ancestor", ancestor)
                self.groups = groups

        def forward(self, image):
            logits = self.pre(image)
            if task == "multilabel":
                return torch.sigmoid(logits / self.t if self.t else logits)
            if ancestor is not None:
                parts = [torch.log_softmax(logits[:, g], dim=1) for g in self.groups]
                log_cond = torch.cat(parts, dim=1)[:, self.inverse]
                log_leaf = log_cond @ self.ancestor
                return torch.softmax(log_leaf / self.t if self.t else log_leaf, dim=1)
            return torch.softmax(logits / self.t if self.t else logits, dim=1)

    return Exported().eval()


def metadata(model) -> dict[str, Any]:
    """What a bare ONNX file needs to be used correctly (stored in its ``metadata_props``)."""
    from .. import __version__
    from ..models import decision_of

    pre = model.preprocess
    size = pre.size if isinstance(pre.size, (list, tuple)) else (pre.size, pre.size)
    meta = {"format": FORMAT, "imgclass": __version__, "method": getattr(model, "method", None) or model.backbone,
            "kind": getattr(model, "kind", "deep"),
            "task": model.task_, "classes": list(model.classes_), "taxonomy": model.taxonomy_,
            "decision": decision_of(model).to_dict(),
            "temperature": (model.meta_.get("calibration") or {}).get("temperature"),
            "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "channels": "RGB",
                      "height": int(size[0]), "width": int(size[1])},
            "preprocess": pre.to_dict(), "flip_tta": bool(getattr(model, "tta", False)),
            "hflip": bool(getattr(model, "hflip", True)), "output": "probabilities"}
    if _is_classical(model):
        from ..features import extractor_names

        meta.update({"features": extractor_names(model.extractor), "classifier": model.classifier_name})
    return meta


def _is_classical(model) -> bool:
    """A feature pipeline (extractor + scikit-learn) rather than a torch network."""
    return getattr(model, "model_", None) is None and hasattr(model, "extractor")


def to_onnx_bytes(model, opset: int = 17) -> bytes:
    """The exported fp32 graph (see the module docstring) with metadata, as bytes."""
    import onnx

    if _is_classical(model):
        from .export_classical import classical_onnx

        proto = classical_onnx(model, int(opset))
        meta = metadata(model)
    else:
        from ..runtime import export_onnx

        meta = metadata(model)
        size = (meta["input"]["height"], meta["input"]["width"])
        # TF-"same" padding as constant conv pads: faster in fp32, and int8 keeps each conv chain quantised
        proto = onnx.load_from_string(export_onnx(_export_module(model), size, uint8_nhwc=True,
                                                  output="probabilities", opset=opset, fold_pads=True))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)
    proto.doc_string = f"imgclass {meta['method']} ({meta['task']}, {len(meta['classes'])} classes)"
    return proto.SerializeToString()


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``imgclass`` metadata of an exported ONNX file, checked like a bundle's ``model.json``."""
    from ..runtime import session

    try:
        sess = session(path)
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises several unrelated types
        raise ModelFormatError(f"{path}: not a readable ONNX model ({exc}); export it again with imgclass export") from None
    raw = sess.get_modelmeta().custom_metadata_map.get(META_KEY)
    if raw is None:
        raise ModelFormatError(f"{path}: has no imgclass metadata; export it with imgclass export")
    meta = check_metadata(raw, path)
    outputs = sess.get_outputs()[0].shape[-1] if sess.get_outputs() else None
    if isinstance(outputs, int) and outputs != len(meta["classes"]):
        raise ModelFormatError(f"{path}: the graph has {outputs} outputs but its metadata names "
                               f"{len(meta['classes'])} classes; export it again with imgclass export")
    return meta


def check_metadata(raw: str, path: str | os.PathLike) -> dict[str, Any]:
    """The ``imgclass`` metadata JSON of an ONNX file, parsed with bounds and checked field by field."""
    from ..models.validate import (
        TASKS,
        check_classes,
        check_decision,
        check_preprocess,
        check_taxonomy,
        check_temperature,
        is_int,
        parse_json,
        refuse,
    )

    meta = parse_json(raw, path)
    if not isinstance(meta, dict):
        raise refuse(path, "imgclass metadata is not a JSON object")
    fmt = meta.get("format", 0)
    if not is_int(fmt):
        raise refuse(path, "imgclass metadata has no format number")
    if fmt > FORMAT:
        raise ModelFormatError(f"{path}: written by a newer imgclass (format {meta['format']}); upgrade imgclass")
    if meta.get("task") not in TASKS:
        raise refuse(path, f"task {meta.get('task')!r} is not one of {', '.join(TASKS)}")
    check_classes(meta.get("classes"), path)
    check_taxonomy(meta.get("taxonomy"), meta["classes"], path, required=meta["task"] == "hierarchical")
    check_decision(meta.get("decision"), meta, path)
    check_temperature(meta.get("temperature"), path)
    pre = meta.get("preprocess")
    check_preprocess(pre, path, "preprocess")
    inp = meta.get("input")
    size = pre.get("size") if isinstance(pre, dict) else None
    hw = [size, size] if is_int(size) else size
    if not isinstance(inp, dict) or hw is None or [inp.get("height"), inp.get("width")] != list(hw):
        raise refuse(path, "input height and width must match the pre-processing size")
    for key in ("hflip", "flip_tta"):
        if key in meta and not isinstance(meta[key], bool):
            raise refuse(path, f"{key} must be true or false")
    if meta.get("method") is not None and not isinstance(meta["method"], str):
        raise refuse(path, "method must be a string")
    return meta


class CalibrationReader:
    """Feeds uint8 image batches to ONNX Runtime's static quantisation calibration."""

    def __init__(self, arrays: np.ndarray, batch: int = 16):
        self.arrays, self.batch, self.pos = arrays, batch, 0

    def get_next(self):
        if self.pos >= len(self.arrays):
            return None
        a = self.arrays[self.pos:self.pos + self.batch]
        self.pos += self.batch
        return {"image": np.ascontiguousarray(a)}

    def rewind(self):
        self.pos = 0


def quantize(fp32: bytes, mode: str, calibration: np.ndarray | None = None, workdir: Path | None = None) -> bytes:
    """``dynamic``: weights to int8, activations quantised on the fly (ONNX Runtime ``quantize_dynamic``).
    ``int8``: static QDQ quantisation (int8 weights per channel, uint8 activations) calibrated on
    ``calibration`` images (uint8 NHWC) with ONNX Runtime ``quantize_static``."""
    import tempfile

    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if mode not in QUANTIZE:
        raise ConfigError(f"--quantize {mode}: choose int8 (static, calibrated on training images) or dynamic")
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(fp32)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 - pre-processing is an optimisation; quantise the plain graph
            pre = src
        if mode == "dynamic":
            # Matrix products only (ViT / MLP layers): ONNX Runtime's dynamic ConvInteger kernels are slower
            # than fp32 and lose much accuracy on CNNs, which want --quantize int8.
            # DefaultTensorType: the type of tensors that shape inference cannot follow through ai.onnx.ml
            # operators (skl2onnx's classifiers of feature pipelines)
            quantize_dynamic(str(pre), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                             extra_options={"DefaultTensorType": 1})  # 1 = onnx.TensorProto.FLOAT
        else:
            if calibration is None or not len(calibration):
                raise ConfigError("--quantize int8 needs calibration images: pass --calibration DATA (a few hundred "
                                  "training images)")
            # Choices that keep int8 close to fp32:
            # * the ReLU6 (Clip) nodes must be in the quantised set, so that ONNX Runtime folds them into
            #   the convolution's output range; left out, each convolution's raw output (a wide range) is
            #   quantised before the clip and accuracy drops;
            # * CPUs without AVX-512 VNNI compute uint8 x int8 products with 16-bit intermediate sums that
            #   saturate, so weights keep 7 bits (reduce_range); uint8 weights avoid it but run on slow kernels;
            # * the input normalisation and the output temperature/softmax stay in float.
            quantize_static(str(pre), str(dst), CalibrationReader(calibration), quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=["Conv", "Clip", "Add", "MatMul", "Gemm"],
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            reduce_range=True, calibrate_method=CalibrationMethod.MinMax)
            import onnx

            q = onnx.load(str(dst))
            if feed_uint8_input(q):
                return q.SerializeToString()
        return dst.read_bytes()


def calibration_arrays(data, meta: dict[str, Any], n: int = 256, seed: int = 0, max_pixels: int | None = None) -> np.ndarray:
    """``n`` seeded random images of ``data`` (a folder, CSV, dataset or list of paths) as uint8 NHWC at
    the export's input size, resized as the model expects."""
    from ..data import ImageDataset, from_paths, load_dataset
    from ..features import load_arrays
    from ..transforms import Preprocess

    if isinstance(data, ImageDataset):
        ds = data
    elif isinstance(data, (list, tuple)):
        ds = from_paths(data)
    else:
        ds = load_dataset(data)
    if ds.splits and "train" in ds.splits:
        ds = ds.subset(ds.splits["train"])
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(ds), min(n, len(ds)), replace=False))
    pre = Preprocess.from_dict(meta["preprocess"])  # its to_array gives uint8 HWC pixels (no normalisation)
    arrays, _, _ = load_arrays([ds.sources[i] for i in idx], pre, max_pixels)
    return np.stack([np.asarray(a, dtype=np.uint8) for a in arrays]) if arrays else np.zeros((0,), np.uint8)


def export(model, out: str | os.PathLike | None = None, *, quantize_mode: str | None = None, opset: int = 17,
           check: bool = False, check_images: Sequence | None = None, calibration=None, n_calibration: int = 256,
           seed: int = 0, log: Callable[[str], Any] = lambda m: None) -> dict[str, Any]:
    """Export a bundle (path or loaded model) to ONNX.

    Writes ``BUNDLE/model.onnx`` (or ``out``) atomically and records it in the bundle's ``model.json``.
    ``quantize_mode``: ``int8`` (static, calibrated on ``calibration`` images, by default the training
    images recorded with the bundle) or ``dynamic``. ``check`` compares ONNX Runtime with the model's own
    path (torch, or extractor + scikit-learn for feature pipelines) on ``check_images`` (or calibration
    images) and reports the max abs probability difference. Returns a summary dict (file, size, check
    results, timings). Feature pipelines whose features have no ONNX form raise ``ConfigError``.
    """
    from ..models import load_model

    bundle = None
    if isinstance(model, (str, os.PathLike)):
        bundle = Path(model)
        model = load_model(bundle)
    elif getattr(model, "run_dir", None) is not None:
        bundle = Path(model.run_dir) / "model"
    classical = _is_classical(model)
    if classical:
        from .export_classical import check_exportable, compare_with_python, quantizable

        check_exportable(model)  # before anything slow: say at once why a bundle has no ONNX form
    if opset < 13:
        raise ConfigError(f"--opset {opset}: use 13 or newer (17 is the default)")
    t0 = time.perf_counter()
    fp32 = to_onnx_bytes(model, opset)
    meta = metadata(model)
    summary: dict[str, Any] = {"fp32_bytes": len(fp32), "export_s": time.perf_counter() - t0, "opset": opset}
    data = fp32
    calib = None
    if classical and quantize_mode in QUANTIZE:
        quantizable(fp32, quantize_mode, model)  # before loading calibration images
    if quantize_mode == "int8" or check:
        source = calibration or _training_data(bundle)
        if source is not None:
            calib = calibration_arrays(source, meta, n_calibration, seed)
    if quantize_mode is not None:
        t1 = time.perf_counter()
        data = quantize(fp32, quantize_mode, calib)
        summary.update({"quantize": quantize_mode, "quantized_bytes": len(data), "quantize_s": time.perf_counter() - t1})
    if check:
        imgs = calibration_arrays(check_images, meta, 64, seed) if check_images is not None else (
            calib[:64] if calib is not None else None)
        if imgs is None or not len(imgs):
            raise ConfigError("--check needs sample images: pass --calibration DATA (or check_images)")
        summary["check"] = (compare_with_python if classical else compare_with_torch)(model, data, imgs)
        summary["check"]["fp32"] = quantize_mode is None
        log(f"check on {len(imgs)} images: max abs probability difference {summary['check']['max_abs_diff']:.2e}, "
            f"top-1 agreement {summary['check']['top1_agreement']:.4f}")
    dest = Path(out) if out is not None else (bundle / ONNX_FILE if bundle is not None else None)
    if dest is None:
        raise ConfigError("export: give out= (the model has no bundle folder)")
    atomic_write_bytes(dest, data)
    summary.update({"file": str(dest), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    if bundle is not None and dest.parent.resolve() == bundle.resolve():
        mj = bundle / "model.json"
        doc = json.loads(mj.read_text(encoding="utf-8"))
        doc["onnx"] = {"file": dest.name, "quantize": quantize_mode, "opset": opset, "sha256": summary["sha256"],
                       "input": meta["input"], "weights": _weights_digest(bundle)}
        atomic_write_json(mj, doc)
    return summary


def _weights_digest(bundle: Path) -> str | None:
    """SHA-256 of what the export was made from: ``weights.safetensors`` (deep), or ``estimator.skops``
    and any embedded backbone weights (feature pipelines)."""
    w = bundle / "weights.safetensors"
    files = [w] if w.exists() else sorted([bundle / "estimator.skops", *bundle.glob("backbone-*.safetensors")])
    files = [f for f in files if f.exists()]
    if not files:
        return None
    h = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _training_data(bundle: Path | None):
    """The training data recorded in the run's config.yaml next to the bundle, when it still exists."""
    if bundle is None:
        return None
    cfg = bundle.parent / "config.yaml"
    if not cfg.exists():
        return None
    import yaml

    data = (yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}).get("data")
    return data if data and Path(data).exists() else None


def compare_with_torch(model, onnx_bytes: bytes, images: np.ndarray) -> dict[str, Any]:
    """Max abs probability difference and top-1 agreement between ONNX Runtime and ``model``'s torch path
    on uint8 NHWC ``images`` (already at the input size)."""
    from ..runtime import session

    sess = session(onnx_bytes)
    P_onnx = np.concatenate([sess.run(None, {"image": np.ascontiguousarray(images[s:s + 32])})[0]
                             for s in range(0, len(images), 32)])
    engine = getattr(model, "engine", None)
    try:
        if engine is not None:
            model.engine = "torch"
        import torch

        logits = model.logits_from_tensor(torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))))
        P_torch = model.proba_from_logits(logits)
    finally:
        if engine is not None:
            model.engine = engine
    diff = np.abs(P_onnx - P_torch)
    return {"images": int(len(images)), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "top1_agreement": float((P_onnx.argmax(1) == P_torch.argmax(1)).mean())}


__all__ = ["ONNX_FILE", "QUANTIZE", "compare_with_torch", "export", "metadata", "quantize", "read_metadata",
           "to_onnx_bytes"]
