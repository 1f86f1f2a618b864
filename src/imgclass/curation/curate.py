"""``curate``: find blurry, badly exposed, duplicate, leaked, outlier and mislabelled images.

Nothing here writes to the user's images: results are CSV files, a report and lists of items to keep
or exclude (``imgclass train --exclude excluded.csv`` then trains without them).

>>> res = curate("photos/", out="curation/")                        # doctest: +SKIP
>>> res.counts()                                                     # doctest: +SKIP
{'blurry': 12, 'exact_duplicates': 3, 'near_duplicates': 40, 'label_issues': 95, ...}
>>> res.export_clean("clean.csv")  # also writes excluded.csv next to it # doctest: +SKIP
"""

from __future__ import annotations

import base64
import csv
import html
import io
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write_json, atomic_write_text, figure_png
from ..data import ImageDataset, load_dataset
from ..data.decode import DEFAULT_MAX_PIXELS
from ..errors import ConfigError, DataError
from .duplicates import DuplicateLimits, exact_groups, groups_from_pairs, near_duplicates
from .labels import confident_learning, neighbour_vote, out_of_fold_probabilities
from .outliers import (
    DEFAULT_Z,
    LAYER_CHANNELS,
    METHODS,
    layer_outlier_scores,
    layer_statistics,
    outlier_scores,
    refine_outlier_scores,
)
from .quality import STAT_COLUMNS, QualityLimits, image_stats, quality_issues

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
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = 2 + int(self.dataset.is_labelled)
        fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.2))
        ok = self.stats.ok
        blur = self.stats.column("blur_score")[ok]
        axes[0].hist(blur, bins=60, color="#4477aa")
        flagged = [self.stats.column("blur_score")[i] for i, _, _ in self.quality.get("blurry", [])]
        if flagged:
            axes[0].axvline(max(flagged), color="#cc3311", ls="--", label=f"blurry ({len(flagged)})")
            axes[0].legend(fontsize=8)
        axes[0].set(title="blur score (log Laplacian/gradient energy)", xlabel="lower = blurrier", ylabel="images")
        if self.outlier_score is not None:
            s = self.outlier_score[np.isfinite(self.outlier_score)]
            axes[1].hist(s, bins=60, color="#228833")
            axes[1].axvline(self.outlier_z, color="#cc3311", ls="--", label=f"limit {self.outlier_z}")
            axes[1].legend(fontsize=8)
        axes[1].set(title="outlier z-score", xlabel="higher = more unusual")
        if self.dataset.is_labelled:
            imb = self.imbalance()
            axes[2].barh([r["class"] for r in imb], [r["images"] for r in imb], color="#aa3377")
            axes[2].set(title="images per class")
            axes[2].tick_params(axis="y", labelsize=7)
        for ax in axes:
            ax.title.set_fontsize(9)
        fig.tight_layout()
        return fig

    def to_html(self, per_type: int = 24, side: int = 96) -> str:
        """A self-contained HTML report: counts, plots, and thumbnails of the worst cases per issue type."""
        e = html.escape
        ds = self.dataset
        issues = self.issues()
        thumbs: dict[int, str] = {}

        def thumb(i: int) -> str:
            if i not in thumbs:
                thumbs[i] = _thumb_b64(ds.sources[i], side, self.stats.thumbs[i])
            return f"<img class='thumb' alt='{e(ds.relpath(i))}' src='data:image/jpeg;base64,{thumbs[i]}'>"

        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Curation: {e(ds.name)}</title>",
                 "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
                 "th{background:#f3f3f3}figure{display:inline-block;margin:4px;vertical-align:top;font-size:11px;"
                 f"width:{side + 12}px;word-break:break-all}}figure.pair{{width:{2 * side + 16}px}}img{{max-width:100%}}"
                 "</style></head><body>",
                 f"<h1>Curation report: {e(ds.name)}</h1>",
                 f"<p>{len(ds)} images · features <b>{e(self.features)}</b> · {len(self.skipped)} unreadable · "
                 "no file was modified</p>", "<h2>Summary</h2><table><tr><th>issue</th><th>items</th></tr>"]
        parts += [f"<tr><td><a href='#{k}'>{k.replace('_', ' ')}</a></td><td>{len(v)}</td></tr>" for k, v in issues.items()]
        parts.append("</table>")
        parts += [f"<p>{e(n)}</p>" for n in self.notes]
        png = base64.b64encode(figure_png(self.figure(), dpi=90)).decode()
        parts.append(f"<img alt='distributions' src='data:image/png;base64,{png}'>")
        for k, rows in issues.items():
            parts.append(f"<h2 id='{k}'>{k.replace('_', ' ').capitalize()} ({len(rows)})</h2>")
            if not rows:
                parts.append("<p>none found</p>")
                continue
            cells = []
            for r in rows[:per_type]:
                i = self._row(r["path"])
                cap = f"{e(r['path'])}<br>{e(r.get('label', ''))}"
                if k == "near_duplicates":
                    j = self._row(r["duplicate"])
                    cells.append(f"<figure class='pair'>{thumb(i)}{thumb(j)}<figcaption>{cap} ≈ {e(r['duplicate'])}"
                                 f"<br>{e(r['detail'])}</figcaption></figure>")
                    continue
                if k == "label_issues":
                    cap += f" → <b>{e(r['suggested'])}</b>?<br>self-confidence {r['self_confidence']:.3f}"
                elif "detail" in r:
                    cap += f"<br>{e(str(r['detail']))}"
                cells.append(f"<figure>{thumb(i)}<figcaption>{cap}</figcaption></figure>")
            parts.append("<div>" + "".join(cells) + "</div>")
            if len(rows) > per_type:
                parts.append(f"<p>… {len(rows) - per_type} more in {k}.csv</p>")
        imb = self.imbalance()
        if imb:
            parts.append("<h2>Class balance</h2><table><tr><th>class</th><th>images</th><th>share</th>"
                         "<th>largest / this</th></tr>")
            parts += [f"<tr><td>{e(r['class'])}</td><td>{r['images']}</td><td>{r['share']:.3f}</td>"
                      f"<td>{r['ratio_to_largest']:.1f}</td></tr>" for r in imb]
            parts.append("</table>")
        parts.append(f"<h2>Unreadable files ({len(self.skipped)})</h2>")
        parts += ["<table>"] + [f"<tr><td>{e(p)}</td><td>{e(r)}</td></tr>" for p, r in self.skipped] + ["</table>"]
        parts.append("</body></html>")
        return "\n".join(parts)


