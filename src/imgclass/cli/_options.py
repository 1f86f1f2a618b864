"""Options and help texts that several commands share, written once. Defaults come from
``imgclass.limits`` (a leaf without numpy), so ``--help`` stays instant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..limits import DEFAULT_MAX_PIXELS, SERVE_MAX_PIXELS  # noqa: F401 - the commands' defaults

TASK_HELP = "Override the inferred task: binary, multiclass, multilabel or hierarchical."
MAX_PIXELS_HELP = "Refuse images larger than this many pixels (decompression-bomb guard)."
SERVE_MAX_PIXELS_HELP = (f"{MAX_PIXELS_HELP} Bigger: 422. Smaller than the CLI's {DEFAULT_MAX_PIXELS:,}: a server "
                         "decodes what strangers send.")
JOBS_HELP = "Worker processes for decoding and features (default: all cores)."
DUPLICATES_HELP = ("An image listed more than once or in two splits: drop (default, with a warning: repeats with "
                   "the same label collapse into one entry, the train one when splits differ; every entry of an "
                   "image with conflicting labels is left out; an image in both train and val is left out of "
                   "val), keep (use every entry, with a warning) or error (refuse).")
OVERWRITE_HELP = "Empty an existing run folder given as --out and write into it (only imgclass run folders)."
TAXONOMY_HELP = "JSON/YAML tree (child: parent) making the task hierarchical."
TTA_HELP = "Test-time augmentation: none, flip, crops (6 views, no mirrors) or flip+crops (10 views)."
MODEL_HELP = "Model bundle folder (runs/NAME/model)."
LABELLED_HELP = "Labelled folder, CSV or JSONL."
SPLIT_HELP = "Reuse a split.json from an earlier run."
VAL_SPLIT_HELP = "Fraction held out for validation (ignored with pre-split folders)."

TaskOpt = Annotated[str | None, typer.Option(help=TASK_HELP)]
JobsOpt = Annotated[int | None, typer.Option(help=JOBS_HELP)]
MaxPixelsOpt = Annotated[int, typer.Option(help=MAX_PIXELS_HELP)]
ServeMaxPixelsOpt = Annotated[int, typer.Option(help=SERVE_MAX_PIXELS_HELP)]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help=OVERWRITE_HELP)]
SplitOpt = Annotated[Path | None, typer.Option(help=SPLIT_HELP)]

_PRE = "Pre-processing"
SizeOpt = Annotated[int | None, typer.Option("--size", help="Resize images to SIZE x SIZE first (default: the features' own size).", rich_help_panel=_PRE)]
ResizeOpt = Annotated[str, typer.Option("--resize", help="How to reach --size: squash, pad (letterbox) or crop (centre).", rich_help_panel=_PRE)]
GrayOpt = Annotated[bool, typer.Option("--grayscale", help="Drop colour.", rich_help_panel=_PRE)]
DenoiseOpt = Annotated[str, typer.Option("--denoise", help="none, gaussian, median or wiener.", rich_help_panel=_PRE)]
EqualizeOpt = Annotated[str, typer.Option("--equalize", help="none, hist (global) or clahe (adaptive).", rich_help_panel=_PRE)]


def preprocess(size, resize, grayscale, denoise, equalize) -> dict | None:
    """The Preprocess dict from the CLI flags, or None when every flag is at its default."""
    pre = {"size": size, "resize": resize, "grayscale": grayscale, "denoise": denoise, "equalize": equalize}
    if pre == {"size": None, "resize": "squash", "grayscale": False, "denoise": "none", "equalize": "none"}:
        return None
    return pre
