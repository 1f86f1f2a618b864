"""Fitting estimators and keeping the run directory.

Classical pipelines fit in one call; deep models train with the one engine (``engine.Trainer``).
"""

from .engine import TrainConfig, Trainer
from .fit import fit_model
from .run import RunDir, default_run_dir

__all__ = ["RunDir", "TrainConfig", "Trainer", "default_run_dir", "fit_model"]
