"""Evaluation: metrics on a labelled set, plots, a self-contained HTML report, and method comparison."""

from .compare import compare
from .evaluate import Evaluation, evaluate, evaluate_probabilities

__all__ = ["Evaluation", "compare", "evaluate", "evaluate_probabilities"]
