"""``SimulationResult``: the accuracy-vs-labels curves of a simulation, their summary, CSV and plot."""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..._util import atomic_write_bytes, atomic_write_json, atomic_write_text, figure_png
from ...errors import ConfigError


@dataclass
class SimulationResult:
    """Accuracy-vs-labels curves of an active-learning simulation.

    ``n_labels[r]`` is the size of the labelled set after round ``r`` (round 0 = the initial set);
    ``curves[strategy][s][r]`` the validation accuracy of seed ``seeds[s]`` at that point.
    """

    method: str
    dataset: str
    n_labels: list[int]
    seeds: list[int]
    curves: dict[str, list[list[float]]]
    initial: int
    per_round: int
    rounds: int
    init: str
    n_pool: int
    n_val: int
    metric: str = "accuracy"
    timings: dict[str, float] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    paths: dict[str, Path] = field(default_factory=dict)

    @property
    def strategies(self) -> list[str]:
        return list(self.curves)

    def mean(self, strategy: str) -> np.ndarray:
        return np.asarray(self.curves[strategy], dtype=np.float64).mean(axis=0)

    def std(self, strategy: str) -> np.ndarray:
        return np.asarray(self.curves[strategy], dtype=np.float64).std(axis=0)

    def accuracy_at(self, n_labels: int, strategy: str) -> float:
        """Mean accuracy over seeds when ``n_labels`` images are labelled (must be a point of the curve)."""
        if n_labels not in self.n_labels:
            raise ConfigError(f"{n_labels} labels is not a point of the curves ({self.n_labels})")
        return float(self.mean(strategy)[self.n_labels.index(n_labels)])

    def summary(self) -> list[dict[str, Any]]:
        """Per strategy: accuracy at the start and end (mean, std over seeds), the gain over random at the
        end and averaged over all rounds after the first."""
        base = self.mean("random") if "random" in self.curves else None
        rows = []
        for s in self.curves:
            m, sd = self.mean(s), self.std(s)
            row = {"strategy": s, "start": float(m[0]), "end": float(m[-1]), "end_std": float(sd[-1])}
            if base is not None:
                row["gain_end"] = float(m[-1] - base[-1])
                row["gain_mean"] = float((m[1:] - base[1:]).mean()) if len(m) > 1 else 0.0
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "dataset": self.dataset, "metric": self.metric, "n_labels": self.n_labels,
                "seeds": self.seeds, "initial": self.initial, "per_round": self.per_round, "rounds": self.rounds,
                "init": self.init, "n_pool": self.n_pool, "n_val": self.n_val, "curves": self.curves,
                "mean": {s: self.mean(s).tolist() for s in self.curves},
                "std": {s: self.std(s).tolist() for s in self.curves},
                "summary": self.summary(), "timings": self.timings, "skipped": len(self.skipped),
                "files": {k: str(v) for k, v in self.paths.items()}}

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["strategy", "seed", "round", "n_labels", self.metric])
        for s, per_seed in self.curves.items():
            for seed, curve in zip(self.seeds, per_seed):
                for r, (n, a) in enumerate(zip(self.n_labels, curve)):
                    w.writerow([s, seed, r, n, f"{a:.6f}"])
        return buf.getvalue()

    def figure(self):
        """Mean accuracy vs number of labels per strategy, with a ±1 std band over seeds; random dashed."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        x = np.asarray(self.n_labels)
        for i, s in enumerate(self.curves):
            m, sd = self.mean(s), self.std(s)
            style = {"color": "0.35", "linestyle": "--"} if s == "random" else {"color": f"C{i}"}
            ax.plot(x, m, marker="o", markersize=3, label=f"{s} ({m[-1]:.3f})", **style)
            if len(self.seeds) > 1:
                ax.fill_between(x, m - sd, m + sd, alpha=0.15, color=style["color"])
        ax.set_xlabel("labelled images")
        ax.set_ylabel(f"validation {self.metric}")
        ax.grid(alpha=0.3)
        ax.legend(title=f"at {x[-1]} labels", fontsize=8)
        ax.set_title(f"active learning: {self.method} on {self.dataset}\n{len(self.seeds)} seed(s), mean ± 1 std; "
                     f"{self.init} initial set of {self.initial}, {self.rounds} rounds of {self.per_round}", fontsize=9)
        fig.tight_layout()
        return fig

    def plot(self, path: str | os.PathLike) -> Path:
        atomic_write_bytes(path, figure_png(self.figure(), dpi=110))
        return Path(path)

    def write(self, out: str | os.PathLike) -> dict[str, Path]:
        """Write ``simulation.json``, ``curves.csv`` and the plot ``simulation.png`` into ``out``."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.paths = {"json": out / "simulation.json", "csv": out / "curves.csv", "plot": out / "simulation.png"}
        atomic_write_text(self.paths["csv"], self.to_csv())
        self.plot(self.paths["plot"])
        atomic_write_json(self.paths["json"], self.to_dict())
        return self.paths
