"""What the commands print: one-line messages on stderr, JSON on stdout, rich tables and the
``warning:`` lines for skipped images and data warnings. Imports nothing heavy."""

from __future__ import annotations

import os
from typing import Any

import typer


def console(stderr: bool = False):
    """A rich console that neither highlights nor wraps (the lines go to logs and pipes)."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=False)


def err(msg: str) -> None:
    """One line on stderr: progress, notes and warnings."""
    typer.echo(msg, err=True)


def print_json(obj: Any) -> None:
    """``obj`` as indented JSON on stdout (numpy values and paths made plain)."""
    from .. import api

    typer.echo(api.dumps(obj))


def warn_skipped(skipped) -> None:
    """A ``warning:`` line per unreadable image (the first 20, then a count)."""
    for path, reason in skipped[:20]:
        err(f"warning: skipped {path}: {reason}")
    if len(skipped) > 20:
        err(f"warning: ... and {len(skipped) - 20} more unreadable images")


def notes(lines) -> None:
    """A ``note:`` line each on stderr."""
    for note in lines:
        err(f"note: {note}")


def install_data_warnings() -> None:
    """Show every ``DataWarning`` (rows skipped for a bad label, ...) as one ``warning:`` line on stderr."""
    import warnings

    from ..errors import DataWarning

    warnings.simplefilter("always", DataWarning)
    if getattr(warnings.showwarning, "_imgclass", False):
        return
    default = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            err(f"warning: {message}")
        else:
            default(message, category, filename, lineno, file, line)

    show._imgclass = True  # type: ignore[attr-defined]
    warnings.showwarning = show


def metric_table(title: str, metrics: dict, keys=None):
    """A two-column table of the numeric ``metrics`` (all, or those in ``keys``)."""
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    t.add_column("metric")
    t.add_column("value", justify="right")
    for k, v in metrics.items():
        if (keys is None or k in keys) and isinstance(v, (int, float)):
            t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    return t


def per_class_table(per_class):
    """Precision, recall, F1 and support per class."""
    from rich.table import Table

    t = Table(title="per class", title_justify="left")
    for c in ("class", "precision", "recall", "f1", "support"):
        t.add_column(c, justify="left" if c == "class" else "right")
    for r in per_class:
        t.add_row(r["class"], f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    return t


def human_size(n: float) -> str:
    """``512 B``, ``1.5 KB``, ``20.3 MB``, ..."""
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def short_path(path: str) -> str:
    """``path`` relative to the working folder when it lies inside it, else as given."""
    try:
        rel = os.path.relpath(path)
    except ValueError:
        return path
    return path if rel.startswith("..") else rel
