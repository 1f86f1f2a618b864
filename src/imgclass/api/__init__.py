"""The public Python API: one function per job, each a thin, typed entry into the layers below. The CLI
calls these functions and nothing else; ``serve`` and the layers below never import them."""

from __future__ import annotations

from ..data import load_dataset
from ..data.decode import DEFAULT_MAX_PIXELS
from ..deploy.load import RUNTIMES, resolve_model
from ..limits import SERVE_MAX_PIXELS
from ..models import load_model
from ._data import check_data, dumps, images_dataset, methods, pack, prepare_split, split_methods
from ._deploy import distill, export, prune, serve
from ._evaluate import compare, cv, evaluate, headline_metrics, robustness
from ._predict import explain, predict, predict_proba, predict_to_csv
from ._runs import (
           default_run_dir,
           is_main_process,
           launch,
           new_run_dir,
           run_dir_next_to,
           shutdown,
           train_method,
)
from ._train import lr_find, train, tune
from ._unlabelled import active, active_simulate, cluster, curate, pretrain

__all__ = ["DEFAULT_MAX_PIXELS", "RUNTIMES", "SERVE_MAX_PIXELS", "active", "active_simulate",
           "check_data", "cluster", "compare", "curate", "cv", "default_run_dir", "distill", "dumps", "evaluate",
           "explain", "export", "headline_metrics", "images_dataset", "is_main_process", "launch", "load_dataset",
           "load_model", "lr_find", "methods", "new_run_dir", "pack", "predict", "predict_proba", "predict_to_csv",
           "prepare_split", "pretrain", "prune", "resolve_model", "robustness", "run_dir_next_to", "serve", "shutdown",
           "split_methods", "train", "train_method", "tune"]