def _abs(ds: ImageDataset, i: int) -> str:
    src = ds.sources[i]
    return os.path.abspath(src) if isinstance(src, str) else ds.relpath(i)


def _csv(rows: list[dict[str, Any]], cols: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _thumb_b64(src, side: int, fallback: np.ndarray) -> str:
    from PIL import Image

    from ..data.decode import load_image
    from ..errors import ImageLoadError

    try:
        im = load_image(src, draft_size=side)
        im.thumbnail((side, side))
        if max(im.size) < side:  # small images: enlarge so they can be seen
            f = side / max(im.size)
            im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.NEAREST)
    except ImageLoadError:
        im = Image.fromarray(fallback)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


def read_oof(path: str | os.PathLike, ds: ImageDataset) -> np.ndarray:
    """Out-of-fold probabilities from ``imgclass cv``'s ``oof.csv``, aligned to ``ds`` (NaN rows where
    the file has no entry)."""
    p = Path(path)
    try:
        rows = list(csv.DictReader(p.read_text(encoding="utf-8").splitlines()))
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc.strerror or exc}); give the oof.csv written by imgclass cv") from None
    if not rows or "path" not in rows[0]:
        raise DataError(f"{p}: not an oof.csv from imgclass cv (needs a path column and one column per class)")
    missing = [c for c in ds.classes if c not in rows[0]]
    if missing:
        raise DataError(f"{p}: has no column for class {missing[0]!r}; was it written for this dataset?")
    where = {ds.relpath(i): i for i in range(len(ds))}
    where.update({os.path.abspath(s): i for i, s in enumerate(ds.sources) if isinstance(s, str)})
    P = np.full((len(ds), len(ds.classes)), np.nan)
    hit = 0
    for r in rows:
        i = where.get(r["path"], where.get(os.path.abspath(r["path"])))
        if i is not None:
            P[i] = [float(r[c]) for c in ds.classes]
            hit += 1
    if hit == 0:
        raise DataError(f"{p}: none of its paths are in {ds.name}; run imgclass cv on the same data")
    return P


def _as_dataset(data) -> ImageDataset:
    return data if isinstance(data, ImageDataset) else load_dataset(data)


