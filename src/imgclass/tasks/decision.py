"""How probabilities become a prediction, per task kind, and how that rule is tuned on validation.

- **multiclass**: the most probable class.
- **binary**: the positive class when its probability reaches a threshold tuned on validation for an
  objective (``f1``, ``youden``, ``precision=P``, ``recall=R``); 0.5 without validation data.
- **multilabel**: every label whose probability reaches its own threshold (each tuned for that
  label's F1 on validation); the strongest label when none passes.
- **hierarchical**: a consistent path from a root, descending greedily to the most probable child;
  with ``min_confidence`` the path stops at the deepest node whose probability reaches it.

The ``Decision`` is plain JSON in the bundle, so every model kind, the CLI and (later) export and
serving use the same rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from ..errors import ConfigError


@dataclass
class Prediction:
    """One image's prediction: the decided ``label`` and its probability (multilabel: every decided label
    in ``labels``, strongest first), the top-k classes, and for hierarchical tasks the ``path`` of
    ``(node, probability)`` from the root to the emitted node."""

    label: str | None
    probability: float
    labels: list[tuple[str, float]] = field(default_factory=list)
    top: list[tuple[str, float]] = field(default_factory=list)
    path: list[tuple[str, float]] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"label": self.label, "probability": self.probability,
                             "labels": [{"label": lab, "probability": p} for lab, p in self.labels],
                             "top": [{"label": lab, "probability": p} for lab, p in self.top]}
        if self.path:
            d["nodes"] = [{"node": n, "probability": p} for n, p in self.path]
        if self.note:
            d["note"] = self.note
        return d

    def text(self) -> str:
        """One human line: ``cat 94.0%``, ``beach 91.0%, sea 64.0%`` or ``animal 97.0% › cat 48.0%``."""
        if self.path:
            s = " › ".join(f"{_short(n)} {p * 100:.1f}%" for n, p in self.path)
        elif len(self.labels) > 1:
            s = ", ".join(f"{lab} {p * 100:.1f}%" for lab, p in self.labels)
        else:
            s = f"{self.label} {self.probability * 100:.1f}%" if self.label is not None else "(no answer)"
        return s + (f"  [{self.note}]" if self.note else "")


def _short(node: str) -> str:
    return node.rsplit("/", 1)[-1]


@dataclass
class Decision:
    """The decision rule of a trained model (stored as ``decision`` in ``model.json``)."""

    task: str = "multiclass"
    classes: list[str] = field(default_factory=list)
    positive: str | None = None  # binary
    threshold: float | None = None  # binary: on the positive class's probability
    objective: str | None = None  # binary: what the threshold was tuned for
    thresholds: list[float] | None = None  # multilabel, one per class
    taxonomy: dict[str, str | None] | None = None  # hierarchical
    hierarchy: str = "flat"  # hierarchical: flat | local
    min_confidence: float | None = None  # hierarchical fallback
    tuned_on: dict[str, Any] | None = None  # what tuning measured on validation

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, **defaults) -> Decision:
        if d is not None and not isinstance(d, dict):
            raise ConfigError(f"a decision rule must be an object, not {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        return cls(**{**defaults, **{k: v for k, v in (d or {}).items() if k in known}})

    # ------------------------------------------------------------------ helpers
    @property
    def positive_index(self) -> int:
        if self.positive is None:
            return len(self.classes) - 1
        return self.classes.index(self.positive)

    def tree(self):
        from .hierarchy import Tree

        return Tree(self.taxonomy or {c: None for c in self.classes}, self.classes)

    def predicted_indices(self, P: np.ndarray) -> np.ndarray:
        """Class (leaf) indices for single-label tasks; a 0/1 matrix for multilabel."""
        if self.task == "multilabel":
            t = np.asarray(self.thresholds if self.thresholds is not None else [0.5] * P.shape[1])
            return (P >= t[None, :]).astype(np.uint8)
        if self.task == "binary" and self.threshold is not None and P.shape[1] == 2:
            pos = self.positive_index
            return np.where(P[:, pos] >= self.threshold, pos, 1 - pos)
        if self.task == "hierarchical" and self.taxonomy:
            from .hierarchy import node_probabilities, predict_paths

            tree = self.tree()
            leaves = predict_paths(tree, node_probabilities(tree, P))
            index = {c: i for i, c in enumerate(self.classes)}
            return np.asarray([index[n] for n in leaves], dtype=np.int64)
        return P.argmax(axis=1)

    def predict(self, P: np.ndarray, top_k: int = 1) -> list[Prediction | None]:
        """One ``Prediction`` per row of ``P`` (``None`` for NaN rows: unreadable images)."""
        out: list[Prediction | None] = [None] * len(P)
        ok = ~np.isnan(P).any(axis=1) if len(P) else np.zeros(0, bool)
        if not ok.any():
            return out
        Q = P[ok]
        k = max(1, min(top_k, len(self.classes)))
        order = np.argsort(-Q, axis=1, kind="stable")[:, :k]
        pred = self.predicted_indices(Q)
        paths = None
        if self.task == "hierarchical" and self.taxonomy:
            from .hierarchy import node_probabilities, predict_paths

            tree = self.tree()
            Pn = node_probabilities(tree, Q)
            emitted = predict_paths(tree, Pn, self.min_confidence)
            paths = [[(n, float(Pn[i, tree.index[n]])) for n in tree.path(e)] if e is not None else []
                     for i, e in enumerate(emitted)]
        rows = np.flatnonzero(ok)
        for i, r in enumerate(rows):
            top = [(self.classes[j], float(Q[i, j])) for j in order[i]]
            if self.task == "multilabel":
                on = np.flatnonzero(pred[i])
                note = ""
                if not len(on):
                    on, note = [int(Q[i].argmax())], "no label reached its threshold; strongest shown"
                labels = [(self.classes[j], float(Q[i, j])) for j in sorted(on, key=lambda j: -Q[i, j])]
                pr = Prediction(labels[0][0], labels[0][1], labels, top, note=note)
            elif paths is not None:
                path = paths[i]
                note = ""
                if not path:
                    note = f"no node reached min confidence {self.min_confidence}"
                elif not tree.is_leaf(path[-1][0]):
                    note = f"fell back to a coarser label (min confidence {self.min_confidence})"
                label, prob = (path[-1] if path else (None, 0.0))
                pr = Prediction(label, prob, [(label, prob)] if label else [], top, path, note)
            else:
                j = int(pred[i])
                note = ""
                if self.task == "binary" and self.threshold is not None and j != int(Q[i].argmax()):
                    pos = self.positive_index
                    note = (f"{self.classes[pos]} {'reaches' if j == pos else 'is below'} its threshold "
                            f"{self.threshold:.3f}")
                pr = Prediction(self.classes[j], float(Q[i, j]), [(self.classes[j], float(Q[i, j]))], top, note=note)
            out[r] = pr
        return out


def tune_decision(task: str, classes: list[str], y_val: np.ndarray | None, P_val: np.ndarray | None, *,
                  taxonomy: dict | None = None, positive: str | None = None, threshold_for: str | None = None,
                  min_confidence: float | None = None, hierarchy: str = "flat", log=lambda m: None) -> Decision:
    """The decision rule for a trained model, tuned on validation probabilities when there are some."""
    from .thresholds import parse_objective, tune_binary_threshold, tune_multilabel_thresholds

    if positive is not None and task != "binary":
        raise ConfigError(f"--positive {positive!r} applies to binary tasks only (this task is {task})")
    if threshold_for is not None and task != "binary":
        raise ConfigError(f"--threshold-for applies to binary tasks only (this task is {task}); multi-label "
                          "thresholds are tuned per class automatically")
    if min_confidence is not None and task != "hierarchical":
        raise ConfigError(f"--min-confidence applies to hierarchical tasks only (this task is {task})")
    if min_confidence is not None and not 0 <= min_confidence <= 1:
        raise ConfigError(f"--min-confidence {min_confidence}: use a probability between 0 and 1")
    d = Decision(task=task, classes=list(classes), taxonomy=taxonomy if task == "hierarchical" else None,
                 hierarchy=hierarchy, min_confidence=min_confidence)
    have_val = y_val is not None and P_val is not None and len(P_val) > 0
    if have_val:
        ok = ~np.isnan(P_val).any(axis=1)
        y_val, P_val = y_val[ok], P_val[ok]
        have_val = len(P_val) > 0
    if task == "binary":
        if positive is not None and positive not in classes:
            raise ConfigError(f"--positive {positive!r}: not a class; choose one of {', '.join(classes)}")
        d.positive = positive if positive is not None else classes[-1]
        objective = threshold_for or "f1"
        parse_objective(objective)
        d.objective = objective
        if have_val and len(classes) == 2:
            lab = y_val >= 0
            pos = d.positive_index
            res = tune_binary_threshold((y_val[lab] == pos).astype(int), P_val[lab, pos], objective)
            d.threshold = float(res["threshold"])
            d.tuned_on = {k: v for k, v in res.items() if k != "objective"}
            if not res.get("reached", True):
                log(f"threshold for {objective} not reached on validation ({res.get('note') or 'best: precision '}"
                    f"{res.get('precision', float('nan')):.3f}); using {d.threshold:.4f}")
        else:
            d.threshold = 0.5
    elif task == "multilabel":
        if have_val:
            d.thresholds = [float(t) for t in tune_multilabel_thresholds(y_val, P_val)]
        else:
            d.thresholds = [0.5] * len(classes)
    return d
