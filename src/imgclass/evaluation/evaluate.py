"""``evaluate(model, data)``: metrics, per-class table, confusion matrix plots, HTML report."""

from __future__ import annotations

import base64
import csv
import html
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write_bytes, atomic_write_json, atomic_write_text, figure_png
from ..data import ImageDataset
from ..errors import DataError
from ..tasks import headline, metrics
from ..tasks.decision import Decision


@dataclass
class Evaluation:
    """Metrics of a model on a labelled dataset.

    ``metrics`` holds every scalar plus ``per_class`` and (single-label) ``confusion``; ``skipped``
    lists unreadable images as ``(path, reason)``.
    """

    task: str
    classes: list[str]
    metrics: dict[str, Any]
    items: list[str] = field(default_factory=list)
    targets: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    title: str = "evaluation"
    history: list[dict] | None = None  # per-epoch records of a deep training run
    decision: Decision | None = None  # the model's decision rule (thresholds, taxonomy)
    sources: list | None = None  # image files of the evaluated rows (for the report's gallery)
    groups: list[str] | None = None  # slice of each evaluated row (``--group-by``)

    @property
    def headline(self) -> dict[str, float]:
        return headline(self.task, self.metrics)

    def to_dict(self) -> dict[str, Any]:
        d = {"task": self.task, "classes": self.classes, "metrics": self.metrics,
             "confused_pairs": self.confused_pairs(), "top_losses": self.top_losses(),
             "skipped": [{"path": p, "reason": r} for p, r in self.skipped]}
        if self.groups:
            d["slices"] = self.slices()
        return d

    # ------------------------------------------------------------------ analysis
    def confused_pairs(self, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` most frequent (true, predicted) mistakes, largest first."""
        if "confusion" not in self.metrics:
            return []
        cm = np.asarray(self.metrics["confusion"])
        off = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
        off.sort(key=lambda t: -t[0])
        return [{"true": self.classes[i], "predicted": self.classes[j], "count": c,
                 "share_of_true": c / max(int(cm[i].sum()), 1)} for c, i, j in off[:k]]

    def top_losses(self, k: int = 16) -> list[dict[str, Any]]:
        """The ``k`` rows with the highest loss (-log of the truth's probability), worst first."""
        if self.probabilities is None or self.targets is None or not len(self.probabilities):
            return []
        P = np.clip(self.probabilities, 1e-12, 1.0)
        if self.task == "multilabel":
            Y = self.targets.astype(float)
            loss = -(Y * np.log(P) + (1 - Y) * np.log(np.clip(1 - self.probabilities, 1e-12, 1.0))).sum(axis=1)
        else:
            loss = -np.log(P[np.arange(len(P)), self.targets])
        decision = self.decision or Decision(task=self.task, classes=list(self.classes))
        pred = decision.predicted_indices(self.probabilities)
        out = []
        for i in np.argsort(-loss, kind="stable")[:k]:
            if self.task == "multilabel":
                truth = "|".join(self.classes[j] for j in np.flatnonzero(self.targets[i]))
                guess = "|".join(self.classes[j] for j in np.flatnonzero(pred[i])) or "(none)"
                prob = float(self.probabilities[i].max())
            else:
                truth, guess = self.classes[self.targets[i]], self.classes[pred[i]]
                prob = float(self.probabilities[i, pred[i]])
            out.append({"row": int(i), "item": self.items[i], "true": truth, "predicted": guess,
                        "probability": prob, "loss": float(loss[i])})
        return out

    def slices(self) -> list[dict[str, Any]]:
        """Metrics per group (``--group-by``), worst first by the task's main score."""
        if not self.groups:
            return []
        from ..tasks import metrics as task_metrics

        key = "macro_f1" if self.task == "multilabel" else "accuracy"
        out = []
        groups = np.asarray(self.groups, dtype=object)
        for g in sorted(set(self.groups), key=str):
            rows = np.flatnonzero(groups == g)
            m = task_metrics(self.task, self.targets[rows], self.probabilities[rows], self.classes,
                             decision=self.decision)
            out.append({"group": str(g), "n": int(len(rows)), key: m[key],
                        "balanced_accuracy" if self.task != "multilabel" else "micro_f1":
                            m.get("balanced_accuracy", m.get("micro_f1"))})
        out.sort(key=lambda r: r[key])
        return out

    # ------------------------------------------------------------------ plots
    def confusion_figure(self, normalize: bool = False):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cm = np.asarray(self.metrics["confusion"], dtype=np.float64)
        if normalize:
            cm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        n = len(self.classes)
        side = min(2.0 + 0.45 * n, 24)
        fig, ax = plt.subplots(figsize=(side + 1.5, side))
        im = ax.imshow(cm, cmap="Blues", vmin=0, vmax=1 if normalize else None)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        ticks = np.arange(n)
        short = [c.rsplit("/", 1)[-1] if n > 30 else c for c in self.classes]
        ax.set_xticks(ticks, short, rotation=90 if n > 6 else 45, ha="right" if n <= 6 else "center", fontsize=8)
        ax.set_yticks(ticks, short, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        import textwrap  # a long title on a small matrix wraps instead of running off the figure

        title = f"{self.title}: confusion matrix" + (" (row-normalised)" if normalize else " (counts)")
        ax.set_title("\n".join(textwrap.wrap(title, max(24, int(7 * (side + 1.5))))), fontsize=9)
        if n <= 20:
            thresh = cm.max() / 2 if cm.size else 0
            for i in range(n):
                for j in range(n):
                    txt = f"{cm[i, j]:.2f}" if normalize else f"{int(cm[i, j])}"
                    ax.text(j, i, txt, ha="center", va="center", fontsize=7,
                            color="white" if cm[i, j] > thresh else "black")
        fig.tight_layout()
        return fig

    def history_figure(self):
        """Training curves: loss per epoch and the validation metric per epoch."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        h = self.history or []
        ep = [r["epoch"] for r in h]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
        a1.plot(ep, [r.get("train_loss") for r in h], marker="o", label="train loss")
        if any("val_loss" in r for r in h):
            a1.plot(ep, [r.get("val_loss") for r in h], marker="o", label="val loss")
        a1.set_xlabel("epoch")
        a1.set_title("loss")
        a1.legend()
        key = next((k for k in ("val_accuracy", "val_micro_f1") if any(k in r for r in h)), None)
        if key:
            a2.plot(ep, [r.get(key) for r in h], marker="o", color="tab:green")
            a2.set_title(key.replace("_", " "))
        a2.set_xlabel("epoch")
        fig.suptitle(f"{self.title}: training curves")
        fig.tight_layout()
        return fig

    def curves_figure(self):
        """Binary: ROC and precision-recall curves of the positive class, with the tuned threshold marked.
        Multi-label: one ROC and one PR curve per label (the 12 most frequent labels when there are more)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        m = self.metrics
        if "label_curves" in m:
            rows = sorted(m["per_class"], key=lambda r: -r["support"])[:12]
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.6))
            for r in rows:
                c = m["label_curves"][r["class"]]
                line, = a1.plot(c["roc"]["fpr"], c["roc"]["tpr"], label=f"{r['class']} AUC {r['roc_auc']:.3f}")
                a2.plot(c["pr"]["recall"], c["pr"]["precision"], color=line.get_color(),
                        label=f"{r['class']} AP {r['average_precision']:.3f}")
                a2.scatter([r["recall"]], [r["precision"]], color=line.get_color(), edgecolor="black", zorder=3)
            a1.plot([0, 1], [0, 1], color="#bbb", ls="--")
            a1.set(xlabel="false positive rate", ylabel="true positive rate",
                   title=f"ROC per label (macro AUC {m['macro_roc_auc']:.3f})")
            a2.set(xlabel="recall", ylabel="precision", title=f"precision-recall per label (mAP {m['mAP']:.3f}; "
                                                                  "dots: tuned thresholds)")
            for a in (a1, a2):
                a.legend(loc="lower right" if a is a1 else "lower left", fontsize=7)
                a.set_xlim(0, 1)
                a.set_ylim(0, 1.02)
            fig.suptitle(self.title + ("" if len(rows) == len(m["per_class"]) else
                                       f" ({len(rows)} most frequent of {len(m['per_class'])} labels)"))
            fig.tight_layout()
            return fig
        c = m["curves"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
        a1.plot(c["roc"]["fpr"], c["roc"]["tpr"], color="tab:blue", label=f"AUC {m['roc_auc']:.3f}")
        a1.plot([0, 1], [0, 1], color="#bbb", ls="--")
        a1.set_xlabel("false positive rate")
        a1.set_ylabel("true positive rate")
        a1.set_title(f"ROC ({m['positive']} positive)")
        a2.plot(c["pr"]["recall"], c["pr"]["precision"], color="tab:orange", label=f"AP {m['average_precision']:.3f}")
        a2.scatter([m["recall"]], [m["precision"]], color="black", zorder=3,
                   label=f"threshold {m['threshold']:.3f}")
        a2.set_xlabel("recall")
        a2.set_ylabel("precision")
        a2.set_title("precision-recall")
        for a in (a1, a2):
            a.legend(loc="lower right")
            a.set_xlim(0, 1)
            a.set_ylim(0, 1.02)
        fig.suptitle(self.title)
        fig.tight_layout()
        return fig

    def reliability_figure(self):
        """Reliability diagram: accuracy per confidence bin against the diagonal, with the ECE."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from ..tasks.calibration import calibration_bins

        b = calibration_bins(self.task, self.targets, self.probabilities)
        edges = np.asarray(b["edges"])
        acc = np.array([np.nan if v is None else v for v in b["accuracy"]])
        fig, ax = plt.subplots(figsize=(5.2, 4.6))
        ax.bar(edges[:-1], np.nan_to_num(acc), width=np.diff(edges), align="edge", color="tab:blue",
               edgecolor="white", label="accuracy per bin")
        ax.plot([0, 1], [0, 1], color="#888", ls="--", label="perfect calibration")
        ax.set_xlabel("confidence" if self.task != "multilabel" else "predicted probability")
        ax.set_ylabel("accuracy" if self.task != "multilabel" else "fraction positive")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.legend(loc="upper left")
        ax.set_title(f"reliability (ECE {b['ece']:.4f})")
        fig.tight_layout()
        return fig

    def fallback_figure(self):
        """Hierarchical: coverage (a leaf emitted) and precision of emitted labels vs the min confidence."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fb = self.metrics["hierarchy"]["fallback"]
        ps = [e["min_confidence"] for e in fb]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(ps, [e["coverage"] for e in fb], marker="o", label="coverage (leaf emitted)")
        ax.plot(ps, [e["precision"] for e in fb], marker="o", label="precision of emitted labels")
        ax.set_xlabel("--min-confidence")
        ax.set_ylim(0, 1.02)
        ax.legend(loc="lower left")
        ax.set_title(f"{self.title}: fallback to coarser labels")
        fig.tight_layout()
        return fig

    def _render(self, name: str, make) -> bytes:
        """PNG bytes of the figure ``make()``; within one ``write`` each figure is drawn once and reused
        for both ``plots/`` and the report (matplotlib rendering is most of a report's cost)."""
        cache = getattr(self, "_png_cache", None)
        if cache is None:
            return self._png(make())
        if name not in cache:
            cache[name] = self._png(make())
        return cache[name]

    def _png(self, fig) -> bytes:
        return figure_png(fig)

    def plot_confusion(self, path: str | os.PathLike, normalize: bool = False) -> Path:
        if "confusion" not in self.metrics:
            raise DataError("a confusion matrix needs single-label data")
        atomic_write_bytes(path, self._render(f"confusion{normalize}", lambda: self.confusion_figure(normalize)))
        return Path(path)

    # ------------------------------------------------------------------ files
    def write_predictions(self, path: str | os.PathLike) -> None:
        if self.probabilities is None:
            return
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["path", "true", "predicted", "probability"] + list(self.classes))
        decision = self.decision or Decision(task=self.task, classes=list(self.classes))
        pred = decision.predicted_indices(self.probabilities)
        for i, p in enumerate(self.items):
            if self.task == "multilabel":
                truth = "|".join(self.classes[j] for j in np.flatnonzero(self.targets[i]))
                guess = "|".join(self.classes[j] for j in np.flatnonzero(pred[i]))
                prob = ""
            else:
                truth, guess = self.classes[self.targets[i]], self.classes[pred[i]]
                prob = f"{self.probabilities[i, pred[i]]:.4f}"
            w.writerow([p, truth, guess, prob] + [f"{v:.4f}" for v in self.probabilities[i]])
        atomic_write_text(path, buf.getvalue())

    def write(self, folder: str | os.PathLike) -> dict[str, Path]:
        """Write ``metrics.json``, ``predictions.csv``, confusion PNGs and ``report.html`` into ``folder``."""
        self._png_cache: dict[str, bytes] = {}
        try:
            return self._write(Path(folder))
        finally:
            self._png_cache = None

    def _write(self, folder: Path) -> dict[str, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        out = {"metrics": folder / "metrics.json", "predictions": folder / "predictions.csv",
               "report": folder / "report.html"}
        atomic_write_json(out["metrics"], self.to_dict())
        self.write_predictions(out["predictions"])
        if "confusion" in self.metrics:
            plots = folder / "plots"
            plots.mkdir(exist_ok=True)
            out["confusion"] = self.plot_confusion(plots / "confusion.png")
            out["confusion_normalized"] = self.plot_confusion(plots / "confusion_normalized.png", normalize=True)
        for name, present, fig in (("training_curves", bool(self.history), self.history_figure),
                                   ("reliability", self.probabilities is not None and len(self.probabilities) > 0,
                                    self.reliability_figure),
                                   ("roc_pr", "curves" in self.metrics or "label_curves" in self.metrics,
                                    self.curves_figure),
                                   ("fallback", "hierarchy" in self.metrics, self.fallback_figure)):
            if present:
                plots = folder / "plots"
                plots.mkdir(exist_ok=True)
                out[name] = plots / f"{name}.png"
                atomic_write_bytes(out[name], self._render(name, fig))
        self.to_html(out["report"])
        return out

    def _gallery_html(self, k: int = 16, side: int = 112) -> str:
        """Top losses as inlined JPEG thumbnails with truth, prediction and probability."""
        if not self.sources:
            return ""
        from ..data.decode import load_image
        from ..errors import ImageLoadError

        e = html.escape
        cells = []
        for r in self.top_losses(k):
            try:
                im = load_image(self.sources[r["row"]], draft_size=side)
            except ImageLoadError:
                continue
            im.thumbnail((side, side))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=85)
            b64 = base64.b64encode(buf.getvalue()).decode()
            cells.append(f"<figure style='display:inline-block;margin:4px;width:{side + 20}px;vertical-align:top'>"
                         f"<img class='thumb' alt='{e(r['item'])}' src='data:image/jpeg;base64,{b64}'>"
                         f"<figcaption style='font-size:11px'>true <b>{e(r['true'])}</b><br>predicted "
                         f"<b>{e(r['predicted'])}</b> {r['probability'] * 100:.0f}%<br>{e(r['item'])}</figcaption></figure>")
        if not cells:
            return ""
        return "<h2>Top losses</h2><div class='gallery'>" + "".join(cells) + "</div>"

    def to_html(self, path: str | os.PathLike | None = None) -> str:
        """A self-contained HTML report (plots inlined as base64 PNG). Written atomically if ``path``."""
        e = html.escape
        parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{e(self.title)}</title>",
                 "<style>body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
                 "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
                 "text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}"
                 "img{max-width:100%}.bad{color:#a00}</style></head><body>",
                 f"<h1>{e(self.title)}</h1>", f"<p>task: <b>{e(self.task)}</b> · {len(self.classes)} classes · "
                 f"{self.metrics.get('n', 0)} images evaluated · {len(self.skipped)} skipped</p>",
                 "<h2>Summary</h2><table>"]
        for k, v in self.metrics.items():
            if isinstance(v, (int, float)):
                parts.append(f"<tr><td>{e(k)}</td><td>{v:.4f}</td></tr>" if isinstance(v, float)
                             else f"<tr><td>{e(k)}</td><td>{v}</td></tr>")
        per_label = any("roc_auc" in row for row in self.metrics.get("per_class", []))  # multi-label extras
        parts.append("</table><h2>Per class</h2><table><tr><th>class</th><th>precision</th><th>recall</th>"
                     "<th>F1</th><th>support</th>"
                     + ("<th>threshold</th><th>ROC AUC</th><th>AP</th>" if per_label else "") + "</tr>")
        for row in self.metrics.get("per_class", []):
            extra = (f"<td>{row['threshold']:.3f}</td><td>{row['roc_auc']:.3f}</td><td>{row['average_precision']:.3f}</td>"
                     if per_label else "")
            parts.append(f"<tr><td>{e(row['class'])}</td><td>{row['precision']:.3f}</td><td>{row['recall']:.3f}"
                         f"</td><td>{row['f1']:.3f}</td><td>{row['support']}</td>{extra}</tr>")
        parts.append("</table>")
        slices = self.slices()
        if slices:
            key = "macro_f1" if self.task == "multilabel" else "accuracy"
            parts.append(f"<h2>Slices</h2><p>{key} per group, worst first; the worst slice is highlighted.</p>"
                         f"<table><tr><th>group</th><th>images</th><th>{key}</th></tr>")
            for i, r in enumerate(slices):
                style = " style='background:#fdd'" if i == 0 and len(slices) > 1 else ""
                parts.append(f"<tr{style}><td>{e(r['group'])}</td><td>{r['n']}</td><td>{r[key]:.4f}</td></tr>")
            parts.append("</table>")
        pairs = self.confused_pairs()
        if pairs:
            parts.append("<h2>Most confused pairs</h2><table><tr><th>true</th><th>predicted</th><th>count</th>"
                         "<th>share of true class</th></tr>")
            parts += [f"<tr><td>{e(r['true'])}</td><td>{e(r['predicted'])}</td><td>{r['count']}</td>"
                      f"<td>{r['share_of_true']:.3f}</td></tr>" for r in pairs]
            parts.append("</table>")
        if "confusion" in self.metrics:
            for norm in (False, True):
                b64 = base64.b64encode(self._render(f"confusion{norm}", lambda norm=norm: self.confusion_figure(norm))).decode()
                parts.append(f"<h2>Confusion matrix{' (normalised)' if norm else ''}</h2>"
                             f"<img alt='confusion matrix' src='data:image/png;base64,{b64}'>")
        if self.probabilities is not None and len(self.probabilities):
            b64 = base64.b64encode(self._render("reliability", self.reliability_figure)).decode()
            parts.append(f"<h2>Calibration</h2><img alt='reliability diagram' src='data:image/png;base64,{b64}'>")
        if "curves" in self.metrics or "label_curves" in self.metrics:
            b64 = base64.b64encode(self._render("roc_pr", self.curves_figure)).decode()
            parts.append(f"<h2>ROC and precision-recall</h2><img alt='ROC and PR curves' src='data:image/png;base64,{b64}'>")
        if "hierarchy" in self.metrics:
            h = self.metrics["hierarchy"]
            parts.append("<h2>Hierarchy</h2><table><tr><th>level</th><th>accuracy</th><th>images</th></tr>")
            parts += [f"<tr><td>{d}</td><td>{a:.4f}</td><td>{n}</td></tr>"
                      for d, (a, n) in enumerate(zip(h["level_accuracy"], h["level_n"]), 1)]
            parts.append("</table><table><tr><th>min confidence</th><th>coverage</th><th>answered</th>"
                         "<th>precision</th><th>mean depth</th></tr>")
            parts += [f"<tr><td>{e_['min_confidence']:.2f}</td><td>{e_['coverage']:.4f}</td><td>{e_['answered']:.4f}"
                      f"</td><td>{e_['precision']:.4f}</td><td>{e_['mean_depth']:.2f}</td></tr>" for e_ in h["fallback"]]
            b64 = base64.b64encode(self._render("fallback", self.fallback_figure)).decode()
            parts.append(f"</table><img alt='fallback trade-off' src='data:image/png;base64,{b64}'>")
        if self.task == "multilabel" and "thresholds" in self.metrics:
            parts.append("<h2>Per-label thresholds</h2><table><tr><th>label</th><th>threshold</th></tr>")
            parts += [f"<tr><td>{e(c)}</td><td>{t:.3f}</td></tr>" for c, t in zip(self.classes, self.metrics["thresholds"])]
            parts.append("</table>")
        if self.history:
            b64 = base64.b64encode(self._render("training_curves", self.history_figure)).decode()
            parts.append(f"<h2>Training curves</h2><img alt='training curves' src='data:image/png;base64,{b64}'>")
        gallery = self._gallery_html()
        if gallery:
            parts.append(gallery)
        parts.append(f"<h2>Skipped files ({len(self.skipped)})</h2>")
        if self.skipped:
            parts.append("<table><tr><th>file</th><th>reason</th></tr>")
            parts += [f"<tr><td>{e(p)}</td><td class='bad'>{e(r)}</td></tr>" for p, r in self.skipped]
            parts.append("</table>")
        else:
            parts.append("<p>none</p>")
        parts.append("</body></html>")
        doc = "\n".join(parts)
        if path is not None:
            atomic_write_text(path, doc)
        return doc


def evaluate_probabilities(task: str, classes: list[str], targets: np.ndarray, P: np.ndarray,
                           items: list[str] | None = None, skipped=None, decision: Decision | None = None,
                           title: str = "evaluation", sources: list | None = None,
                           groups: list[str] | None = None) -> Evaluation:
    """Build an ``Evaluation`` from probabilities already computed (NaN rows = unreadable, dropped)."""
    ok = ~np.isnan(P).any(axis=1)
    if targets.ndim == 1:
        ok &= targets >= 0
    if not ok.any():
        raise DataError("no readable labelled images to evaluate")
    items = items or [str(i) for i in range(len(P))]
    m = metrics(task, targets[ok], P[ok], classes, decision=decision)
    return Evaluation(task=task, classes=list(classes), metrics=m, items=[items[i] for i in np.flatnonzero(ok)],
                      targets=targets[ok], probabilities=P[ok], skipped=list(skipped or []), title=title,
                      decision=decision, sources=[sources[i] for i in np.flatnonzero(ok)] if sources else None,
                      groups=[groups[i] for i in np.flatnonzero(ok)] if groups else None)


def evaluate(model, data: ImageDataset, title: str | None = None, tta: str | None = None) -> Evaluation:
    """Score ``model`` on the labelled dataset ``data``; unreadable images are skipped and listed.
    ``tta``: ``flip``, ``crops`` or ``flip+crops`` averages the probabilities over views of each image."""
    if not data.is_labelled:
        raise DataError(f"{data.name}: has no labels; evaluation needs a labelled folder, CSV or JSONL")
    missing = [c for c in data.classes if c not in model.classes_]
    if missing:
        raise DataError(f"{data.name}: classes {missing[:5]} are unknown to the model "
                        f"(it knows {', '.join(model.classes_[:10])}); evaluate on data with the model's classes")
    # re-index targets onto the model's class order
    pos = np.array([model.classes_.index(c) for c in data.classes])
    if data.targets.ndim == 2:
        targets = np.zeros((len(data), len(model.classes_)), dtype=np.uint8)
        targets[:, pos] = data.targets
    else:
        targets = np.where(data.targets >= 0, pos[np.maximum(data.targets, 0)], -1)
    from ..models.tta import predict_proba_tta

    P = predict_proba_tta(model, list(data.sources), tta) if tta not in (None, "none") else model.predict_proba(data)
    return evaluate_probabilities(model.task_, model.classes_, targets, P,
                                  items=[data.relpath(i) for i in range(len(data))], skipped=model.errors_,
                                  decision=getattr(model, "decision_", None), sources=list(data.sources),
                                  groups=data.groups,
                                  title=title or f"{model.method} on {data.name}" + (f" (TTA {tta})" if tta not in (None, "none") else ""))
