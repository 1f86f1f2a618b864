"""Loading ``estimator.skops`` as a confined parse: exact type names only, checked before anything is built.

skops itself trusts some names by default (numpy ufuncs as functions, type nodes of builtins, ...) and
imgclass used to trust whole package prefixes, which let a file call arbitrary functions of numpy,
scipy or scikit-learn. Here the archive's ``schema.json`` is read first and every node must be one of
the node kinds and exact ``module.Class`` names that the bundles imgclass writes contain (collected by
saving each classifier of ``models.classical.CLASSIFIERS`` for every task kind). Only then does skops
build the objects, and the scikit-learn structures whose C code trusts stored indices (decision trees,
KD/ball trees, libsvm models) are checked for consistent shapes and in-range indices.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .validate import refuse

#: the biggest estimator.skops accepted, unpacked (a 200-tree random forest on CIFAR-10 is ~130 MB); skops
#: holds an array's bytes and the array at once, so this bounds loading to about twice as much memory
MAX_UNPACKED_BYTES = 512 * 1024 * 1024
MAX_MEMBERS = 200_000
MAX_SCHEMA_BYTES = 256 * 1024 * 1024
MAX_SCHEMA_DEPTH = 400

_SKLEARN_OBJECTS = frozenset({
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.preprocessing._data.Normalizer",
    "sklearn.decomposition._pca.PCA",
    "sklearn.preprocessing._label.LabelBinarizer",
    "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.neighbors._classification.KNeighborsClassifier",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.svm._classes.LinearSVC",
    "sklearn.svm._classes.SVC",
    "sklearn.tree._classes.DecisionTreeClassifier",
    "sklearn.ensemble._forest.RandomForestClassifier",
    "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
    "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
    "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
    "sklearn.multiclass.OneVsRestClassifier",
})
_JSON_TYPES = frozenset(f"builtins.{t}" for t in ("str", "int", "float", "bool", "NoneType"))
_NUMPY_ARRAYS = frozenset(f"numpy.{t}" for t in ("ndarray", "float64", "float32", "int64", "int32", "bool", "uint8"))

#: skops node kind (``__loader__``) -> the exact ``module.Class`` names accepted for it
ALLOWED: dict[str, frozenset[str]] = {
    "DictNode": frozenset({"builtins.dict"}),
    "ListNode": frozenset({"builtins.list"}),
    "TupleNode": frozenset({"builtins.tuple"}),
    "JsonNode": _JSON_TYPES,
    "TypeNode": frozenset({"builtins.str"}),
    "NdArrayNode": _NUMPY_ARRAYS,
    "RandomStateNode": frozenset({"numpy.random.mtrand.RandomState"}),
    "TreeNode": frozenset({"sklearn.tree._tree.Tree"}),
    "ObjectNode": _SKLEARN_OBJECTS,
}
_ANY_ALLOWED = frozenset().union(*ALLOWED.values())
#: names skops reports as untrusted in imgclass's own bundles; passed to ``skops.io.load`` only after the audit
TRUSTED_TYPES = sorted(_SKLEARN_OBJECTS | {"sklearn.tree._tree.Tree"})


def audit(path: Path) -> None:
    """Refuse ``path`` unless every node of its schema is an allowed kind with an exact allowed type."""
    try:
        with zipfile.ZipFile(path) as z:
            infos = z.infolist()
            if len(infos) > MAX_MEMBERS or sum(i.file_size for i in infos) > MAX_UNPACKED_BYTES:
                raise refuse(path, f"unpacks to more than {MAX_UNPACKED_BYTES >> 20} MB or too many files")
            try:
                info = z.getinfo("schema.json")
            except KeyError:
                raise refuse(path, "not a skops file (no schema.json)") from None
            if info.file_size > MAX_SCHEMA_BYTES:
                raise refuse(path, "schema.json is too large")
            raw = z.read(info)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as exc:
        raise refuse(path, f"not a valid skops file ({exc})") from None
    schema = _parse_schema(raw, path)
    stack: list[tuple[Any, int]] = [(schema, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_SCHEMA_DEPTH:
            raise refuse(path, "schema nested too deeply")
        if isinstance(node, dict):
            if "__loader__" in node:
                _check_node(node, path)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)


def _parse_schema(raw: bytes, path: Path) -> dict:
    import json

    try:
        schema = json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise refuse(path, "schema nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise refuse(path, f"schema.json is not valid JSON ({exc})") from None
    if not isinstance(schema, dict) or "__loader__" not in schema:
        raise refuse(path, "schema.json is not a skops schema")
    return schema


def _check_node(node: dict, path: Path) -> None:
    loader, module, cls = node.get("__loader__"), node.get("__module__"), node.get("__class__")
    if not all(isinstance(x, str) for x in (loader, module, cls)):
        raise refuse(path, "a schema node lacks its loader, module or class")
    name = f"{module}.{cls}"
    allowed = _ANY_ALLOWED if loader == "CachedNode" else ALLOWED.get(loader)
    if allowed is None:
        raise refuse(path, f"holds a {loader} ({name}), which imgclass never writes; refusing to load it")
    if name not in allowed:
        raise refuse(path, f"holds the untrusted type {name} ({loader}); refusing to load it")
    if loader == "NdArrayNode" and node.get("type") != "numpy":
        raise refuse(path, "holds an object array, which imgclass never writes; refusing to load it")


def load_estimator(path: Path) -> Any:
    """The payload of an ``estimator.skops`` after ``audit``, with its index-bearing structures checked."""
    import skops.io as sio

    audit(path)
    try:
        untrusted = sio.get_untrusted_types(file=path)
    except Exception as exc:  # noqa: BLE001 - skops raises many types on damaged files
        raise refuse(path, f"not a valid skops file ({exc})") from None
    extra = sorted(set(untrusted) - set(TRUSTED_TYPES))
    if extra:
        raise refuse(path, f"holds untrusted types {extra[:5]}; refusing to load it")
    try:
        payload = sio.load(path, trusted=untrusted)
    except Exception as exc:  # noqa: BLE001
        raise refuse(path, f"cannot be loaded ({type(exc).__name__}: {exc})") from None
    if not isinstance(payload, dict) or "classifier" not in payload:
        raise refuse(path, "does not hold an imgclass classifier")
    if not isinstance(payload.get("extractor_state", {}), dict):
        raise refuse(path, "extractor_state must be a dict")
    try:
        check_structures(payload)
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise refuse(path, f"inconsistent model ({exc})") from None
    return payload


# ----------------------------------------------------------------------------- structures read by C code
def check_structures(obj: Any) -> None:
    """Walk the loaded objects and check every tree, KD/ball tree and libsvm model (ValueError if bad)."""
    from sklearn.neighbors._ball_tree import BallTree
    from sklearn.neighbors._kd_tree import KDTree
    from sklearn.svm._base import BaseLibSVM
    from sklearn.tree._tree import Tree

    seen: set[int] = set()
    stack = [obj]
    while stack:
        o = stack.pop()
        if id(o) in seen or isinstance(o, (str, bytes, int, float, np.ndarray, type(None))):
            continue
        seen.add(id(o))
        if isinstance(o, Tree):
            _check_tree(o)
            continue
        if isinstance(o, (KDTree, BallTree)):
            _check_binary_tree(o)
            continue
        if isinstance(o, BaseLibSVM):
            _check_libsvm(o)
        tree = getattr(o, "tree_", None)
        if isinstance(tree, Tree) and getattr(o, "n_features_in_", tree.n_features) != tree.n_features:
            raise ValueError("a decision tree disagrees with its estimator on the number of features")
        if isinstance(o, dict):
            stack.extend(o.values())
        elif isinstance(o, (list, tuple)):
            stack.extend(o)
        elif hasattr(o, "__dict__"):
            stack.extend(vars(o).values())


def _check_tree(t) -> None:
    n = int(t.node_count)
    if not 0 < n <= int(t.capacity):
        raise ValueError("tree node count exceeds its storage")
    left, right, feature = np.asarray(t.children_left), np.asarray(t.children_right), np.asarray(t.feature)
    idx = np.arange(n)
    leaf = left == -1
    if not np.array_equal(leaf, right == -1):
        raise ValueError("a tree node has one child")
    inner = ~leaf
    # children come after their parent: in range and no cycle
    if ((left[inner] <= idx[inner]) | (left[inner] >= n) | (right[inner] <= idx[inner]) | (right[inner] >= n)).any():
        raise ValueError("a tree child index is out of range")
    if ((feature[inner] < 0) | (feature[inner] >= int(t.n_features))).any():
        raise ValueError("a tree feature index is out of range")
    if np.asarray(t.value).shape != (n, int(t.n_outputs), int(t.max_n_classes)):
        raise ValueError("tree values have the wrong shape")


def _check_binary_tree(t) -> None:
    data, idx, nodes, bounds = (np.asarray(x) for x in t.__getstate__()[:4])
    n_samples = data.shape[0] if data.ndim == 2 else -1
    n_nodes = int(t.__getstate__()[6])
    if data.ndim != 2 or idx.shape != (n_samples,) or len(nodes) != n_nodes or n_nodes < 1:
        raise ValueError("a neighbours tree has inconsistent arrays")
    if not np.array_equal(np.sort(idx), np.arange(n_samples)):
        raise ValueError("a neighbours tree's index array is not a permutation")
    start, end, is_leaf = nodes["idx_start"], nodes["idx_end"], nodes["is_leaf"]
    if ((start < 0) | (end > n_samples) | (start > end)).any():
        raise ValueError("a neighbours tree node's range is out of bounds")
    no_children = 2 * np.arange(n_nodes) + 2 >= n_nodes
    if not is_leaf[no_children].all():
        raise ValueError("a neighbours tree node without children is not a leaf")
    if bounds.ndim != 3 or bounds.shape[1] != n_nodes or bounds.shape[2] != data.shape[1]:
        raise ValueError("a neighbours tree's node bounds have the wrong shape")


def _check_libsvm(m) -> None:
    if not hasattr(m, "support_vectors_"):
        return
    sv, n_support = np.asarray(m.support_vectors_), np.asarray(m._n_support)
    dual, support = np.asarray(m._dual_coef_), np.asarray(m.support_)
    n_class = len(n_support)
    if sv.ndim != 2 or n_support.min(initial=0) < 0 or int(n_support.sum()) != len(sv) or len(support) != len(sv):
        raise ValueError("an SVM's support vector counts disagree")
    if dual.shape != (max(n_class - 1, 1), len(sv)) or sv.shape[1] != getattr(m, "n_features_in_", sv.shape[1]):
        raise ValueError("an SVM's coefficients have the wrong shape")
    pairs = n_class * (n_class - 1) // 2
    if len(np.asarray(m._intercept_)) != max(pairs, 1):
        raise ValueError("an SVM's intercepts have the wrong length")
    for name in ("_probA", "_probB"):
        if len(np.asarray(getattr(m, name, []))) not in (0, max(pairs, 1)):
            raise ValueError(f"an SVM's {name} has the wrong length")


__all__ = ["ALLOWED", "TRUSTED_TYPES", "audit", "check_structures", "load_estimator"]
