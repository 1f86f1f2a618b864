"""The class tree, node probabilities, path prediction with fallback, and hierarchical metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from imgclass.errors import ConfigError
from imgclass.tasks.hierarchy import (
    Tree,
    hierarchical_metrics,
    leaf_probabilities_from_local,
    level_names,
    node_probabilities,
    predict_paths,
)

FOLDER_LEAVES = ["animal/bird", "animal/cat", "animal/dog", "vehicle/car"]


def folder_taxonomy(leaves):
    """What nested class folders produce: every path prefix is a node."""
    tax = {}
    for c in leaves:
        parts = c.split("/")
        for k in range(1, len(parts) + 1):
            tax["/".join(parts[:k])] = "/".join(parts[:k - 1]) or None
    return tax


def folder_tree() -> Tree:
    return Tree(folder_taxonomy(FOLDER_LEAVES), FOLDER_LEAVES)


def mixed_tree() -> Tree:
    """A(A1(x, y), z) and B, a leaf root: leaves at depths 3, 3, 2 and 1."""
    tax = {"x": "A1", "y": "A1", "A1": "A", "z": "A", "A": None, "B": None, "unused": "A"}
    return Tree(tax, ["x", "y", "z", "B"])


def random_simplex(n, k, seed=0):
    return np.random.default_rng(seed).dirichlet(np.ones(k), size=n)


def test_tree_from_nested_folders():
    t = folder_tree()
    assert t.nodes == ["animal", "animal/bird", "animal/cat", "animal/dog", "vehicle", "vehicle/car"]
    assert t.children(None) == t.roots == ["animal", "vehicle"]
    assert t.children("animal") == ["animal/bird", "animal/cat", "animal/dog"]
    assert t.parent("animal/cat") == "animal" and t.parent("animal") is None
    assert t.path("animal/cat") == ["animal", "animal/cat"] and t.path(None) == []
    assert t.depth("animal") == 1 and t.depth("animal/cat") == 2 and t.max_depth == 2
    assert t.is_leaf("animal/cat") and not t.is_leaf("animal") and not t.is_leaf(None)
    assert t.internal == [None, "animal", "vehicle"]  # None: the virtual root joining two roots
    assert level_names(t, "animal/cat") == ["animal", "cat"] and level_names(t, None) == []


def test_tree_mixed_depth_and_ancestor_matrix():
    t = mixed_tree()
    assert t.nodes == ["A", "A1", "x", "y", "z", "B"]  # "unused" leads to no leaf: dropped
    assert [t.depth(n) for n in t.nodes] == [1, 2, 3, 3, 2, 1]
    assert t.max_depth == 3 and t.internal == [None, "A", "A1"]
    assert t.is_leaf("B") and t.children("B") == []
    assert t.ancestor_matrix.tolist() == [
        [1, 1, 1, 0, 0, 0],  # x
        [1, 1, 0, 1, 0, 0],  # y
        [1, 0, 0, 0, 1, 0],  # z
        [0, 0, 0, 0, 0, 1],  # B
    ]
    assert level_names(t, "x") == ["A", "A1", "x"]


def test_single_root_has_no_virtual_root_and_flat_taxonomy_is_all_roots():
    t = Tree({"animal": None, "cat": "animal", "dog": "animal"}, ["cat", "dog"])
    assert t.internal == ["animal"] and t.roots == ["animal"]
    flat = Tree({"a": None, "b": None, "c": None}, ["a", "b", "c"])
    assert flat.internal == [None] and flat.max_depth == 1 and flat.distance("a", "c") == 2


def test_distance_through_lca_and_virtual_root():
    t = mixed_tree()
    assert t.distance("x", "x") == 0
    assert t.distance("x", "y") == 2
    assert t.distance("x", "z") == 3
    assert t.distance("x", "A") == 2
    assert t.distance("x", "B") == 4  # x→A1→A→(virtual root)→B
    assert t.distance("z", "B") == 3
    assert folder_tree().distance("animal/cat", "vehicle/car") == 4


@pytest.mark.parametrize("tax,leaves,match", [
    ({"a": None}, ["a", "b"], "'b' is not in the taxonomy"),
    ({"a": "b", "b": "a"}, ["a"], "cycle"),
    ({"a": None, "a/b": "a"}, ["a", "a/b"], "also the parent"),
    ({"a": None}, [], "no leaf"),
])
def test_bad_taxonomy_raises_config_error(tax, leaves, match):
    with pytest.raises(ConfigError, match=match):
        Tree(tax, leaves)


def test_json_round_trip():
    for t in (folder_tree(), mixed_tree()):
        back = Tree.from_dict(json.loads(json.dumps(t.to_dict())))
        assert back == t
        assert back.nodes == t.nodes and back.leaves == t.leaves
        assert all(back.children(n) == t.children(n) for n in [None, *t.nodes])
        assert np.array_equal(back.ancestor_matrix, t.ancestor_matrix)
    assert "unused" not in mixed_tree().to_dict()["taxonomy"]


def test_node_probabilities_sum_to_one_per_level():
    for t in (folder_tree(), mixed_tree()):
        P = random_simplex(50, len(t.leaves))
        N = node_probabilities(t, P)
        assert N.shape == (50, len(t.nodes))
        depths = np.array([t.depth(n) for n in t.nodes])
        leaf_depths = np.array([t.depth(c) for c in t.leaves])
        for d in range(1, t.max_depth + 1):
            # nodes at depth d plus leaves that end above d cover every leaf exactly once
            total = N[:, depths == d].sum(axis=1) + P[:, leaf_depths < d].sum(axis=1)
            assert np.allclose(total, 1.0)
        for u in t.nodes:  # an internal node's probability is the sum of its children's
            if t.children(u):
                kids = [t.index[c] for c in t.children(u)]
                assert np.allclose(N[:, t.index[u]], N[:, kids].sum(axis=1))
        assert np.allclose(N[:, [t.index[c] for c in t.leaves]], P)


def test_local_conditionals_reproduce_the_flat_joint():
    for t in (folder_tree(), mixed_tree()):
        P = random_simplex(20, len(t.leaves), seed=1)
        N = node_probabilities(t, P)
        cond = {}
        for u in t.internal:
            kids = [t.index[c] for c in t.children(u)]
            denom = np.ones((20, 1)) if u is None else N[:, [t.index[u]]]
            cond[u] = N[:, kids] / denom
        assert np.allclose(leaf_probabilities_from_local(t, cond), P)


def test_local_single_child_may_be_omitted():
    t = Tree({"r": None, "m": "r", "a": "m", "b": "m"}, ["a", "b"])
    got = leaf_probabilities_from_local(t, {"m": np.array([[0.3, 0.7]])})
    assert np.allclose(got, [[0.3, 0.7]])
    with pytest.raises(ValueError, match="no entry"):
        leaf_probabilities_from_local(folder_tree(), {None: np.array([[0.5, 0.5]])})


def test_animal_cat_falls_back_to_animal():
    t = folder_tree()
    # bird 0.19, cat 0.48, dog 0.30, car 0.03 → animal 0.97 › cat 0.48
    N = node_probabilities(t, np.array([[0.19, 0.48, 0.30, 0.03]]))
    assert predict_paths(t, N) == ["animal/cat"]
    assert predict_paths(t, N, min_confidence=0.5) == ["animal"]
    assert predict_paths(t, N, min_confidence=0.4) == ["animal/cat"]
    assert predict_paths(t, N, min_confidence=0.98) == [None]  # below even the first level: abstain


def test_greedy_path_is_consistent_not_argmax_leaf():
    t = folder_tree()
    # the single most likely leaf is car (0.4) but animal (0.6) wins the first level
    N = node_probabilities(t, np.array([[0.2, 0.2, 0.2, 0.4], [0.1, 0.1, 0.1, 0.7]]))
    assert predict_paths(t, N) == ["animal/bird", "vehicle/car"]


def mixed_example():
    t = mixed_tree()
    P = np.array([[0.60, 0.20, 0.10, 0.10],   # truth x → pred x
                  [0.45, 0.15, 0.30, 0.10],   # truth y → pred x (A .9, A1 .6, x .45)
                  [0.10, 0.10, 0.20, 0.60],   # truth z → pred B
                  [0.30, 0.25, 0.05, 0.40]])  # truth B → pred x (A .6, A1 .55, x .3)
    return t, np.array([0, 1, 2, 3]), node_probabilities(t, P)


def test_hierarchical_metrics_hand_computed():
    t, y, N = mixed_example()
    m = hierarchical_metrics(t, y, N, grid=(0.0, 0.5, 0.7, 0.95))
    assert m["n"] == 4
    assert m["level_n"] == [4, 3, 2]
    assert m["level_accuracy"] == pytest.approx([2 / 4, 2 / 3, 1 / 2])
    assert m["leaf_accuracy"] == pytest.approx(0.25)
    # |pred ∩ true| = 3, 2, 0, 0; |pred| = 3, 3, 1, 3; |true| = 3, 3, 2, 1
    assert m["hierarchical_precision"] == pytest.approx(5 / 10)
    assert m["hierarchical_recall"] == pytest.approx(5 / 9)
    assert m["hierarchical_f1"] == pytest.approx(10 / 19)
    # distances 0, 2 (x–y), 3 (z–B), 4 (B–x)
    assert m["mean_distance"] == pytest.approx(9 / 4)
    assert m["mistake_severity"] == pytest.approx(3.0)
    fb = {e["min_confidence"]: e for e in m["fallback"]}
    assert list(fb) == [0.0, 0.5, 0.7, 0.95]
    assert fb[0.0] == pytest.approx({"min_confidence": 0.0, "coverage": 1.0, "answered": 1.0,
                                     "precision": 0.25, "mean_depth": 2.5})
    # 0.5: x (right), A1 (right), B (wrong), A1 (wrong)
    assert fb[0.5] == pytest.approx({"min_confidence": 0.5, "coverage": 0.5, "answered": 1.0,
                                     "precision": 0.5, "mean_depth": 2.0})
    # 0.7: A1 (right), A (right), abstain, abstain
    assert fb[0.7] == pytest.approx({"min_confidence": 0.7, "coverage": 0.0, "answered": 0.5,
                                     "precision": 1.0, "mean_depth": 1.5})
    assert fb[0.95]["answered"] == 0.0 and math.isnan(fb[0.95]["precision"]) and math.isnan(fb[0.95]["mean_depth"])
    assert "fallback_at" not in m
    json.dumps(m)


def test_hierarchical_metrics_min_confidence_entry_and_predictions_agree():
    t, y, N = mixed_example()
    m = hierarchical_metrics(t, y, N, min_confidence=0.7, grid=(0.0, 0.5))
    assert [e["min_confidence"] for e in m["fallback"]] == [0.0, 0.5, 0.7]
    assert m["fallback_at"]["answered"] == 0.5 and m["fallback_at"]["precision"] == 1.0
    assert predict_paths(t, N, 0.7) == ["A1", "A", None, None]
    assert predict_paths(t, N, 0.5) == ["x", "A1", "B", "A1"]
    with pytest.raises(ConfigError, match="--min-confidence"):
        hierarchical_metrics(t, y, N, min_confidence=1.5)


def test_hierarchical_metrics_ignores_unlabelled_and_perfect_case():
    t = folder_tree()
    P = np.eye(4)[[0, 1, 2, 3, 1]]
    m = hierarchical_metrics(t, np.array([0, 1, 2, 3, -1]), node_probabilities(t, P))
    assert m["n"] == 4 and m["leaf_accuracy"] == 1.0 and m["hierarchical_f1"] == 1.0
    assert m["level_accuracy"] == [1.0, 1.0] and m["mean_distance"] == 0.0
    assert math.isnan(m["mistake_severity"])
