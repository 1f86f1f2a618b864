"""``TuneResult`` and the files a study leaves in ``OUT``: ``best.json``, ``trials.csv`` and
``optimization.png``, all read back from the Optuna study."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..._util import atomic_write_bytes, atomic_write_json, atomic_write_text, figure_png, to_jsonable


@dataclass
class TuneResult:
    """The outcome of a search: the best parameters and value next to the defaults' value."""

    method: str
    metric: str
    value: float | None  # best validation score (COMPLETE trials)
    params: dict[str, Any]  # the best trial's parameters (the defaults' values when trial 0 won)
    default_value: float | None  # trial 0, the method's default parameters
    best_trial: int | None
    trials: int  # finished trials in the study (COMPLETE + PRUNED)
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    new_trials: int = 0  # trials started by this call
    stopped_by_timeout: bool = False
    out: Path = field(default_factory=Path)
    study_name: str = ""

    @property
    def improvement(self) -> float | None:
        """Best minus default value (``None`` when either is missing)."""
        return None if self.value is None or self.default_value is None else self.value - self.default_value

    def to_dict(self) -> dict[str, Any]:
        return to_jsonable({"method": self.method, "params": self.params, "value": self.value, "metric": self.metric,
                            "default_value": self.default_value, "trials": self.trials,
                            "best_trial": self.best_trial, "complete": self.complete, "pruned": self.pruned,
                            "failed": self.failed, "new_trials": self.new_trials,
                            "stopped_by_timeout": self.stopped_by_timeout, "study": self.study_name,
                            "out": str(self.out)})



def trial_line(trial, metric: str) -> str:
    from optuna.trial import TrialState

    what = "defaults" if trial.user_attrs.get("defaults") else ", ".join(
        f"{k}={_fmt(v)}" for k, v in trial.params.items()) or "-"
    if trial.state == TrialState.COMPLETE:
        dup = trial.user_attrs.get("duplicate_of")
        return f"trial {trial.number}: {metric} {trial.value:.4f}  ({what})" + (f" = trial {dup}" if dup is not None else "")
    if trial.state == TrialState.PRUNED:
        return f"trial {trial.number}: pruned at epoch {trial.last_step}  ({what})"
    return f"trial {trial.number}: failed: {trial.user_attrs.get('error', 'error')}  ({what})"


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def write_outputs(study, out: Path, method: str, metric: str, ident: dict[str, Any], plot: bool) -> TuneResult:
    """``best.json`` and ``trials.csv`` (and ``optimization.png`` with ``plot``) from the study."""
    from optuna.trial import TrialState

    trials = [t for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    defaults = next((t for t in complete if t.user_attrs.get("defaults")), None)
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    params = {}
    if best is not None:
        params = dict(best.user_attrs.get("params") or {}) if best.user_attrs.get("defaults") else dict(best.params)
    res = TuneResult(method=method, metric=metric, value=best.value if best else None, params=params,
                     default_value=defaults.value if defaults else None,
                     best_trial=best.number if best else None,
                     trials=sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials),
                     complete=len(complete), pruned=sum(t.state == TrialState.PRUNED for t in trials),
                     failed=sum(t.state == TrialState.FAIL for t in trials), out=out, study_name=study.study_name)
    if best is not None:
        doc = {k: v for k, v in res.to_dict().items() if k not in ("new_trials", "stopped_by_timeout", "out")}
        doc["default_params"] = defaults.user_attrs.get("params") if defaults else None
        atomic_write_json(out / "best.json", {**doc, **ident})
    atomic_write_text(out / "trials.csv", _trials_csv(trials))
    if plot and trials:
        atomic_write_bytes(out / "optimization.png", _plot(trials, method, metric, res))
    return res


def _trials_csv(trials) -> str:
    keys = sorted({k for t in trials for k in t.params} | {k for t in trials for k in (t.user_attrs.get("params") or {})})
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["number", "state", "value", "defaults", "seconds", *keys, "error"])
    for t in trials:
        p = t.user_attrs.get("params") or t.params
        secs = t.duration.total_seconds() if t.duration is not None else ""
        w.writerow([t.number, t.state.name, "" if t.value is None else f"{t.value:.6g}",
                    bool(t.user_attrs.get("defaults")), f"{secs:.2f}" if secs != "" else "",
                    *["None" if k in p and p[k] is None else p.get(k, "") for k in keys],
                    t.user_attrs.get("error", "")])
    return buf.getvalue()


def _plot(trials, method: str, metric: str, res: TuneResult) -> bytes:
    """Optimisation history: every trial's value, the best so far, and the defaults as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    fig, ax = plt.subplots(figsize=(7, 4))
    comp = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.value is not None]
    ax.scatter([t.number for t in comp], [t.value for t in comp], s=22, color="tab:blue", label="trial", zorder=3)
    if pruned:
        ax.scatter([t.number for t in pruned], [t.value for t in pruned], s=22, marker="x", color="tab:gray",
                   label="pruned (last epoch reported)", zorder=3)
    xs, ys, best = [], [], None
    for t in sorted(comp, key=lambda t: t.number):
        best = t.value if best is None else max(best, t.value)
        xs.append(t.number)
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:orange", label="best so far")
    if res.default_value is not None:
        ax.axhline(res.default_value, color="tab:green", ls="--", lw=1, label=f"defaults {res.default_value:.4f}")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.set_title(f"{method}: best {res.value:.4f}" if res.value is not None else method)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return figure_png(fig)
