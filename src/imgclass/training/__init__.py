"""Fitting estimators and keeping the run directory.

The deep-learning training loop (single process and DDP) lands here with the deep-learning issue;
classical pipelines fit in one call.
"""

from .fit import fit_model
from .run import RunDir

__all__ = ["RunDir", "fit_model"]
