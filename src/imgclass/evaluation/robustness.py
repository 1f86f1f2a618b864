"""``robustness(model, data)``: accuracy under ImageNet-C-style corruptions at 5 severities.

Every image is decoded once; each (corruption, severity) pair is applied with a seed derived from
the image index, so runs are reproducible, and the corrupted images go to ``predict_proba`` as
arrays. The summary is the mean corruption accuracy and its ratio to the clean accuracy.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._util import atomic_write_bytes, atomic_write_json, figure_png, progress_bar
from ..data import ImageDataset
from ..errors import ConfigError, DataError, ImageLoadError


@dataclass
class RobustnessResult:
    clean_accuracy: float
    table: dict[str, list[float]] = field(default_factory=dict)  # corruption -> accuracy per severity
    severities: list[int] = field(default_factory=list)
    n: int = 0

    @property
    def mean_corruption_accuracy(self) -> float:
        vals = [a for accs in self.table.values() for a in accs]
        return float(np.mean(vals)) if vals else float("nan")

    @property
    def relative(self) -> float:
        return self.mean_corruption_accuracy / self.clean_accuracy if self.clean_accuracy else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "clean_accuracy": self.clean_accuracy, "severities": self.severities,
                "accuracy": self.table, "mean_corruption_accuracy": self.mean_corruption_accuracy,
                "relative_to_clean": self.relative}

    def figure(self, title: str = "robustness"):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, accs in self.table.items():
            ax.plot(self.severities, accs, marker="o", label=name)
        ax.axhline(self.clean_accuracy, color="black", ls="--", label="clean")
        ax.set_xlabel("severity")
        ax.set_ylabel("accuracy")
        ax.set_xticks(self.severities)
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7, ncol=2)
        ax.set_title(f"{title}: mean corruption accuracy {self.mean_corruption_accuracy:.3f} "
                     f"({self.relative:.2f} of clean)")
        fig.tight_layout()
        return fig

    def write(self, folder: str | os.PathLike, title: str = "robustness") -> dict[str, Path]:


        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "robustness.json", self.to_dict())
        atomic_write_bytes(folder / "robustness.png", figure_png(self.figure(title)))
        return {"json": folder / "robustness.json", "plot": folder / "robustness.png"}


def robustness(model, data: ImageDataset, corruptions: Sequence[str] | None = None,
               severities: Sequence[int] = (1, 2, 3, 4, 5), max_images: int | None = None,
               seed: int = 0) -> RobustnessResult:
    """Accuracy of ``model`` on ``data`` under each corruption and severity (single-label tasks)."""
    from ..data.decode import DEFAULT_MAX_PIXELS, load_image
    from ..transforms.corruptions import CORRUPTIONS, corrupt

    if not data.is_labelled or data.targets.ndim != 1:
        raise DataError(f"{data.name}: robustness needs single-label data with labels")
    from ..transforms.corruptions import SEVERITIES

    if not severities or any(v not in SEVERITIES for v in severities):
        raise ConfigError(f"--severities {','.join(map(str, severities))}: give numbers 1 to 5")
    names = list(corruptions or CORRUPTIONS)
    bad = [c for c in names if c not in CORRUPTIONS]
    if bad:
        raise ConfigError(f"--corruptions {','.join(bad)}: unknown; choose from {', '.join(CORRUPTIONS)}")
    pos = {c: i for i, c in enumerate(model.classes_)}
    missing = [c for c in data.classes if c not in pos]
    if missing:
        raise DataError(f"{data.name}: classes {missing[:5]} are unknown to the model")
    idx = np.flatnonzero(data.targets >= 0)
    if max_images is not None and len(idx) > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_images, replace=False))
    images, y = [], []
    for i in idx:
        try:
            images.append(np.asarray(load_image(data.sources[i], max_pixels=getattr(model, "max_pixels", DEFAULT_MAX_PIXELS))))
        except ImageLoadError:
            continue
        y.append(pos[data.classes[data.targets[i]]])
    if not images:
        raise DataError(f"{data.name}: no readable labelled images")
    y = np.asarray(y)

    def accuracy(arrays) -> float:
        P = model.predict_proba(arrays)
        ok = ~np.isnan(P).any(axis=1)
        return float((P[ok].argmax(1) == y[ok]).mean())

    res = RobustnessResult(clean_accuracy=accuracy(images), severities=list(severities), n=len(images))
    with progress_bar(len(names) * len(severities), "robustness") as bar:
        for name in names:
            res.table[name] = []
            for s in severities:
                res.table[name].append(accuracy([corrupt(im, name, s, seed=seed * 7919 + k)
                                                 for k, im in enumerate(images)]))
                bar.advance(1)
    return res
