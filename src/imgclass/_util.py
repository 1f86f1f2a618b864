"""Small shared helpers: atomic writes, progress bars, JSON encoding, config (de)serialisation."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_UMASK_LOCK = threading.Lock()

#: errno values that mean "the disk or folder refuses the write" (not a bug): reported as ``OutputError``.
WRITE_ERRNOS = frozenset(getattr(errno, n) for n in ("EACCES", "EPERM", "EROFS", "ENOSPC", "EDQUOT", "EFBIG")
                         if hasattr(errno, n))


def current_umask() -> int:
    """The process umask, read without changing it when Linux shows it in ``/proc/self/status``; else the
    ``os.umask`` set-and-restore dance under a lock (threads writing at that instant would get mode 0)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    with _UMASK_LOCK:
        old = os.umask(0o022)
        os.umask(old)
    return old


def write_error(path: str | os.PathLike, exc: OSError):
    """The one-line ``OutputError`` for a failed write of ``path`` (read-only folder, full disk, ...)."""
    from .errors import OutputError

    why = exc.strerror or str(exc)
    hint = {errno.ENOSPC: "free some space or write elsewhere",
            getattr(errno, "EDQUOT", -1): "free some space or write elsewhere",
            errno.EROFS: "choose a writable folder", errno.EACCES: "choose a folder you may write to",
            errno.EPERM: "choose a folder you may write to"}.get(exc.errno or 0, "check the path or choose another one")
    return OutputError(f"cannot write {os.fspath(path)}: {why}; {hint}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file next to ``path`` for a writer that wants a file name (e.g. safetensors'
    ``save_file``); when the block ends without an error it is fsynced and renamed over ``path``,
    otherwise removed, so ``path`` is either the old file or the complete new one.

    The file gets the mode a plain ``open`` would give (``0o666 & ~umask``, not ``mkstemp``'s 0600), and a
    refused write (read-only folder, full disk) raises ``OutputError`` naming ``path``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        os.close(fd)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it 0600
        try:
            yield Path(tmp)
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS:
                raise write_error(path, exc) from None
            raise
        try:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise write_error(path, exc) from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same folder, fsync, rename."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def figure_png(fig, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed (the one way plots are rendered)."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def to_jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays and paths so ``json.dumps`` accepts them."""
    import numpy as np

    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def dumps(obj: Any, indent: int | None = 2) -> str:
    return json.dumps(to_jsonable(obj), indent=indent, ensure_ascii=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, dumps(obj) + "\n")


_C = TypeVar("_C", bound="ConfigDict")


class ConfigDict:
    """``to_dict``/``from_dict`` for an options dataclass (``TrainConfig``, ``PretrainConfig``).

    ``to_dict`` is ``dataclasses.asdict``; ``from_dict`` ignores unknown keys (configs written by
    other versions), so validation stays in the dataclass's ``__post_init__``.
    """

    def to_dict(self) -> dict[str, Any]:
        from dataclasses import asdict

        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[_C], d: dict[str, Any]) -> _C:
        from dataclasses import fields

        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in d.items() if k in known})


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling folder; on success it replaces ``path`` in one rename.

    A reader never sees a half-written bundle: either the old folder or the new one. A refused write
    (read-only folder, full disk) raises ``OutputError`` and leaves the old folder as it was.
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # mode 0o777 & ~umask, like any folder
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        try:
            yield tmp
        except OSError as exc:
            if exc.errno in WRITE_ERRNOS:
                raise write_error(path, exc) from None
            raise
        _replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, path: Path) -> None:
    """Fsync the files of ``tmp`` and rename it to ``path``; the old ``path`` is put back if that fails."""
    old = None
    try:
        for f in tmp.iterdir():
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(path, old)
        os.replace(tmp, path)
    except OSError as exc:
        if old is not None and not path.exists():
            with contextlib.suppress(OSError):
                os.replace(old, path)
        raise write_error(path, exc) from None
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class _NullBar:
    def advance(self, n: int = 1) -> None:
        pass


def _progress_enabled() -> bool:
    if os.environ.get("RANK", "0") not in ("", "0"):  # under torchrun only rank 0 draws bars
        return False
    flag = os.environ.get("IMGCLASS_PROGRESS", "")
    if flag in ("0", "1"):
        return flag == "1"
    return sys.stderr.isatty()


@contextlib.contextmanager
def progress_bar(total: int | None, description: str, unit: str = "img") -> Iterator[Any]:
    """A rich progress bar on stderr with count, rate and ETA; ``bar.advance(n)`` moves it.

    Off when stderr is not a terminal (logs and CI stay clean); ``IMGCLASS_PROGRESS=1`` forces it on.
    """
    if not _progress_enabled():
        yield _NullBar()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[cyan]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=Console(stderr=True)) as prog:
        task = prog.add_task(description, total=total, rate="")

        class _Bar:
            def advance(self, n: int = 1) -> None:
                prog.advance(task, n)
                speed = prog.tasks[task].speed
                if speed:
                    prog.update(task, rate=f"{speed:,.1f} {unit}/s")

        yield _Bar()
