"""Evaluation: metrics on a labelled set, plots, a self-contained HTML report, method comparison,
cross-validation, corruption robustness and explanations (heatmaps)."""

from .compare import compare
from .cv import CVResult, cross_validate
from .evaluate import Evaluation, evaluate, evaluate_probabilities
from .explain import Explanation, explain
from .robustness import RobustnessResult, robustness

__all__ = ["CVResult", "Evaluation", "Explanation", "explain", "RobustnessResult", "compare", "cross_validate", "evaluate",
           "evaluate_probabilities", "robustness"]
