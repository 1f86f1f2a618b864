"""Run folders and processes: default folders, the method a run is named after, torchrun."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from ..training import RunDir
from ._train import tuned_params


def default_run_dir(data: str | os.PathLike, what: str) -> Path:
    """The first free ``runs/<data>-<what>`` (then ``-2``, ``-3``, …), created now so no other run takes it."""
    from ..training import default_run_dir as run_name

    return RunDir.claim_name(run_name(data, what))


def run_dir_next_to(model: str | os.PathLike, suffix: str) -> Path:
    """The first free ``runs/NAME-<suffix>`` next to the bundle ``runs/NAME/model``, created now."""
    p = Path(model)
    run = p.parent if p.name == "model" else p
    return RunDir.claim_name(run.with_name(f"{run.name}-{suffix}"))


@contextmanager
def new_run_dir(data: str | os.PathLike, what: str, out: str | os.PathLike | None = None) -> Iterator[Path]:
    """``out`` when given, else ``default_run_dir`` for a run that may fail before it writes anything: the
    folders made for it are removed again when the body raises. Under torchrun only rank 0 claims a
    default folder; the others get its name."""
    import contextlib

    from ..training import default_run_dir as run_name
    from ..training.distributed import is_main

    if out is not None:
        yield Path(out)
        return
    out, claimed = run_name(data, what), []
    if is_main():
        made = [p for p in reversed(out.parents) if not p.exists()]
        out = RunDir.claim_name(out)
        claimed = [*made, out]
    try:
        yield out
    except BaseException:
        for d in reversed(claimed):  # nothing written yet: give the default name back (not if in use)
            with contextlib.suppress(OSError):
                os.rmdir(d)
        raise


def train_method(method: str | None = None, params: str | os.PathLike | dict | None = None) -> str:
    """The method ``train`` uses: ``method``, else the one recorded with the tuned ``params``, else ``hog+svm``."""
    return tuned_params(method, params)[0] if params is not None else method or "hog+svm"


def is_main_process() -> bool:
    """False on the ranks other than 0 under torchrun (they neither write nor report)."""
    from ..training.distributed import is_main

    return is_main()


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run the command line ``argv`` (its ``--nproc`` dropped) on ``nproc`` local processes with torchrun;
    returns the exit code."""
    from ..training.distributed import launch as _launch
    from ..training.distributed import strip_option

    return _launch(strip_option(argv, "--nproc"), nproc)


def shutdown() -> None:
    """Leave torchrun's process group at the end of a distributed command (nothing without one)."""
    from ..training.distributed import shutdown as _shutdown

    _shutdown()