def curate(data: ImageDataset | str | os.PathLike, *, model: str = "lite0+logreg", oof: str | os.PathLike | None = None,
           out: str | os.PathLike | None = None, folds: int = 5, seed: int = 0,
           outlier_method: str = "auto", outlier_z: float | None = None,
           quality: QualityLimits | None = None, duplicates: DuplicateLimits | None = None,
           checks: Sequence[str] = ("quality", "duplicates", "outliers", "labels"),
           n_jobs: int | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
           log: Callable[[str], Any] = lambda m: None) -> CurationResult:
    """Curate ``data`` (a folder, CSV/JSONL file or dataset) and return a ``CurationResult``.

    Args:
        model: a ``FEATURES+CLASSIFIER`` method spec. Its features are the embeddings used for
            near-duplicates and outliers; its classifier gives the out-of-fold probabilities for
            label issues (``folds``-fold, on those features). Deep fine-tuned models: run
            ``imgclass cv`` and pass its ``oof.csv`` as ``oof``.
        oof: out-of-fold probabilities from ``imgclass cv`` (used instead of fitting ``model``'s classifier).
        outlier_method: ``auto`` (``layers`` when ``model``'s features are an EfficientNet-Lite
            backbone such as lite0, else ``lof``), ``layers`` (multi-layer statistics of that backbone
            plus an object-centred layout check: one more backbone pass, cached on disk; see
            ``outliers.layer_outlier_scores``), ``lof`` or ``iforest`` (on the embeddings);
            ``outlier_z``: the score above which an image is reported as an outlier (the full ranking
            is in ``stats.csv``); default ``outliers.DEFAULT_Z`` of the method (``layers``: 3.25 on its
            normal-score scale; ``lof``/``iforest``: 4 robust z-scores).
        checks: which detector families to run.
        out: when given, ``result.write(out)``.
    """
    from ..models import FeaturePipeline, parse_spec

    t_all = time.perf_counter()
    spec = parse_spec(model)
    if spec.kind != "features":
        raise ConfigError(f"--model {model}: curation needs a FEATURES+CLASSIFIER spec such as lite0+logreg (for a "
                          f"fine-tuned model, run `imgclass cv DATA --method {model} --out cv/` and pass --oof cv/oof.csv)")
    if outlier_method not in METHODS:
        raise ConfigError(f"--outlier-method {outlier_method}: choose {' or '.join(METHODS)}")
    bad = [c for c in checks if c not in ("quality", "duplicates", "outliers", "labels")]
    if bad:
        raise ConfigError(f"--checks {','.join(bad)}: choose from quality, duplicates, outliers, labels")
    ds = _as_dataset(data)
    if len(ds) == 0:
        raise DataError(f"{ds.name}: no images to curate")
    timings: dict[str, float] = {}
    notes: list[str] = []
    t0 = time.perf_counter()
    stats = image_stats(ds.sources, n_jobs=n_jobs, max_pixels=max_pixels)
    timings["image_stats_s"] = time.perf_counter() - t0
    skipped = list(ds.skipped) + list(stats.errors)
    if not stats.ok.any():
        raise DataError(f"{ds.name}: none of the {len(ds)} images could be read"
                        + (f", e.g. {skipped[0][0]}: {skipped[0][1]}" if skipped else ""))
    log(f"read {int(stats.ok.sum())} of {len(ds)} images in {timings['image_stats_s']:.1f} s")
    q = quality_issues(stats, quality) if "quality" in checks else {}
    exact = exact_groups(stats.sha256) if "duplicates" in checks else []

    E, ok_rows = None, np.flatnonzero(stats.ok)
    if {"duplicates", "outliers", "labels"} & set(checks) and not (set(checks) == {"labels"} and oof is not None) \
            and not (set(checks) <= {"quality", "duplicates"} and len(ok_rows) < 2):
        t0 = time.perf_counter()
        pipe = FeaturePipeline(",".join(spec.features), spec.classifier, seed=seed, n_jobs=n_jobs, max_pixels=max_pixels)
        pipe.fit_extractor([ds.sources[i] for i in ok_rows])
        feats = pipe.features([ds.sources[i] for i in ok_rows], f"features ({','.join(spec.features)})")
        ok_rows = ok_rows[feats.ok]
        E = feats.X
        timings["features_s"] = time.perf_counter() - t0
        skipped += [e for e in feats.errors if e[0] not in {p for p, _ in skipped}]
    near = None
    if "duplicates" in checks and E is not None and len(E) > 1:
        t0 = time.perf_counter()
        exclude = {(min(a, b), max(a, b)) for g in exact for a in g for b in g if a != b}
        okset = set(ok_rows.tolist())
        local = {(int(np.searchsorted(ok_rows, a)), int(np.searchsorted(ok_rows, b))) for a, b in exclude
                 if a in okset and b in okset} or None
        nd = near_duplicates(E, stats.thumbs[ok_rows], duplicates, exclude=local)
        nd.pairs = ok_rows[nd.pairs] if len(nd.pairs) else nd.pairs
        near = nd
        timings["near_duplicates_s"] = time.perf_counter() - t0
    y = None
    if ds.is_labelled and ds.targets.ndim == 1:
        y = ds.targets
    elif ds.is_labelled:
        notes.append("multi-label data: label-issue search (confident learning) covers single-label tasks only; skipped")
    score, used_method = None, outlier_method
    if "outliers" in checks and E is not None and len(E) >= 5:
        t0 = time.perf_counter()
        method = outlier_method
        backbone = getattr(pipe.extractor, "backbone", None) if len(spec.features) == 1 else None
        if method in ("auto", "layers"):
            if backbone in LAYER_CHANNELS and getattr(pipe.extractor, "output", "") == "embedding":
                method = "layers"
            else:
                if method == "layers":
                    notes.append(f"outliers: --outlier-method layers needs an EfficientNet-Lite backbone "
                                 f"({', '.join(LAYER_CHANNELS)}) as the features; used lof")
                method = "lof"
        score, used_method = np.full(len(ds), np.nan), method  # the one used: its default limit applies
        if method == "layers":
            L, lok = layer_statistics([ds.sources[i] for i in ok_rows], pipe.extractor, pipe.preprocess,
                                      n_jobs=n_jobs, max_pixels=max_pixels)
            if len(L) >= 5:
                rows = ok_rows[lok]
                s, _ = layer_outlier_scores(L, LAYER_CHANNELS[backbone], seed)
                flagged = np.zeros(len(ds), bool)  # images with a quality issue: not positives of the refinement
                for found in q.values():
                    flagged[[i for i, *_ in found]] = True
                score[rows] = refine_outlier_scores(s, L, eligible=~flagged[rows], seed=seed)
        else:
            s, _, _ = outlier_scores(E, None if y is None else y[ok_rows], method, seed)
            score[ok_rows] = s
        # A blurred photo is reported once, as blurry: its texture statistics are unusual for the
        # same reason, and ranking it among the outliers would push out images whose content is.
        score[[i for i, *_ in q.get("blurry", [])]] = np.nan
        timings["outliers_s"] = time.perf_counter() - t0
    issues, P = None, None
    if "labels" in checks and y is not None:
        t0 = time.perf_counter()
        if oof is not None:
            P = read_oof(oof, ds)
        elif E is not None:
            lab = y[ok_rows] >= 0
            counts = np.bincount(y[ok_rows][lab], minlength=len(ds.classes))
            if (counts[counts > 0] < 2).any() or (counts > 0).sum() < 2:
                notes.append("label issues: every class needs at least 2 labelled images for out-of-fold predictions; skipped")
            else:
                pipe.classes_, pipe.task_ = list(ds.classes), "multiclass"
                Pl = out_of_fold_probabilities(E[lab], y[ok_rows][lab], lambda: pipe.new_classifier(y), folds, seed, n_jobs)
                P = np.full((len(ds), len(ds.classes)), np.nan)
                P[ok_rows[lab], :Pl.shape[1]] = Pl
                P[ok_rows[lab], Pl.shape[1]:] = 0.0
        if P is not None:
            Q = P
            if E is not None and len(E) > 20:
                # Blend in the labels of each image's nearest neighbours (30%): a second, local opinion.
                # On cifar10-12k with 200 flipped labels, lite0+logreg out-of-fold probabilities alone put
                # 74% of the flips in the 300 least self-confident images; the blend 77%.
                K = np.full_like(P, np.nan)
                K[ok_rows] = neighbour_vote(E, y[ok_rows], len(ds.classes))
                Q = np.where(np.isnan(K), P, 0.7 * P + 0.3 * K)
            issues = confident_learning(Q, y)
        timings["label_issues_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_all
    res = CurationResult(dataset=ds, stats=stats, quality=q, exact=exact, near=near, outlier_score=score,
                         outlier_z=DEFAULT_Z.get(used_method, 4.0) if outlier_z is None else outlier_z,
                         label_issues=issues, oof=P, features=",".join(spec.features),
                         timings=timings, notes=notes, skipped=skipped, embeddings=E,
                         embedded_rows=ok_rows if E is not None else None)
    counts = {k: v for k, v in res.counts().items() if v}
    small = [c for c, k in (ds.class_counts().items() if ds.is_labelled else []) if k < 5]
    if small:
        notes.append(f"classes with fewer than 5 images: {', '.join(small)}")
    log("found " + (", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()) or "no issues"))
    if out is not None:
        res.write(out)
    return res


__all__ = ["DEFAULT_EXCLUDE", "EXCLUDE_CHOICES", "ISSUE_TYPES", "CurationResult", "curate", "read_oof"]
