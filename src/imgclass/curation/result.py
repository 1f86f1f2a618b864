"""``CurationResult``: what ``curate`` found, as issue lists, exclusions, a clean CSV and a written report.

Nothing here writes to the user's images: results are CSV files, a report and lists of items to keep
or exclude (``imgclass train --exclude excluded.csv`` then trains without them)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write_json, atomic_write_text
from ..data import ImageDataset
from ..errors import ConfigError
from . import report
from .duplicates import groups_from_pairs
from .quality import STAT_COLUMNS

QUALITY_TYPES = ("blurry", "dark", "bright", "low_contrast", "odd_size", "grayscale")
ISSUE_TYPES = (*QUALITY_TYPES, "exact_duplicates", "near_duplicates", "leakage", "conflicting_labels", "outliers",
               "label_issues")
#: what ``export_clean`` excludes unless told otherwise: the rest is reported only
DEFAULT_EXCLUDE = ("blurry", "duplicates", "leakage", "conflicting_labels", "outliers", "label_issues")
EXCLUDE_CHOICES = (*QUALITY_TYPES, "duplicates", "leakage", "conflicting_labels", "outliers", "label_issues")


@dataclass
class CurationResult:
    """Everything ``curate`` found. Row indices refer to ``dataset``."""

    dataset: ImageDataset
    stats: Any  # quality.ImageStats
    quality: dict[str, list[tuple[int, float, str]]]
    exact: list[list[int]]
    near: Any  # duplicates.NearDuplicates or None
    outlier_score: np.ndarray | None
    outlier_z: float
    label_issues: Any  # labels.LabelIssues or None
    oof: np.ndarray | None
    features: str
    timings: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    embeddings: np.ndarray | None = None  # features of the rows in ``embedded_rows``
    embedded_rows: np.ndarray | None = None

    # ------------------------------------------------------------------ views
    def _split_of(self) -> np.ndarray:
        out = np.full(len(self.dataset), "", dtype=object)
        for name, idx in (self.dataset.splits or {}).items():
            out[np.asarray(idx, dtype=np.int64)] = name
        return out

    def _label(self, i: int) -> str:
        ds = self.dataset
        if not ds.is_labelled:
            return ""
        t = ds.targets[i]
        if ds.targets.ndim == 2:
            return "|".join(ds.classes[j] for j in np.flatnonzero(t))
        return ds.classes[int(t)] if t >= 0 else ""

    def duplicate_groups(self) -> list[dict[str, Any]]:
        """Exact and near-duplicate groups: ``{rows, kind, splits, labels, leakage, conflicting}``."""
        n = len(self.dataset)
        split = self._split_of()
        out = []
        exact_of = {i: k for k, g in enumerate(self.exact) for i in g}
        pairs = self.near.pairs if self.near is not None else np.zeros((0, 2), np.int64)
        exact_pairs = np.array([(g[0], j) for g in self.exact for j in g[1:]], dtype=np.int64).reshape(-1, 2)
        for g in groups_from_pairs(n, np.vstack([pairs, exact_pairs])):
            kind = "exact" if len({exact_of.get(i, -1 - i) for i in g}) == 1 else "near"
            splits = sorted({split[i] for i in g if split[i]})
            labels = sorted({self._label(i) for i in g if self._label(i)})
            out.append({"rows": g, "kind": kind, "splits": splits, "labels": labels,
                        "leakage": len(splits) > 1, "conflicting": len(labels) > 1})
        return out

    def issues(self) -> dict[str, list[dict[str, Any]]]:
        """One list of rows per issue type, most severe first (what the CSV files hold)."""
        ds = self.dataset
        split = self._split_of()

        def item(i: int, **extra) -> dict[str, Any]:
            return {"path": ds.relpath(i), "split": split[i], "label": self._label(i), **extra}

        out: dict[str, list[dict[str, Any]]] = {}
        for name in QUALITY_TYPES:
            out[name] = [item(i, severity=round(s, 4), detail=d) for i, s, d in self.quality.get(name, [])]
        out["exact_duplicates"] = [item(j, duplicate_of=ds.relpath(g[0]), group=k, detail="identical bytes")
                                   for k, g in enumerate(self.exact) for j in g[1:]]
        near = []
        if self.near is not None:
            for (a, b), c, col, det in zip(self.near.pairs, self.near.cosine, self.near.colour, self.near.detail):
                near.append(item(int(a), duplicate=ds.relpath(int(b)), duplicate_split=split[b],
                                 duplicate_label=self._label(int(b)), severity=round(float(det), 4),
                                 detail=f"detail {det:.3f}, colour {col:.3f}, embedding cosine {c:.3f}"))
        out["near_duplicates"] = near
        groups = self.duplicate_groups()
        out["leakage"] = [item(i, group=k, detail=f"{g['kind']} duplicate across splits {'/'.join(g['splits'])}")
                          for k, g in enumerate(groups) if g["leakage"] for i in g["rows"]]
        out["conflicting_labels"] = [item(i, group=k, detail=f"{g['kind']} duplicates labelled {' / '.join(g['labels'])}")
                                     for k, g in enumerate(groups) if g["conflicting"] for i in g["rows"]]
        out["outliers"] = []
        if self.outlier_score is not None:
            s = self.outlier_score
            rows = np.flatnonzero(np.isfinite(s) & (s > self.outlier_z))
            rows = rows[np.argsort(-s[rows], kind="stable")]
            out["outliers"] = [item(int(i), severity=round(float(s[i]), 3),
                                    detail=f"outlier z-score {s[i]:.2f} (limit {self.outlier_z})") for i in rows]
        out["label_issues"] = []
        li = self.label_issues
        if li is not None:
            out["label_issues"] = [item(int(i), suggested=ds.classes[int(c)], suggested_probability=round(float(q), 4),
                                        self_confidence=round(float(s), 4), rank=r + 1, flagged=bool(f))
                                   for r, (i, s, c, q, f) in enumerate(zip(li.rows, li.self_confidence, li.suggested,
                                                                          li.suggested_probability, li.flagged))]
        return out

    def counts(self) -> dict[str, int]:
        return {k: len(v) for k, v in self.issues().items()}

    def imbalance(self) -> list[dict[str, Any]]:
        ds = self.dataset
        if not ds.is_labelled:
            return []
        counts = ds.class_counts()
        top = max(counts.values()) if counts else 0
        return [{"class": c, "images": k, "share": k / max(1, sum(counts.values())),
                 "ratio_to_largest": (top / k) if k else float("inf")} for c, k in counts.items()]

    # ------------------------------------------------------------------ actions
    def excluded(self, types: Sequence[str] = DEFAULT_EXCLUDE) -> dict[int, list[str]]:
        """``{row: [reasons]}`` for the issue ``types`` (see ``EXCLUDE_CHOICES``).

        Duplicates keep one image per group: a member of the val/test split when the group leaks
        across splits (the training copies go), else the largest, sharpest copy. Groups with
        conflicting labels are excluded whole (the right label is unknown).
        """
        bad = [t for t in types if t not in EXCLUDE_CHOICES]
        if bad:
            raise ConfigError(f"--exclude-types {','.join(bad)}: choose from {', '.join(EXCLUDE_CHOICES)}")
        out: dict[int, list[str]] = {}

        def add(i: int, reason: str) -> None:
            out.setdefault(int(i), []).append(reason)

        for t in QUALITY_TYPES:
            if t in types:
                for i, _, d in self.quality.get(t, []):
                    add(i, f"{t}: {d}")
        split = self._split_of()
        area = self.stats.column("width") * self.stats.column("height")
        sharp = self.stats.column("blur_score")
        for g in self.duplicate_groups():
            rows = g["rows"]
            if g["conflicting"] and "conflicting_labels" in types:
                for i in rows:
                    add(i, f"conflicting labels: {g['kind']} duplicates labelled {' / '.join(g['labels'])}")
                continue
            if g["leakage"] and "leakage" in types:
                for i in rows:
                    if split[i] == "train":
                        add(i, f"leakage: {g['kind']} duplicate of a {'/'.join(s for s in g['splits'] if s != 'train')} image")
                continue
            if "duplicates" in types:
                keep = max(rows, key=lambda i: (np.nan_to_num(area[i]), np.nan_to_num(sharp[i]), -i))
                for i in rows:
                    if i != keep:
                        add(i, f"{g['kind']} duplicate of {self.dataset.relpath(keep)}")
        issues = self.issues()
        if "outliers" in types:
            for r in issues["outliers"]:
                add(self._row(r["path"]), f"outlier: {r['detail']}")
        if "label_issues" in types:
            for r in issues["label_issues"]:
                if not r["flagged"]:
                    continue
                add(self._row(r["path"]), f"likely label error: labelled {r['label']}, suggested {r['suggested']} "
                                          f"(self-confidence {r['self_confidence']:.3f})")
        return out

    def _row(self, relpath: str) -> int:
        if not hasattr(self, "_rows"):
            self._rows = {self.dataset.relpath(i): i for i in range(len(self.dataset))}
        return self._rows[relpath]

    def export_clean(self, path: str | os.PathLike, types: Sequence[str] = DEFAULT_EXCLUDE,
                     excluded_path: str | os.PathLike | None = None) -> tuple[Path, Path]:
        """Write the kept items to ``path`` (a CSV ``imgclass train`` reads: path, label, split) and
        every excluded item with its reasons to ``excluded_path`` (default ``excluded.csv`` next to it)."""
        path = Path(path)
        excluded_path = Path(excluded_path) if excluded_path else path.with_name("excluded.csv")
        ex = self.excluded(types)
        split = self._split_of()
        ds = self.dataset
        keep_rows = [i for i in range(len(ds)) if i not in ex and self.stats.ok[i]]
        cols = ["path", "label"] + (["split"] if ds.splits else [])
        multilabel = ds.is_labelled and ds.targets.ndim == 2
        rows = []
        for i in keep_rows:
            r = {"path": _abs(ds, i), "label": self._label(i).replace("|", ";") if multilabel else self._label(i)}
            if ds.splits:
                r["split"] = split[i]
            rows.append(r)
        atomic_write_text(path, _csv(rows, cols if ds.is_labelled else ["path"] + cols[2:]))
        unread = {source: reason for source, reason in self.stats.errors}
        exrows = [{"path": _abs(ds, i), "label": self._label(i), "reason": "; ".join(rs)} for i, rs in sorted(ex.items())]
        exrows += [{"path": p, "label": "", "reason": f"unreadable: {r}"} for p, r in unread.items()]
        atomic_write_text(excluded_path, _csv(exrows, ["path", "label", "reason"]))
        return path, excluded_path

    def suggest_labels(self, path: str | os.PathLike) -> Path:
        """Write ``path,label,suggested,self_confidence,suggested_probability`` for likely label errors."""
        rows = [{"path": _abs(self.dataset, self._row(r["path"])), "label": r["label"], "suggested": r["suggested"],
                 "self_confidence": r["self_confidence"], "suggested_probability": r["suggested_probability"]}
                for r in self.issues()["label_issues"] if r["flagged"]]
        atomic_write_text(path, _csv(rows, ["path", "label", "suggested", "self_confidence", "suggested_probability"]))
        return Path(path)

    # ------------------------------------------------------------------ output
    def to_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset.name, "images": len(self.dataset), "features": self.features,
                "counts": self.counts(), "imbalance": self.imbalance(), "timings": self.timings,
                "notes": self.notes, "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
                "candidate_pairs_checked": self.near.candidates if self.near is not None else 0,
                "label_thresholds": (dict(zip(self.dataset.classes, map(float, self.label_issues.thresholds)))
                                     if self.label_issues is not None else None)}

    def write(self, out: str | os.PathLike) -> dict[str, Path]:
        """``OUT/<issue>.csv`` (most severe first), ``stats.csv``, ``imbalance.csv``, ``summary.json``
        and ``report.html``, each written atomically."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        files: dict[str, Path] = {}
        for name, rows in self.issues().items():
            cols = list(dict.fromkeys(k for r in rows for k in r)) or ["path", "split", "label", "detail"]
            atomic_write_text(out / f"{name}.csv", _csv(rows, cols))
            files[name] = out / f"{name}.csv"
        stats_rows = [{"path": self.dataset.relpath(i), **{c: (None if not self.stats.ok[i] else round(float(v), 5))
                                                          for c, v in zip(STAT_COLUMNS, self.stats.values[i])},
                       "sha256": self.stats.sha256[i] or "",
                       "outlier_z": ("" if self.outlier_score is None or not np.isfinite(self.outlier_score[i])
                                     else round(float(self.outlier_score[i]), 3))}
                      for i in range(len(self.dataset))]
        atomic_write_text(out / "stats.csv", _csv(stats_rows, ["path", *STAT_COLUMNS, "sha256", "outlier_z"]))
        files["stats"] = out / "stats.csv"
        if self.imbalance():
            atomic_write_text(out / "imbalance.csv", _csv(self.imbalance(), ["class", "images", "share", "ratio_to_largest"]))
            files["imbalance"] = out / "imbalance.csv"
        atomic_write_json(out / "summary.json", self.to_dict())
        files["summary"] = out / "summary.json"
        atomic_write_text(out / "report.html", self.to_html())
        files["report"] = out / "report.html"
        return files

    def figure(self):
        """Blur-score and outlier-score histograms with their limits, and images per class."""
        return report.figure(self)

    def to_html(self, per_type: int = 24, side: int = 96) -> str:
        """A self-contained HTML report: counts, plots, and thumbnails of the worst cases per issue type."""
        return report.to_html(self, per_type, side)


def _abs(ds: ImageDataset, i: int) -> str:
    src = ds.sources[i]
    return os.path.abspath(src) if isinstance(src, str) else ds.relpath(i)


def _csv(rows: list[dict[str, Any]], cols: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


__all__ = ["DEFAULT_EXCLUDE", "EXCLUDE_CHOICES", "ISSUE_TYPES", "QUALITY_TYPES", "CurationResult"]
