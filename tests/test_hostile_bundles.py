"""Hostile model bundles: each is refused in one line with exit code 2, runs no code and reads nothing outside.

Two small real bundles (``hog+logreg`` and a one-epoch ``smallcnn``) are built once, then copied and
mutated per case: crafted skops nodes whose payload would create a marker file, paths leading out of the
bundle, schema violations, damaged weights and ONNX files that no export recorded.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import quiet_env, run_cli, write_colour_dataset
from PIL import Image

from imgclass.models.deep import DeepClassifier


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A classical and a deep bundle, and one image to predict."""
    import imgclass

    root = tmp_path_factory.mktemp("hostile")
    with quiet_env(root):
        data = write_colour_dataset(root / "data", n_per_class=6, size=16)
        classical = imgclass.train(data, method="hog+logreg", out=root / "classical", n_jobs=1, seed=0)
        # an untrained smallcnn is a complete deep bundle: only its format matters here
        deep = DeepClassifier("smallcnn", pretrained=None, img_size=16, n_jobs=1)
        deep.build_network(3)
        deep.classes_ = ["blue", "green", "red"]
        deep.save(root / "deep")
    img = root / "img.png"
    Image.new("RGB", (16, 16), (200, 40, 40)).save(img)
    return {"classical": Path(classical.run_dir) / "model", "deep": root / "deep", "img": img, "root": root}


@pytest.fixture
def copy(base, tmp_path):
    def make(kind: str = "classical") -> Path:
        dest = tmp_path / f"{kind}-bundle"
        shutil.copytree(base[kind], dest)
        return dest
    return make


def edit_meta(bundle: Path, fn) -> None:
    mj = bundle / "model.json"
    doc = json.loads(mj.read_text())
    new = fn(doc)
    mj.write_text(json.dumps(doc if new is None else new))


def refused(bundle: Path, img: Path, *needles: str) -> str:
    """``imgclass predict BUNDLE img``: exit 2 and one line naming ``needles`` (the file by default)."""
    rc, out, err = run_cli(["predict", bundle, img])
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and "internal error" not in err and "ERROR" not in out
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("imgclass: error:"), err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- skops: code never runs
def _skops_with(bundle: Path, mutate) -> Path:
    """Rewrite ``estimator.skops`` with ``mutate(schema)`` applied to its schema.json."""
    est = bundle / "estimator.skops"
    with zipfile.ZipFile(est) as z:
        members = {n: z.read(n) for n in z.namelist()}
    schema = json.loads(members["schema.json"])
    mutate(schema)
    members["schema.json"] = json.dumps(schema).encode()
    with zipfile.ZipFile(est, "w") as z:
        for n, b in members.items():
            z.writestr(n, b)
    return est


def _json(value) -> dict:
    return {"__class__": "str", "__module__": "builtins", "__loader__": "JsonNode", "content": json.dumps(value),
            "is_json": True}


def _tuple(*items) -> dict:
    return {"__class__": "tuple", "__module__": "builtins", "__loader__": "TupleNode", "content": list(items)}


def _function(module: str, name: str) -> dict:
    return {"__class__": name, "__module__": module, "__loader__": "FunctionNode"}


