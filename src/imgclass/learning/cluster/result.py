"""``ClusterResult``: a clustering's labels and embedding, with prediction, naming into a classifier, and its report files."""

from __future__ import annotations

import csv
import io
import os
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._util import atomic_write_bytes, atomic_write_json, atomic_write_text, figure_png
from ...data import ImageDataset, load_dataset
from ...data.decode import ImageSource, load_image
from ...errors import ConfigError, DataError, ImageLoadError
from .metrics import NOISE


@dataclass
class ClusterResult:
    """The outcome of ``cluster``: one cluster id per readable image, plus what is needed to explain,
    write and reuse it.

    Attributes (scikit-learn style, learned state ends in ``_``):
        labels_: ``(n,)`` cluster id per image in ``sources`` (0 = the largest cluster; ``-1`` = noise).
        cluster_centers_: ``(k, d)`` mean of each cluster in the reduced space ``embedding_``.
        embedding_: ``(n, d)`` the features the algorithm saw (L2-normalised, reduced).
        k: number of clusters (noise excluded).
        metrics: ``n``, ``k``, ``noise``, ``silhouette`` and, with one label per image, ``acc``,
            ``nmi``, ``ari`` (and ``n_labelled``).
        k_curve: with ``k="auto"``: ``{"criterion": "silhouette"|"bic", "k": [...], "score": [...]}``.
        sources / truth: the clustered images and their labels (``None`` when unknown).
        skipped: ``(source, reason)`` of the images that could not be read.
        names_: after ``name``: cluster id -> class name; ``name_how_`` says "vote" or "nearest".
        notes: decisions the function took for you (k from the classes, dims capped, ...).
    """

    labels_: np.ndarray
    cluster_centers_: np.ndarray
    embedding_: np.ndarray
    k: int
    algo: str
    features: str
    reduce: str
    dims: int | None
    seed: int
    sources: list
    truth: list | None
    classes: list[str]
    metrics: dict[str, Any]
    k_curve: dict[str, Any] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data_name: str = "data"
    names_: dict[int, str] | None = None
    name_how_: dict[int, str] | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    _pipeline: Any = field(default=None, repr=False)  # FeaturePipeline holding extractor + preprocessing
    _steps: list = field(default_factory=list, repr=False)  # fitted (name, transformer): raw features -> embedding_

    # ------------------------------------------------------------------ basics
    @property
    def sizes(self) -> dict[int, int]:
        """Images per cluster (noise under ``-1`` when present)."""
        ids, counts = np.unique(self.labels_, return_counts=True)
        return {int(i): int(c) for i, c in zip(ids, counts)}

    def members(self, c: int) -> np.ndarray:
        """Indices of cluster ``c``'s images, the most typical (closest to the cluster mean) first."""
        idx = np.flatnonzero(self.labels_ == c)
        if c == NOISE or len(idx) == 0:
            return idx
        d = np.linalg.norm(self.embedding_[idx] - self.cluster_centers_[c], axis=1)
        return idx[np.argsort(d, kind="stable")]

    def top_labels(self, c: int, n: int = 3) -> list[tuple[str, float]]:
        """The most common known labels in cluster ``c`` with their share of its labelled images."""
        if self.truth is None:
            return []
        labs = [self.truth[i] for i in np.flatnonzero(self.labels_ == c) if self.truth[i] is not None]
        if not labs:
            return []
        return [(lab, cnt / len(labs)) for lab, cnt in Counter(labs).most_common(n)]

    def transform(self, F: np.ndarray) -> np.ndarray:
        """Map raw feature rows into the clustering space (the fitted L2 / PCA / UMAP steps)."""
        Z = np.asarray(F, dtype=np.float64)
        for _, step in self._steps:
            Z = step.transform(Z)
        return Z

    def _embed(self, sources: Sequence[ImageSource], description: str = "features") -> tuple[np.ndarray, np.ndarray, list]:
        """(rows in the clustering space, ok mask, errors) for new images."""
        feats = self._pipeline.features(list(sources), description)
        Z = self.transform(feats.X) if len(feats.X) else np.zeros((0, self.embedding_.shape[1]))
        return Z, feats.ok, feats.errors

    def _nearest(self, Z: np.ndarray) -> np.ndarray:
        from sklearn.metrics import pairwise_distances_argmin

        if not len(Z):
            return np.zeros(0, np.int64)
        return np.asarray(pairwise_distances_argmin(Z, self.cluster_centers_), dtype=np.int64)

    def predict(self, images: Sequence[ImageSource] | ImageDataset) -> np.ndarray:
        """Nearest cluster (by its mean in the reduced space) for new images; ``-1`` for unreadable ones."""
        sources = list(images.sources) if isinstance(images, ImageDataset) else list(images)
        Z, ok, _ = self._embed(sources, "features (predict)")
        out = np.full(len(sources), NOISE, dtype=np.int64)
        out[ok] = self._nearest(Z)
        return out

    # ------------------------------------------------------------------ naming -> classifier
    def name(self, labelled: ImageDataset | str | os.PathLike | dict[str, str]):
        """Name every cluster from a few labelled examples and return the classifier this makes.

        ``labelled`` is a dataset, a CSV/JSONL/folder path (``path,label``), or ``{path: label}``.
        Examples that are among the clustered images vote with their cluster; others are assigned to
        the nearest cluster first. A cluster is named by the majority of its labelled members (ties:
        the label closest to the cluster mean wins, then alphabetical order); a cluster with no labelled
        member takes the name of the nearest named cluster. Sets ``names_`` / ``name_how_``.

        Returns a fitted ``FeaturePipeline``: the same feature extractor and pre-processing, then a
        scikit-learn ``Pipeline`` (the fitted L2 → PCA steps, then a multinomial
        ``LogisticRegression``) trained on every clustered image labelled with its cluster's name, so
        its decisions follow the clusters (``model.meta_["clustering"]["agreement"]`` is the share of
        clustered images it gives their cluster's name). ``model.save(dir)`` writes a normal bundle
        (skops, no pickle) that ``imgclass predict`` uses.

        Logistic regression rather than a nearest-centroid rule: its probabilities match how often it is
        right, which thresholds, active learning and "unsure" flags rely on.
        """
        if self.reduce == "umap":
            raise ConfigError("--name-clusters needs --reduce pca or none: a UMAP reduction cannot be saved in a "
                              "model bundle without pickle")
        items = self._labelled_items(labelled)
        pos = {_key(s): i for i, s in enumerate(self.sources)}
        cluster_of: list[int] = []
        labels: list[str] = []
        rows: list[np.ndarray] = []
        outside = [(s, lab) for s, lab in items if _key(s) not in pos or self.labels_[pos[_key(s)]] == NOISE]
        for s, lab in items:
            i = pos.get(_key(s))
            if i is not None and self.labels_[i] != NOISE:
                cluster_of.append(int(self.labels_[i]))
                labels.append(lab)
                rows.append(self.embedding_[i])
        if outside:  # labelled examples that were not clustered (or are noise): nearest cluster mean
            Z, ok, _ = self._embed([src for src, _ in outside], "features (labelled)")
            kept = [lab for (_, lab), good in zip(outside, ok) if good]
            for c, lab, z in zip(self._nearest(Z), kept, Z):
                cluster_of.append(int(c))
                labels.append(lab)
                rows.append(z)
        if not labels:
            raise DataError("--name-clusters: none of the labelled images could be read; check the paths in the file")
        names, how = {}, {}
        for c in range(self.k):
            votes = [(lab, r) for cc, lab, r in zip(cluster_of, labels, rows) if cc == c]
            if not votes:
                continue
            counts = Counter(lab for lab, _ in votes)
            best = max(counts.values())
            tied = sorted(lab for lab, n in counts.items() if n == best)
            if len(tied) > 1:
                dist = {lab: min(np.linalg.norm(r - self.cluster_centers_[c]) for l2, r in votes if l2 == lab)
                        for lab in tied}
                tied = sorted(tied, key=lambda lab: (dist[lab], lab))
            names[c], how[c] = tied[0], "vote"
        if not names:
            raise DataError("--name-clusters: no labelled example fell into a cluster")
        named = sorted(names)
        for c in range(self.k):
            if c not in names:
                d = np.linalg.norm(self.cluster_centers_[named] - self.cluster_centers_[c], axis=1)
                names[c], how[c] = names[named[int(np.argmin(d))]], "nearest"
        self.names_, self.name_how_ = names, how
        classes = sorted(set(names.values()))
        if len(classes) < 2:
            raise DataError(f"--name-clusters: the labelled examples name only one class ({classes[0]!r}); a "
                            "classifier needs examples of at least two classes")
        return self._named_model(classes)

    def _labelled_items(self, labelled) -> list[tuple[ImageSource, str]]:
        if isinstance(labelled, dict):
            return [(str(p), str(lab)) for p, lab in labelled.items()]
        try:
            ds = labelled if isinstance(labelled, ImageDataset) else load_dataset(labelled)
        except DataError as exc:
            raise DataError(f"--name-clusters {labelled}: {exc}") from None
        if not ds.is_labelled or ds.targets.ndim != 1:
            raise DataError(f"--name-clusters {ds.name}: needs one label per image (a path,label CSV, a JSONL "
                            "or a folder per class)")
        return [(s, lab) for s, lab in zip(ds.sources, ds.labels()) if lab is not None]

    def _named_model(self, classes: list[str]):
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline

        keep = self.labels_ != NOISE
        y = np.asarray([classes.index(self.names_[int(c)]) for c in self.labels_[keep]], dtype=np.int64)
        # no per-dimension scaling: it would blow up near-zero-variance trailing PCA components; C=1 on
        # these ~unit-norm rows keeps the probabilities neither over- nor underconfident
        head = [("names", LogisticRegression(C=1.0, max_iter=2000))]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter on perfectly separated toy data
            named = Pipeline(head).fit(self.embedding_[keep], y)
        agreement = float((named.predict(self.embedding_[keep]) == y).mean())
        clf = Pipeline(list(self._steps) + head)  # raw features -> L2 -> PCA -> names
        base = self._pipeline
        from ...models import FeaturePipeline

        model = FeaturePipeline(base.extractor, clf, preprocess=base.preprocess, seed=self.seed, n_jobs=base.n_jobs,
                                max_pixels=base.max_pixels, method=f"{self.features}+{self.algo}-clusters")
        model.classifier_ = clf
        model.classes_ = list(classes)
        model.task_ = "binary" if len(classes) == 2 else "multiclass"
        model.meta_["clustering"] = {"algo": self.algo, "k": self.k, "reduce": self.reduce, "dims": self.dims,
                                     "agreement": agreement,
                                     "names": {str(c): n for c, n in sorted(self.names_.items())},
                                     "named_by": {str(c): h for c, h in sorted(self.name_how_.items())}}
        return model

    # ------------------------------------------------------------------ reporting
    def cluster_rows(self) -> list[dict[str, Any]]:
        """One row per cluster (noise last): id, size, name, top known labels."""
        rows = []
        ids = sorted(self.sizes, key=lambda c: (c == NOISE, c))
        for c in ids:
            r: dict[str, Any] = {"cluster": c, "size": self.sizes[c]}
            if self.names_ is not None and c != NOISE:
                r["name"], r["named_by"] = self.names_[c], self.name_how_[c]
            if self.truth is not None:
                r["top_labels"] = [[lab, round(share, 4)] for lab, share in self.top_labels(c)]
            rows.append(r)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"data": self.data_name, "n": len(self.labels_), "features": self.features, "algo": self.algo,
                "reduce": self.reduce, "dims": self.dims, "seed": self.seed, "k": self.k, "metrics": self.metrics,
                "k_curve": self.k_curve, "clusters": self.cluster_rows(), "notes": self.notes,
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped], "outputs": self.outputs}

    def write(self, out: str | os.PathLike, montage_size: int = 25, thumb: int = 64) -> dict[str, str]:
        """Write ``clusters.csv`` (path, cluster, label/name when known), ``cluster.json``,
        ``montages/cluster_NN.png`` (the ``montage_size`` most typical members of each cluster),
        ``map.png`` (2-D map coloured by cluster) and, with ``k="auto"``, ``k_curve.png``. Every file is
        written atomically. Returns (and stores in ``outputs``) the paths."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        outputs = {"csv": str(out / "clusters.csv"), "json": str(out / "cluster.json"),
                   "montages": str(out / "montages"), "map": str(out / "map.png")}
        atomic_write_text(out / "clusters.csv", self._csv())
        for c in self.sizes:
            fname = "noise.png" if c == NOISE else f"cluster_{c:02d}.png"
            atomic_write_bytes(out / "montages" / fname, self._montage(c, montage_size, thumb))
        atomic_write_bytes(out / "map.png", self._map_png())
        if self.k_curve:
            atomic_write_bytes(out / "k_curve.png", self._curve_png())
            outputs["k_curve"] = str(out / "k_curve.png")
        self.outputs = outputs
        atomic_write_json(out / "cluster.json", self.to_dict())
        return outputs

    def _csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        header = ["path", "cluster"] + (["label"] if self.truth is not None else []) + (
            ["name"] if self.names_ is not None else [])
        w.writerow(header)
        for i, (src, c) in enumerate(zip(self.sources, self.labels_)):
            row = [src if isinstance(src, str) else f"<bytes #{i}>", int(c)]
            if self.truth is not None:
                row.append("" if self.truth[i] is None else self.truth[i])
            if self.names_ is not None:
                row.append(self.names_.get(int(c), ""))
            w.writerow(row)
        return buf.getvalue()

    def _montage(self, c: int, n: int, thumb: int) -> bytes:
        from PIL import Image, ImageDraw, ImageOps

        idx = self.members(c)[:n]
        cols = max(1, min(5, len(idx)))
        rows = max(1, -(-len(idx) // cols))
        head = 18
        sheet = Image.new("RGB", (cols * (thumb + 2) + 2, rows * (thumb + 2) + 2 + head), (255, 255, 255))
        for j, i in enumerate(idx):
            try:
                img = load_image(self.sources[i], draft_size=thumb)
            except ImageLoadError:
                continue
            img = ImageOps.pad(img, (thumb, thumb), color=(255, 255, 255))
            sheet.paste(img, (2 + (j % cols) * (thumb + 2), head + 2 + (j // cols) * (thumb + 2)))
        title = "noise" if c == NOISE else f"cluster {c}"
        title += f" - {self.sizes.get(c, 0)} images"
        if self.names_ is not None and c in self.names_:
            title += f" - {self.names_[c]}"
        elif self.truth is not None and self.top_labels(c, 1):
            lab, share = self.top_labels(c, 1)[0]
            title += f" - {lab} {share:.0%}"
        ImageDraw.Draw(sheet).text((3, 3), title, fill=(0, 0, 0))
        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        return buf.getvalue()

    def _map_2d(self) -> tuple[np.ndarray, str]:
        Z = self.embedding_
        if Z.shape[1] <= 2:
            return np.pad(Z, ((0, 0), (0, 2 - Z.shape[1]))), "embedding"
        if self.reduce == "umap":
            import umap

            return umap.UMAP(n_components=2, random_state=self.seed).fit_transform(Z), "UMAP"
        from sklearn.decomposition import PCA

        return PCA(2, random_state=self.seed).fit_transform(Z), "PCA"

    def _map_png(self) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        XY, how = self._map_2d()
        panels = [("cluster", self.labels_)]
        if self.truth is not None:
            lab = np.asarray([self.classes.index(t) if t is not None else NOISE for t in self.truth])
            panels.append(("label", lab))
        fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.4), squeeze=False)
        for ax, (what, ids) in zip(axes[0], panels):
            uniq = [u for u in np.unique(ids) if u != NOISE]
            cmap = plt.get_cmap("tab10" if len(uniq) <= 10 else "tab20" if len(uniq) <= 20 else "hsv",
                                max(len(uniq), 1))
            noise = ids == NOISE
            if noise.any():
                ax.scatter(XY[noise, 0], XY[noise, 1], s=5, c="#bbbbbb", label="noise" if what == "cluster" else "unlabelled")
            for j, u in enumerate(uniq):
                m = ids == u
                name = self.classes[u] if what == "label" else (
                    f"{u}: {self.names_[u]}" if self.names_ is not None else str(u))
                ax.scatter(XY[m, 0], XY[m, 1], s=7, color=cmap(j), label=name)
            if len(uniq) <= 20:
                ax.legend(fontsize=7, markerscale=2, loc="best", title=what)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"coloured by {what}")
        m = self.metrics
        score = "  ".join(f"{key.upper()} {m[key]:.3f}" for key in ("acc", "nmi", "ari") if m.get(key) is not None)
        fig.suptitle(f"{self.features} → {self.reduce} → {self.algo}: k = {self.k}   {score}   ({how} to 2-D)",
                     fontsize=10)
        fig.tight_layout()
        return figure_png(fig, dpi=100)

    def _curve_png(self) -> bytes:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        cur = self.k_curve
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ks = [k for k, s in zip(cur["k"], cur["score"]) if s is not None]
        ss = [s for s in cur["score"] if s is not None]
        ax.plot(ks, ss, marker="o")
        ax.axvline(cur["chosen"], color="tab:red", ls="--", label=f"chosen k = {cur['chosen']}")
        ax.set_xlabel("k")
        ax.set_ylabel("BIC (lower is better)" if cur["criterion"] == "bic" else "silhouette (higher is better)")
        ax.set_xticks(ks)
        ax.legend()
        ax.set_title(f"choosing k for {self.algo} on {self.features}")
        fig.tight_layout()
        return figure_png(fig, dpi=100)


def _key(src: ImageSource) -> str:
    return os.path.realpath(src) if isinstance(src, (str, os.PathLike)) else f"bytes:{id(src)}"
