"""Hierarchical classification: the class tree, node probabilities, consistent path prediction with a
confidence fallback ("animal 97% › cat 48%" → "animal" at 50%), and hierarchical metrics.

A taxonomy is ``{node: parent or None}``; ``leaves`` are the classes, in the column order of leaf
probability matrices. Several roots are joined by a *virtual root*, represented everywhere by ``None``
(``children(None)`` are the roots, ``conditionals[None]`` is the classifier choosing among them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError


class Tree:
    """The part of a taxonomy that lies on a path from a root to one of ``leaves``.

    ``nodes`` is in depth-first pre-order; siblings (and roots) are ordered by their first descendant leaf in
    ``leaves``, so the order depends only on ``taxonomy`` and ``leaves``. Nodes that are not on a path to a
    leaf are dropped; a parent named in the taxonomy but absent as a key is taken as a root.
    """

    def __init__(self, taxonomy: Mapping[str, str | None], leaves: Sequence[str]):
        self.leaves: list[str] = [str(c) for c in leaves]
        if not self.leaves:
            raise ConfigError("taxonomy: there are no leaf classes; give at least one labelled class")
        if len(set(self.leaves)) != len(self.leaves):
            dup = sorted({c for c in self.leaves if self.leaves.count(c) > 1})
            raise ConfigError(f"taxonomy: leaf classes {dup[:5]} are repeated; give each class once")
        self._parent: dict[str, str | None] = {}
        paths: list[list[str]] = []
        for leaf in self.leaves:
            if leaf not in taxonomy:
                raise ConfigError(f"taxonomy: class {leaf!r} is not in the taxonomy; add it as a leaf")
            chain, node = [], leaf
            while node is not None:
                if node in chain:
                    raise ConfigError(f"taxonomy: there is a cycle through {node!r}; make every path end at a root")
                chain.append(node)
                parent = taxonomy.get(node)
                parent = None if parent is None or parent == "" else str(parent)
                self._parent[node] = parent
                node = parent
            paths.append(chain[::-1])
        self._children: dict[str | None, list[str]] = {}
        for path in paths:
            for node in path:
                sib = self._children.setdefault(self._parent[node], [])
                if node not in sib:
                    sib.append(node)
        for leaf in self.leaves:
            if leaf in self._children:
                raise ConfigError(f"taxonomy: class {leaf!r} is also the parent of {self._children[leaf][0]!r}; "
                                  "move its images into a sub-class (e.g. 'other') so that classes are leaves")
        self.roots: list[str] = list(self._children[None])
        self.nodes: list[str] = []
        stack = self.roots[::-1]
        while stack:
            node = stack.pop()
            self.nodes.append(node)
            stack.extend(self._children.get(node, [])[::-1])
        self.index: dict[str, int] = {n: i for i, n in enumerate(self.nodes)}
        self.leaf_index: dict[str, int] = {c: i for i, c in enumerate(self.leaves)}
        self._leaf_set = set(self.leaves)
        self._path = {n: self._walk(n) for n in self.nodes}
        self.node_depths = np.array([len(self._path[n]) for n in self.nodes], dtype=np.int64)
        self.max_depth = int(self.node_depths.max())
        #: ``(n_leaves, max_depth)`` node indices along each leaf's path, ``-1`` past the leaf
        self.leaf_paths = np.full((len(self.leaves), self.max_depth), -1, dtype=np.int64)
        self.ancestor_matrix = np.zeros((len(self.leaves), len(self.nodes)), dtype=np.uint8)
        for i, leaf in enumerate(self.leaves):
            idx = [self.index[n] for n in self._path[leaf]]
            self.leaf_paths[i, :len(idx)] = idx
            self.ancestor_matrix[i, idx] = 1
        #: nodes with children, preceded by ``None`` (the virtual root) when there are several roots
        self.internal: list[str | None] = [None] if len(self.roots) > 1 else []
        self.internal += [n for n in self.nodes if self._children.get(n)]
        # child node indices per node index; -1 is the virtual root
        self._child_idx: dict[int, np.ndarray] = {
            (-1 if u is None else self.index[u]): np.array([self.index[c] for c in kids], dtype=np.int64)
            for u, kids in self._children.items()}

    def _walk(self, node: str) -> list[str]:
        out: list[str] = []
        while node is not None:
            out.append(node)
            node = self._parent[node]
        return out[::-1]

    def parent(self, node: str) -> str | None:
        """The parent, or ``None`` for a root."""
        return self._parent[node]

    def children(self, node: str | None) -> list[str]:
        """Children in column order for local classifiers; ``children(None)`` are the roots."""
        if node is not None and node not in self.index:
            raise KeyError(node)
        return list(self._children.get(node, []))

    def path(self, node: str | None) -> list[str]:
        """Nodes from the root down to ``node`` inclusive (``[]`` for the virtual root)."""
        return [] if node is None else list(self._path[node])

    def depth(self, node: str | None) -> int:
        """Roots have depth 1; the virtual root ``None`` has depth 0."""
        return 0 if node is None else len(self._path[node])

    def is_leaf(self, node: str | None) -> bool:
        return node in self._leaf_set

    def distance(self, a: str | None, b: str | None) -> int:
        """Edges from ``a`` to ``b`` through their lowest common ancestor (the virtual root joins roots)."""
        pa, pb = self.path(a), self.path(b)
        common = 0
        for x, y in zip(pa, pb):
            if x != y:
                break
            common += 1
        return len(pa) + len(pb) - 2 * common

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{"taxonomy": {node: parent}, "leaves": [...]}``."""
        return {"taxonomy": {n: self._parent[n] for n in self.nodes}, "leaves": list(self.leaves)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Tree:
        return cls(d["taxonomy"], d["leaves"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tree) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"Tree({len(self.leaves)} leaves, {len(self.nodes)} nodes, depth {self.max_depth})"


def level_names(tree: Tree, node: str | None) -> list[str]:
    """Short names along the path to ``node`` for display: ``"animal/cat"`` under ``"animal"`` shows as
    ``"cat"``; other names are kept. ``[]`` for ``None`` (abstained)."""
    out = []
    for n in tree.path(node):
        parent = tree.parent(n)
        out.append(n[len(parent) + 1:] if parent is not None and n.startswith(parent + "/") else n)
    return out


def node_probabilities(tree: Tree, P_leaf: np.ndarray) -> np.ndarray:
    """``(n, n_nodes)``: each node's probability is the sum of its leaves' (flat strategy)."""
    P_leaf = np.asarray(P_leaf, dtype=np.float64)
    if P_leaf.ndim != 2 or P_leaf.shape[1] != len(tree.leaves):
        raise ValueError(f"P_leaf has shape {P_leaf.shape}; expected (n, {len(tree.leaves)})")
    return P_leaf @ tree.ancestor_matrix


def leaf_probabilities_from_local(tree: Tree, conditionals: Mapping[str | None, np.ndarray]) -> np.ndarray:
    """``(n, n_leaves)`` leaf probabilities from per-parent classifiers (local strategy).

    ``conditionals[node]`` is ``(n, len(tree.children(node)))`` of P(child | node), columns in
    ``tree.children(node)`` order; ``None`` keys the virtual root. A node with a single child (or a single root)
    may be omitted: its child has conditional probability 1. P(leaf) is the product along its path.
    """
    mats = {k: np.asarray(v, dtype=np.float64) for k, v in conditionals.items()}
    if not mats:
        raise ValueError("conditionals is empty; give P(child | node) for every node with several children")
    n = next(iter(mats.values())).shape[0]
    out = np.ones((n, len(tree.leaves)), dtype=np.float64)
    for u in [None, *tree.nodes]:
        kids = tree.children(u)
        if not kids:
            continue
        if u not in mats:
            if len(kids) > 1:
                raise ValueError(f"conditionals has no entry for {u!r}, which has {len(kids)} children")
            continue
        M = mats[u]
        if M.shape != (n, len(kids)):
            raise ValueError(f"conditionals[{u!r}] has shape {M.shape}; expected ({n}, {len(kids)})")
        for j, c in enumerate(kids):
            below = tree.ancestor_matrix[:, tree.index[c]].astype(bool)  # leaves under child c
            out[:, below] *= M[:, j:j + 1]
    return out


def _greedy_paths(tree: Tree, P_nodes: np.ndarray) -> np.ndarray:
    """``(n, max_depth)`` node indices of the greedy top-down path (highest child each step), ``-1`` padded."""
    P_nodes = np.asarray(P_nodes, dtype=np.float64)
    if P_nodes.ndim != 2 or P_nodes.shape[1] != len(tree.nodes):
        raise ValueError(f"P_nodes has shape {P_nodes.shape}; expected (n, {len(tree.nodes)})")
    n = P_nodes.shape[0]
    out = np.full((n, tree.max_depth), -1, dtype=np.int64)
    cur = np.full(n, -1, dtype=np.int64)
    for d in range(tree.max_depth):
        for u in np.unique(cur):
            kids = tree._child_idx.get(int(u))
            if kids is None or not len(kids):
                continue  # reached a leaf
            rows = np.flatnonzero(cur == u)
            choice = kids[np.argmax(P_nodes[np.ix_(rows, kids)], axis=1)]
            out[rows, d] = choice
            cur[rows] = choice
    return out


def _emitted_depth(P_nodes: np.ndarray, paths: np.ndarray, p: float | None) -> np.ndarray:
    """Depth of the emitted node per row: the path prefix whose probabilities are all ``>= p``."""
    valid = paths >= 0
    if p is None:
        return valid.sum(axis=1)
    rows = np.arange(len(paths))[:, None]
    probs = np.where(valid, np.asarray(P_nodes, dtype=np.float64)[rows, np.maximum(paths, 0)], -np.inf)
    return np.cumprod(probs >= p, axis=1).sum(axis=1)


def _check_confidence(p: float | None) -> float | None:
    if p is None:
        return None
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ConfigError(f"--min-confidence {p}: use a probability between 0 and 1")
    return p


def predict_paths(tree: Tree, P_nodes: np.ndarray, min_confidence: float | None = None) -> list[str | None]:
    """Per row, the node emitted by a greedy top-down descent (always a consistent path).

    Without ``min_confidence`` that is a leaf. With it, the descent stops at the deepest node whose probability
    (and that of every node above it) is ``>= min_confidence``; ``None`` means even the first level is below
    it (abstain).
    """
    p = _check_confidence(min_confidence)
    paths = _greedy_paths(tree, P_nodes)
    k = _emitted_depth(P_nodes, paths, p)
    return [tree.nodes[paths[i, k[i] - 1]] if k[i] > 0 else None for i in range(len(paths))]


def _ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def hierarchical_metrics(tree: Tree, y_leaf: np.ndarray, P_nodes: np.ndarray,
                         min_confidence: float | None = None,
                         grid: Sequence[float] = (0.0, 0.3, 0.5, 0.7, 0.9)) -> dict[str, Any]:
    """Per-level and leaf accuracy, hierarchical P/R/F1, mistake severity and the fallback trade-off.

    ``y_leaf`` are leaf indices (rows with ``-1`` are ignored). Level, leaf and set metrics score the full greedy
    path (no fallback). ``fallback`` has one entry per confidence in ``grid`` (plus ``min_confidence``):
    ``coverage`` = share of rows given a leaf, ``answered`` = share given any node, ``precision`` = share of
    answered rows whose node is on the truth's path, ``mean_depth`` = mean depth of those nodes (answered rows).
    """
    p_main = _check_confidence(min_confidence)
    y = np.asarray(y_leaf, dtype=np.int64).ravel()
    P_nodes = np.asarray(P_nodes, dtype=np.float64)
    if len(y) != len(P_nodes):
        raise ValueError(f"y_leaf has {len(y)} rows but P_nodes has {len(P_nodes)}")
    keep = y >= 0
    y, P_nodes = y[keep], P_nodes[keep]
    if len(y) and y.max() >= len(tree.leaves):
        raise ValueError(f"y_leaf holds index {y.max()} but the tree has {len(tree.leaves)} leaves")
    n = len(y)
    pred = _greedy_paths(tree, P_nodes)
    true = tree.leaf_paths[y]
    pred_len = (pred >= 0).sum(axis=1)
    true_len = (true >= 0).sum(axis=1)
    pred_leaf = pred[np.arange(n), pred_len - 1] if n else np.zeros(0, dtype=np.int64)
    true_leaf = true[np.arange(n), true_len - 1] if n else np.zeros(0, dtype=np.int64)

    level_acc, level_n = [], []
    for d in range(tree.max_depth):
        has = true[:, d] >= 0
        level_n.append(int(has.sum()))
        level_acc.append(_ratio(np.sum(pred[has, d] == true[has, d]), has.sum()))

    A = tree.ancestor_matrix.astype(np.int64)
    leaf_of = np.full(len(tree.nodes), -1, dtype=np.int64)
    leaf_of[[tree.index[c] for c in tree.leaves]] = np.arange(len(tree.leaves))
    inter = (A[y] * A[leaf_of[pred_leaf]]).sum(axis=1) if n else np.zeros(0, dtype=np.int64)
    h_p = _ratio(inter.sum(), pred_len.sum())
    h_r = _ratio(inter.sum(), true_len.sum())
    dist = true_len + pred_len - 2 * inter
    wrong = pred_leaf != true_leaf

    grid_ps = sorted({float(g) for g in grid} | ({p_main} if p_main is not None else set()))
    fallback = []
    for p in grid_ps:
        k = _emitted_depth(P_nodes, pred, p)
        answered = k > 0
        rows = np.flatnonzero(answered)
        col = k[rows] - 1
        correct = pred[rows, col] == true[rows, col]  # true is -1 beyond its depth, never equal
        fallback.append({"min_confidence": p, "coverage": _ratio(np.sum(k == pred_len), n),
                         "answered": _ratio(answered.sum(), n), "precision": _ratio(correct.sum(), len(rows)),
                         "mean_depth": _ratio(k[rows].sum(), len(rows))})

    out: dict[str, Any] = {
        "n": int(n),
        "level_accuracy": level_acc,
        "level_n": level_n,
        "leaf_accuracy": _ratio(np.sum(~wrong), n),
        "hierarchical_precision": h_p,
        "hierarchical_recall": h_r,
        "hierarchical_f1": 2 * h_p * h_r / (h_p + h_r) if h_p + h_r > 0 else (0.0 if n else float("nan")),
        "mistake_severity": _ratio(dist[wrong].sum(), wrong.sum()),
        "mean_distance": _ratio(dist.sum(), n),
        "fallback": fallback,
    }
    if p_main is not None:
        out["min_confidence"] = p_main
        out["fallback_at"] = next(e for e in fallback if e["min_confidence"] == p_main)
    return out


def sibling_groups(tree: Tree) -> list[np.ndarray]:
    """Node indices of each set of siblings (children of one parent, or the roots): the softmax groups of
    a network that scores every node (the ``local`` strategy for deep models)."""
    return [tree._child_idx[k] for k in sorted(tree._child_idx)]


def leaf_probabilities_from_node_logits(tree: Tree, logits: np.ndarray) -> np.ndarray:
    """Leaf probabilities from one logit per node: a softmax within each sibling group gives P(node |
    parent), and a leaf's probability is the product along its path (computed in log space)."""
    logits = np.asarray(logits, dtype=np.float64)
    log_cond = np.zeros_like(logits)
    for idx in sibling_groups(tree):
        z = logits[:, idx]
        z = z - z.max(axis=1, keepdims=True)
        log_cond[:, idx] = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return np.exp(log_cond @ tree.ancestor_matrix.T.astype(np.float64))