def _payloads(marker: Path) -> dict[str, dict]:
    code = f"open({str(marker)!r}, 'w').write('ran')"
    shell = f"touch {marker}"
    return {
        "runstring": {"__class__": "runstring", "__module__": "numpy.testing._private.utils",
                      "__loader__": "FunctionNode"},
        "eval_partial": {"__class__": "partial", "__module__": "functools", "__loader__": "PartialNode",
                         "content": {"func": _function("builtins", "eval"), "args": _tuple(_json(code)),
                                     "kwds": {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode",
                                              "content": {}},
                                     "namespace": _json(None)}},
        "os_system_reduce": {"__class__": "system", "__module__": "os", "__loader__": "ConstructorFromReduceNode",
                             "content": _tuple(_json(shell))},
        "popen_object": {"__class__": "Popen", "__module__": "subprocess", "__loader__": "ObjectNode",
                         "content": {"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode",
                                     "content": {"args": _json(["touch", str(marker)])}}},
        "sklearn_function": _function("sklearn.utils._testing", "assert_run_python_script_without_output"),
        "scipy_function": _function("scipy._lib._testutils", "_run_subprocess"),
        "numpy_ufunc": _function("numpy", "add"),  # trusted by skops by default, never written by imgclass
        "method_node": {"__class__": "LogisticRegression", "__module__": "sklearn.linear_model._logistic",
                        "__loader__": "MethodNode",
                        "content": {"func": "fit", "obj": {"__class__": "LogisticRegression",
                                                           "__module__": "sklearn.linear_model._logistic",
                                                           "__loader__": "ObjectNode"}}},
        "type_node": {"__class__": "Popen", "__module__": "subprocess", "__loader__": "TypeNode"},
        "operator": {"__class__": "methodcaller", "__module__": "operator", "__loader__": "OperatorFuncNode",
                     "attrs": _tuple(_json("system"), _json(shell))},
        "loss_reduce": {"__class__": "Popen", "__module__": "subprocess", "__loader__": "LossNode",
                        "__reduce__": {"args": _tuple(_json(["touch", str(marker)]))}, "content": _json({})},
        "numpy_scalar": {"__class__": "loadtxt", "__module__": "numpy", "__loader__": "NdArrayNode",
                         "type": "numpy", "file": "x.npy"},
        "sklearn_object_outside_list": {"__class__": "FunctionTransformer",
                                        "__module__": "sklearn.preprocessing._function_transformer",
                                        "__loader__": "ObjectNode"},
    }


@pytest.mark.parametrize("case", sorted(_payloads(Path("x"))))
def test_crafted_skops_nodes_are_refused_before_anything_runs(copy, base, tmp_path, case):
    bundle = copy()
    marker = tmp_path / "pwned"
    payload = _payloads(marker)[case]
    _skops_with(bundle, lambda s: s["content"].__setitem__("extractor_state", payload))
    refused(bundle, base["img"], "estimator.skops")
    assert not marker.exists()


def test_a_function_hidden_deep_inside_the_classifier_is_refused(copy, base, tmp_path):
    bundle = copy()
    marker = tmp_path / "pwned"

    def hide(schema):  # replace a leaf of the classifier's own state
        clf = schema["content"]["classifier"]
        stack = [clf]
        while stack:
            node = stack.pop()
            if isinstance(node, dict) and node.get("__loader__") == "JsonNode":
                node.clear()
                node.update(_payloads(marker)["eval_partial"])
                return
            stack.extend(node.values() if isinstance(node, dict) else node if isinstance(node, list) else [])
    _skops_with(bundle, hide)
    refused(bundle, base["img"], "estimator.skops")
    assert not marker.exists()


def test_not_a_zip_and_a_zip_bomb_header_are_refused(copy, base):
    bundle = copy()
    (bundle / "estimator.skops").write_bytes(b"PK\x03\x04 not really a zip")
    refused(bundle, base["img"], "estimator.skops")


def test_out_of_range_tree_indices_are_refused_not_crashing(tmp_path, base):
    import imgclass

    with quiet_env(tmp_path):
        model = imgclass.train(base["root"] / "data", method="pixels+tree", out=tmp_path / "tree", n_jobs=1)
    bundle = Path(model.run_dir) / "model"
    import skops.io as sio

    from imgclass.models.skops_guard import TRUSTED_TYPES

    payload = sio.load(bundle / "estimator.skops", trusted=TRUSTED_TYPES)
    tree = payload["classifier"].tree_
    state = tree.__getstate__()
    nodes = state["nodes"].copy()
    inner = np.flatnonzero(nodes["left_child"] >= 0)
    nodes["feature"][inner[0]] = 10**6  # would read far outside the feature row
    state["nodes"] = nodes
    tree.__setstate__(state)
    sio.dump(payload, bundle / "estimator.skops")
    refused(bundle, base["img"], "estimator.skops", "feature index")


# --------------------------------------------------------------------------- paths never leave the bundle
@pytest.mark.parametrize("value", ["/etc/passwd", "../outside.safetensors", "bundle:../outside.safetensors",
                                   "bundle:/etc/passwd", "~/.cache/x.safetensors", "bundle:link.safetensors"])
