"""The ``imgclass`` command line. Thin: parse options, call the public API, print.

Heavy libraries (numpy, scikit-learn, torch) are imported inside the commands so that
``imgclass --help`` answers instantly.
"""

from __future__ import annotations

import sys

from . import _commands  # noqa: F401,E402 - registers the commands defined outside app.py
from .app import app


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the Typer app and turns user errors into one line and exit code 2."""
    from ..errors import ImgclassError

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    import os

    secondary = os.environ.get("RANK", "0") not in ("", "0")  # under torchrun only rank 0 reports errors
    try:
        command = next((a for a in args if not a.startswith("-")), None)
        # only train and predict have --nproc; any other command reports it as an unknown option
        nproc = _nproc(args) if command in ("train", "predict") else None
        if nproc is not None and nproc > 1 and "WORLD_SIZE" not in os.environ:
            from .. import api

            code = api.launch(args, nproc)
            if argv is None:
                sys.exit(code)
            return code
        # standalone mode: Typer itself reports usage errors (exit 2) and --help; it always ends
        # in SystemExit, and our own errors pass through to be reported below.
        app(args=args, prog_name="imgclass")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except ImgclassError as exc:
        if debug:
            raise
        msg = str(exc).replace("\n", " ")
        if not secondary:
            print(f"imgclass: error: {msg}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("imgclass: interrupted", file=sys.stderr)
        code = 130
    except Exception as exc:  # a bug: short message unless --debug
        if debug:
            raise
        print(f"imgclass: internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback "
              "and please report it)", file=sys.stderr)
        code = 1
    if os.environ.get("WORLD_SIZE", "1") != "1":
        from .. import api

        api.shutdown()
    if argv is None:
        sys.exit(code)
    return code


def _nproc(args: list[str]) -> int | None:
    """The value of ``--nproc`` (train and predict: re-run the command on N processes with torchrun)."""
    from ..errors import ConfigError

    for i, a in enumerate(args):
        if a == "--nproc" or a.startswith("--nproc="):
            value = a.partition("=")[2] if "=" in a else (args[i + 1] if i + 1 < len(args) else "")
            if not value.isdigit() or int(value) < 1:
                raise ConfigError(f"--nproc {value}: give a number of processes, at least 1")
            return int(value)
    return None


__all__ = ["app", "main"]
