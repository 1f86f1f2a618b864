"""ONNX export of feature pipelines whose features have an ONNX form: ``pixels+logreg``, ``lite0+logreg``.

The graph keeps the deep export's contract (see ``imgclass.deploy.export``): ``image``, uint8 RGB
``(N, H, W, 3)`` at the bundle's pre-processing size, in; the calibrated ``probabilities`` that
``FeaturePipeline.predict_proba`` gives, out. Inside, in order:

1. the features, one branch per extractor, side by side as ``Concat.transform`` puts them:

   * ``pixels``: Cast, grayscale (OpenCV's own fixed-point formula, so the grey levels are identical),
     division by 255 and Reshape. Written here with ``onnx.helper``: no converter turns these few
     numpy lines into ONNX;
   * a deep backbone (``lite0+logreg``): the normalisation, the backbone's ONNX export that
     ``DeepEmbedding.prepare`` caches, and the average of the image's and its mirror's embeddings when
     the extractor averages them;

2. the scikit-learn classifier (the scaler / calibrated SVM / forest ... pipeline the bundle holds),
   converted by skl2onnx without ZipMap so that it yields a probability tensor;
3. the classifier's seen classes placed among all classes, and the calibration temperature applied to
   the log-probabilities exactly as ``imgclass.tasks.calibration.apply_temperature`` does.

The other extractors (HOG, LBP, colour histograms, SIFT, ...) run scikit-image or OpenCV code that has
no ONNX form, so those bundles are refused with the reason (``ConfigError``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ConfigError

#: extractors without an ONNX form -> what computes them
NO_ONNX = {"hog": "scikit-image", "lbp": "scikit-image", "edges": "scikit-image", "glcm": "scikit-image",
           "gabor": "OpenCV filters", "color_hist": "OpenCV (HSV conversion and calcHist)",
           "sift": "OpenCV descriptors and a k-means bag of words", "orb": "OpenCV descriptors and a k-means bag of words"}
EXPORTABLE = "classical bundles export when their features are pixels or a deep backbone (e.g. pixels+logreg, lite0+logreg)"
#: OpenCV's RGB -> grey weights in 15-bit fixed point (cv2.cvtColor on uint8, with rounding): exact in float32
_GRAY = (9798.0, 19235.0, 3735.0)
_GRAY_SHIFT = 1 << 15
_EPS = 1e-7  # imgclass.tasks.calibration's clip


def _where(model) -> str:
    return str((getattr(model, "meta_", None) or {}).get("bundle") or getattr(model, "method", "model"))


def _parts(model) -> list:
    from ..features import Concat

    ex = model.extractor
    return list(ex.parts) if isinstance(ex, Concat) else [ex]


def _size_hw(size) -> tuple[int, int] | None:
    if size is None:
        return None
    return (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))


def check_exportable(model) -> None:
    """Raise a one-line ``ConfigError`` saying why ``model`` (a ``FeaturePipeline``) has no ONNX form."""
    from ..features.classical import Pixels
    from ..features.deep import DeepEmbedding

    where = _where(model)
    if getattr(model, "classifier_", None) is None:
        raise ConfigError(f"{where}: the model is not fitted; train it before exporting")
    for p in _parts(model):
        if not isinstance(p, (Pixels, DeepEmbedding)):
            lib = NO_ONNX.get(p.name, "Python code")
            raise ConfigError(f"{where}: {p.name} features are computed with {lib} and have no ONNX form; {EXPORTABLE}")
    hw = _size_hw(model.preprocess.size)
    if hw is None:
        raise ConfigError(f"{where}: the pre-processing has no fixed size, so the graph has no input size; "
                          "retrain with a pre-processing size")
    for p in _parts(model):
        if hw != (p.size, p.size):
            # The extractors resize again with OpenCV (INTER_AREA / INTER_LINEAR on uint8, with their own
            # rounding), which ONNX Resize does not reproduce exactly.
            raise ConfigError(f"{where}: images are pre-processed to {hw[0]}x{hw[1]} and the {p.name} features "
                              f"resize them again to {p.size}x{p.size} with OpenCV, which has no exact ONNX form; "
                              "retrain with the pre-processing size equal to the feature size")
    if isinstance(model.classifier_, dict):
        raise ConfigError(f"{where}: a hierarchical model with one classifier per tree node (--hierarchy local) "
                          "has no ONNX export yet; retrain with --hierarchy flat to export it")
    from sklearn.neighbors import KNeighborsClassifier

    for est in _estimators(model.classifier_):
        if isinstance(est, KNeighborsClassifier) and est.weights != "uniform":
            # skl2onnx converts it, but ignores the distance weights, so its probabilities would differ
            raise ConfigError(f"{where}: skl2onnx converts the {model.classifier_name} classifier (k-nearest "
                              "neighbours) only with uniform weights, and this one is distance-weighted; "
                              "export works with logreg, linsvm, svm, tree, rf or mlp")


def _estimators(est):
    """``est`` and the fitted estimators inside it (pipeline steps, one-vs-rest and calibrated members)."""
    yield est
    inner = [s for _, s in getattr(est, "steps", [])] + list(getattr(est, "estimators_", None) or [])
    inner += [c.estimator for c in getattr(est, "calibrated_classifiers_", None) or []]
    for sub in inner:
        if hasattr(sub, "get_params"):
            yield from _estimators(sub)


class _Graph:
    """Nodes, initialisers and opsets of one ONNX graph, with auto-named outputs."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list = []
        self.inits: list = []
        self.functions: list = []
        self.opsets: dict[str, int] = {"": opset}
        self.ir_version = 0
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def const(self, hint: str, value) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str | None = None, n_out: int = 1, **attrs) -> Any:
        from onnx import helper

        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def inline(self, sub, prefix: str, inputs: dict[str, str], output: str) -> str:
        """Add ``sub`` (a ModelProto) with its names prefixed; ``inputs`` maps its graph inputs to tensors
        of this graph. Returns the name of its ``output``. The Identity nodes joining the two are removed
        by ONNX Runtime's graph optimiser."""
        from onnx import compose, helper

        sub = compose.add_prefix(sub, prefix)
        inits = {t.name for t in sub.graph.initializer}
        for i in sub.graph.input:
            if i.name not in inits:
                self.nodes.append(helper.make_node("Identity", [inputs[i.name[len(prefix):]]], [i.name]))
        self.nodes.extend(sub.graph.node)
        self.inits.extend(sub.graph.initializer)
        self.functions.extend(sub.functions)
        for o in sub.opset_import:  # the default domain is this graph's opset (sub-models are converted to it)
            if o.domain not in ("", "ai.onnx"):
                self.opsets[o.domain] = max(self.opsets.get(o.domain, 0), o.version)
        self.ir_version = max(self.ir_version, sub.ir_version)
        return prefix + output

    def model(self, input_hw: tuple[int, int], output: str, n_classes: int):
        from onnx import TensorProto, helper

        graph = helper.make_graph(
            self.nodes, "imgclass", [helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", *input_hw, 3])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", n_classes])], initializer=self.inits)
        opsets = [helper.make_opsetid(d, v) for d, v in self.opsets.items()]
        ir = max(self.ir_version, helper.find_min_ir_version_for(opsets, ignore_unknown=True))
        return helper.make_model(graph, opset_imports=opsets, ir_version=ir, functions=self.functions)