def test_feature_weights_outside_the_bundle_are_refused(copy, base, tmp_path, value):
    bundle = copy()
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(b"secret")
    (bundle / "link.safetensors").symlink_to(outside)
    edit_meta(bundle, lambda d: d["feature_params"]["hog"].__setitem__("pretrained", value))
    refused(bundle, base["img"], "model.json")


def test_a_feature_name_that_is_a_folder_outside_is_refused(copy, base, tmp_path):
    bundle = copy()

    def point(d):
        d["features"] = [str(tmp_path)]
        d["feature_params"] = {str(tmp_path): {"backbone": str(tmp_path)}}
    edit_meta(bundle, point)
    refused(bundle, base["img"], "model.json", "outside")


@pytest.mark.parametrize("value", ["/tmp/somewhere", "../deep", "bundle:../x", "~/runs/simclr"])
def test_a_deep_backbone_path_outside_the_bundle_is_refused(copy, base, value):
    bundle = copy("deep")
    edit_meta(bundle, lambda d: d.__setitem__("backbone", value))
    refused(bundle, base["img"], "model.json")


@pytest.mark.parametrize("name", ["model.json", "estimator.skops"])
def test_bundle_files_that_are_links_out_of_the_bundle_or_fifos_are_never_opened(copy, base, tmp_path, name):
    import os

    bundle = copy()
    outside = tmp_path / "outside"
    shutil.move(bundle / name, outside)
    (bundle / name).symlink_to(outside)
    refused(bundle, base["img"], name, "outside")
    (bundle / name).unlink()
    os.mkfifo(bundle / name)  # opening it would block the test forever
    refused(bundle, base["img"], name, "regular file")


