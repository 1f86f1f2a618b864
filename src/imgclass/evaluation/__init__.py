"""Evaluation: metrics on a labelled set, plots, a self-contained HTML report, method comparison and
cross-validation."""

from .compare import compare
from .cv import CVResult, cross_validate
from .evaluate import Evaluation, evaluate, evaluate_probabilities
from .robustness import RobustnessResult, robustness

__all__ = ["CVResult", "Evaluation", "RobustnessResult", "compare", "cross_validate", "evaluate",
           "evaluate_probabilities", "robustness"]
