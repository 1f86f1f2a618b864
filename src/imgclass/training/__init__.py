"""Fitting estimators and keeping the run directory.

Classical pipelines fit in one call; deep models train with the one engine (``engine.Trainer``).
"""

from .config import TrainConfig
from .engine import Trainer
from .fit import check_task_options, fit_model
from .run import RunDir, default_run_dir
from .tuning import TuneResult, tune

__all__ = ["RunDir", "TrainConfig", "Trainer", "TuneResult", "check_task_options", "default_run_dir", "fit_model",
           "tune"]