# --------------------------------------------------------------------------- model.json schema
SCHEMA_CASES = {
    "list": lambda d: [d],
    "string": lambda d: "model",
    "negative_size": lambda d: d["preprocessing"].__setitem__("size", -5),
    "huge_size": lambda d: d["preprocessing"].__setitem__("size", 1_000_000),
    "huge_rect": lambda d: d["preprocessing"].__setitem__("size", [1, 10**9]),
    "bool_size": lambda d: d["preprocessing"].__setitem__("size", True),
    "huge_feature_size": lambda d: d["feature_params"]["hog"].__setitem__("size", 100_000),
    "huge_orientations": lambda d: d["feature_params"]["hog"].__setitem__("orientations", 10**9),
    "nan_std": lambda d: d["preprocessing"].__setitem__("std", [float("nan"), 1, 1]),
    "huge_denoise": lambda d: d["preprocessing"].update(denoise="median", denoise_strength=1e9),
    "decision_list": lambda d: d.__setitem__("decision", [1, 2]),
    "decision_threshold": lambda d: d.__setitem__("decision", {"task": "multiclass", "threshold": 7}),
    "decision_thresholds": lambda d: d.__setitem__("decision", {"task": "multiclass", "thresholds": [0.5]}),
    "decision_other_task": lambda d: d.__setitem__("decision", {"task": "binary"}),
    "temperature_zero": lambda d: d.__setitem__("calibration", {"temperature": 0}),
    "temperature_nan": lambda d: d.__setitem__("calibration", {"temperature": float("nan")}),
    "temperature_string": lambda d: d.__setitem__("calibration", {"temperature": "x"}),
    "calibration_list": lambda d: d.__setitem__("calibration", [1]),
    "task_unknown": lambda d: d.__setitem__("task", "regression"),
    "classes_dupes": lambda d: d.__setitem__("classes", ["red", "red", "blue"]),
    "classes_empty_name": lambda d: d.__setitem__("classes", ["", "green", "blue"]),
    "classes_not_strings": lambda d: d.__setitem__("classes", [1, 2, 3]),
    "more_classes": lambda d: d["classes"].append("purple"),
    "fewer_classes": lambda d: d.__setitem__("classes", d["classes"][:-1]),
    "no_format": lambda d: d.pop("format_version"),
    "kind_unknown": lambda d: d.__setitem__("kind", "pickle"),
    "taxonomy_cycle": lambda d: d.update(task="hierarchical", taxonomy={"red": "green", "green": "red",
                                                                        "blue": None}),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_schema_violations_are_refused_in_one_line(copy, base, case):
    bundle = copy()
    edit_meta(bundle, SCHEMA_CASES[case])
    refused(bundle, base["img"], "model.json" if case not in ("more_classes", "fewer_classes") else "classes")


def test_deeply_nested_model_json_is_refused(copy, base):
    bundle = copy()
    (bundle / "model.json").write_text('{"format_version": 1, "metrics": ' + "[" * 50000 + "]" * 50000 + "}")
    refused(bundle, base["img"], "model.json", "nested")


def test_a_huge_model_json_is_refused_without_reading_it_all(copy, base):
    bundle = copy()
    with open(bundle / "model.json", "ab") as f:
        f.write(b" " * (9 * 1024 * 1024))
    refused(bundle, base["img"], "model.json", "larger")


@pytest.mark.parametrize("case", ["more_classes", "huge_size", "temperature_zero"])
def test_deep_schema_violations_are_refused(copy, base, case):
    bundle = copy("deep")
    edit_meta(bundle, SCHEMA_CASES[case])
    refused(bundle, base["img"], "model.json" if case != "more_classes" else "outputs")


# --------------------------------------------------------------------------- weights
def _rewrite_weights(bundle: Path, fn) -> None:
    from safetensors.numpy import load_file, save_file

    w = bundle / "weights.safetensors"
    arrays = load_file(str(w))
    fn(arrays)
    save_file(arrays, str(w))


@pytest.mark.parametrize("case", ["nan", "inf", "truncated", "garbage", "wrong_shape", "missing_key", "extra_key"])
def test_damaged_weights_are_refused(copy, base, case):
    bundle = copy("deep")
    w = bundle / "weights.safetensors"
    if case == "truncated":
        w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    elif case == "garbage":
        w.write_bytes(b"\xff" * 64)
    else:
        def mutate(a):
            name = next(k for k, v in a.items() if v.dtype.kind == "f" and v.ndim >= 2)
            if case in ("nan", "inf"):
                a[name].flat[0] = np.nan if case == "nan" else np.inf
            elif case == "wrong_shape":
                a[name] = np.zeros((3, 3), np.float32)
            elif case == "missing_key":
                del a[name]
            else:
                a["extra.weight"] = np.zeros(2, np.float32)
        _rewrite_weights(bundle, mutate)
    refused(bundle, base["img"], "weights")


# --------------------------------------------------------------------------- ONNX
def test_a_model_onnx_no_export_recorded_is_refused(copy, base):
    bundle = copy("deep")
    (bundle / "model.onnx").write_bytes(b"\x08\x07 whatever")
    refused(bundle, base["img"], "model.onnx", "not recorded")


def test_onnx_metadata_that_is_not_json_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from imgclass.deploy.export import read_metadata
    from imgclass.errors import ModelFormatError

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["probabilities"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for raw, needle in [("{not json", "not valid JSON"), ("[1]", "not a JSON object"),
                        (json.dumps({"format": 1, "task": "multiclass", "classes": "abc"}), "classes"),
                        ("[" * 3000 + "]" * 3000, "nested")]:
        del model.metadata_props[:]
        entry = model.metadata_props.add()
        entry.key, entry.value = "imgclass", raw
        f = tmp_path / "m.onnx"
        onnx.save(model, str(f))
        with pytest.raises(ModelFormatError, match=needle):
            read_metadata(f)


def test_an_onnx_export_altered_after_recording_is_refused(copy, base):
    import imgclass

    bundle = copy("deep")
    imgclass.deploy.export(bundle)
    rc, out, err = run_cli(["predict", bundle, base["img"]])
    assert rc == 0, err
    with open(bundle / "model.onnx", "ab") as f:
        f.write(b"\x00")
    refused(bundle, base["img"], "model.onnx", "differs")


# --------------------------------------------------------------------------- in a fresh process
def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "imgclass", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


@pytest.mark.slow
def test_cli_process_refuses_code_execution_with_exit_2(copy, base, tmp_path):
    marker = tmp_path / "pwned"
    evil = copy()
    _skops_with(evil, lambda s: s["content"].__setitem__("extractor_state", _payloads(marker)["runstring"]))
    res = _cli("predict", evil, base["img"], cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "estimator.skops" in res.stderr and "Traceback" not in res.stderr
    assert not marker.exists()