def _pixels_branch(g: _Graph, part) -> str:
    """``Pixels.transform``: float32 pixels / 255 (grey through OpenCV's formula), flattened H, W, C."""
    from onnx import TensorProto

    x = g.op("Cast", ["image"], "pixels_f32", to=TensorProto.FLOAT)
    if part.gray:
        # cv2.cvtColor(RGB2GRAY) on uint8 = (9798 R + 19235 G + 3735 B + 2^14) >> 15; every term is an
        # integer below 2^24, so float32 computes it exactly.
        w = g.const("gray_weights", np.asarray(_GRAY, np.float32).reshape(3, 1))
        s = g.op("MatMul", [x, w], "gray_sum")
        s = g.op("Add", [s, g.const("half", np.float32(_GRAY_SHIFT // 2))])
        x = g.op("Floor", [g.op("Div", [s, g.const("shift", np.float32(_GRAY_SHIFT))])], "gray")
    x = g.op("Div", [x, g.const("u8_max", np.float32(255.0))], "pixels_scaled")
    return g.op("Reshape", [x, g.const("flat", np.asarray([0, -1], np.int64))], "pixels_features")


def _backbone_branch(g: _Graph, part, index: int) -> str:
    """``DeepEmbedding.transform``: normalise, the cached backbone export, flip-averaged embeddings."""
    import onnx
    from onnx import TensorProto, version_converter

    x = g.op("Cast", ["image"], "bb_f32", to=TensorProto.FLOAT)
    x = g.op("Transpose", [x], "bb_nchw", perm=[0, 3, 1, 2])
    mean = np.asarray(part.config.mean, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
    std = np.asarray(part.config.std, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
    x = g.op("Div", [g.op("Sub", [x, g.const("mean", mean.astype(np.float32))]), g.const("std", std.astype(np.float32))],
             "bb_input")
    if part.tta:  # the image and its mirror in one batch (as the deep export does), embeddings averaged
        flipped = g.op("Slice", [x, g.const("start", np.asarray([-1], np.int64)),
                                 g.const("end", np.asarray([np.iinfo(np.int64).min], np.int64)),
                                 g.const("axis", np.asarray([3], np.int64)), g.const("step", np.asarray([-1], np.int64))],
                       "bb_flipped")
        x = g.op("Concat", [x, flipped], "bb_both", axis=0)
    sub = onnx.load(part.prepare())
    version = next((o.version for o in sub.opset_import if o.domain in ("", "ai.onnx")), g.opset)
    if version != g.opset:
        try:
            sub = version_converter.convert_version(sub, g.opset)
        except Exception:  # noqa: BLE001 - the converter raises several types, all meaning "no adapter"
            raise ConfigError(f"--opset {g.opset}: onnx's version converter cannot take the {part.name} backbone "
                              f"(exported at opset {version}) to opset {g.opset}; use --opset {version}") from None
    y = g.inline(sub, f"backbone{index}_", {"image": x}, "output")
    if part.tta:
        split = {"num_outputs": 2} if g.opset >= 18 else {}
        a, b = g.op("Split", [y], "bb_half", n_out=2, axis=0, **split)
        y = g.op("Div", [g.op("Add", [a, b]), g.const("two", np.float32(2.0))], "bb_features")
    return y


def _head(g: _Graph, model, features: str) -> str:
    """The fitted scikit-learn classifier, converted by skl2onnx; returns its probability tensor."""
    import warnings

    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    clf = model.classifier_
    d = getattr(clf, "n_features_in_", None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            head = convert_sklearn(clf, initial_types=[("X", FloatTensorType([None, d]))], target_opset=g.opset,
                                   options={id(clf): {"zipmap": False}})
    except Exception as exc:  # noqa: BLE001 - skl2onnx raises RuntimeError, NotImplementedError, ...
        why = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise ConfigError(f"{_where(model)}: skl2onnx cannot convert the {model.classifier_name} classifier "
                          f"({type(clf).__name__}: {why}); export works with logreg, linsvm, svm, tree, rf or mlp") from None
    outs = [o.name for o in head.graph.output]
    prob = "probabilities" if "probabilities" in outs else outs[-1]
    return g.inline(head, "sklearn_", {"X": features}, prob)


def _tail(g: _Graph, model, P: str) -> str:
    """Seen classes -> all classes (``predict_proba_features``) and the temperature (``apply_temperature``)."""
    n = len(model.classes_)
    if model.task_ != "multilabel":
        seen = np.asarray(model.classifier_.classes_, dtype=np.int64)
        if len(seen) != n or (seen != np.arange(n)).any():
            place = np.zeros((len(seen), n), np.float32)
            place[np.arange(len(seen)), seen] = 1.0  # exact: each output is one probability times 1
            P = g.op("MatMul", [P, g.const("place", place)], "all_classes")
    T = (model.meta_.get("calibration") or {}).get("temperature")
    if T is None or T == 1.0:
        return P
    t = g.const("temperature", np.float32(T))
    if model.task_ == "multilabel":
        Q = g.op("Clip", [P, g.const("lo", np.float32(_EPS)), g.const("hi", np.float32(1 - _EPS))])
        one = g.const("one", np.float32(1.0))
        z = g.op("Sub", [g.op("Log", [Q]), g.op("Log", [g.op("Sub", [one, Q])])], "logit")
        return g.op("Sigmoid", [g.op("Div", [z, t])], "calibrated")
    Q = g.op("Clip", [P, g.const("lo", np.float32(_EPS)), g.const("hi", np.float32(1.0))])
    return g.op("Softmax", [g.op("Div", [g.op("Log", [Q]), t])], "calibrated", axis=-1)


def classical_onnx(model, opset: int = 17):
    """The fp32 ``onnx.ModelProto`` of a ``FeaturePipeline`` (see the module docstring), without metadata.

    Raises ``ConfigError`` when its features, classifier or task have no ONNX form."""
    from onnx import checker, helper
    from onnx.utils import Extractor

    from ..features.classical import Pixels

    check_exportable(model)
    g = _Graph(opset)
    feats = [_pixels_branch(g, p) if isinstance(p, Pixels) else _backbone_branch(g, p, i)
             for i, p in enumerate(_parts(model))]
    x = feats[0] if len(feats) == 1 else g.op("Concat", feats, "features", axis=1)
    P = _tail(g, model, _head(g, model, x))
    g.nodes.append(helper.make_node("Identity", [P], ["probabilities"]))
    proto = g.model(_size_hw(model.preprocess.size), "probabilities", len(model.classes_))
    # skl2onnx's predicted-label branch is not wanted: keep what the probabilities need
    proto = Extractor(proto).extract_model(["image"], ["probabilities"])
    proto.graph.name, proto.producer_name = "imgclass", "imgclass"
    checker.check_model(proto)
    return proto


def quantizable(proto_bytes: bytes, mode: str, model) -> None:
    """Raise ``ConfigError`` when ``mode`` has nothing to quantise in a classical graph."""
    import onnx

    ops = {n.op_type for n in onnx.load_from_string(proto_bytes).graph.node}
    where = _where(model)
    if mode == "int8" and "Conv" not in ops:
        raise ConfigError(f"{where}: --quantize int8 calibrates convolutions and the {model.method} graph has none "
                          "(its classifier runs as ai.onnx.ml operators, which ONNX Runtime does not quantise); "
                          "export in fp32, or use int8 with a deep backbone (e.g. lite0+logreg)")
    if mode == "dynamic" and not ops & {"MatMul", "Gemm"}:
        raise ConfigError(f"{where}: --quantize dynamic quantises matrix products and the {model.method} graph has "
                          "none (its classifier runs as ai.onnx.ml operators); export in fp32, or use an mlp "
                          "classifier")


def compare_with_python(model, onnx_bytes: bytes, images: np.ndarray) -> dict[str, Any]:
    """Max abs probability difference and top-1 agreement between ONNX Runtime and the feature pipeline's
    Python path (extractor + scikit-learn) on uint8 NHWC ``images`` at the input size."""
    from ..runtime import session

    sess = session(onnx_bytes)
    P_onnx = np.concatenate([sess.run(None, {"image": np.ascontiguousarray(images[s:s + 32])})[0]
                             for s in range(0, len(images), 32)])
    model.extractor.prepare()
    F = np.asarray(model.extractor.transform(list(images)), dtype=np.float32)  # as extract_features does
    P_py = model.predict_proba_features(F)
    diff = np.abs(P_onnx - P_py)
    return {"images": int(len(images)), "max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "top1_agreement": float((P_onnx.argmax(1) == P_py.argmax(1)).mean()), "reference": "scikit-learn"}


__all__ = ["EXPORTABLE", "NO_ONNX", "check_exportable", "classical_onnx", "compare_with_python", "quantizable"]
