"""Registers every command on ``app`` (the import order is the order of ``imgclass --help``); each module
imports heavy libraries only inside its commands."""

from __future__ import annotations

# isort: off
from . import (  # noqa: F401
    cmd_train,
    cmd_evaluate,
    cmd_predict,
    cmd_tune,
    cmd_data,
    cmd_active,
    cmd_cluster,
    cmd_compress,
    cmd_curate,
    cmd_export,
    cmd_pretrain,
    cmd_serve,
)
# isort: on
