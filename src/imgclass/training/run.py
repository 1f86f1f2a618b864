"""The run directory: ``runs/<name>/`` with config, split, metrics log, bundle, report and log.

A run folder belongs to one run at a time: ``RunDir.create`` and ``RunDir.open`` take an exclusive lock
on ``<run>/.lock`` (``fcntl.flock``, held until the run ends, so a crashed run frees it) and a second
writer is refused with ``OutputError``. An existing non-empty ``--out`` is never silently renamed: it is
refused unless the caller asks to overwrite it (or resumes it with ``RunDir.open``).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

from .._util import atomic_write_text, to_jsonable, write_error
from ..errors import OutputError

try:
    import fcntl
except ImportError:  # Windows: an exclusive create of the lock file instead (a crashed run leaves it behind)
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"
#: Files that mark a folder as an imgclass run (``--overwrite`` clears only such folders).
RUN_MARKERS = frozenset({LOCK_NAME, "config.yaml", "split.json", "metrics.jsonl", "log.txt", "leaderboard.json",
                         "compress.json"})
OVERWRITE_REMEDY = "pass --overwrite to replace it, or choose another --out"


def default_run_dir(data: str | os.PathLike, method: str) -> Path:
    """``runs/<data>-<method>`` with the spec's punctuation made filename-safe (``RunDir.claim_name`` picks
    ``-2``, ``-3`` … when it is taken)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(data).stem or 'data'}-{method}").strip("-")
    return Path("runs") / slug


def _check_contents(path: Path, overwrite: bool, remedy: str) -> list[Path]:
    """The entries of ``path`` that ``overwrite`` would remove; refuses a folder with files unless
    ``overwrite``, and refuses to empty a folder that is not an imgclass run."""
    try:
        contents = [e for e in path.iterdir() if e.name != LOCK_NAME]
    except OSError as exc:
        raise write_error(path, exc) from None
    if contents and not overwrite:
        n = len(contents)
        raise OutputError(f"--out {path}: already holds {n} file{'s' if n != 1 else ''} (e.g. {contents[0].name}); "
                          f"{remedy}")
    if contents and not any(e.name in RUN_MARKERS for e in contents):
        raise OutputError(f"--out {path}: is not an imgclass run folder (no config.yaml, split.json or "
                          "metrics.jsonl), so --overwrite leaves it alone; choose another --out")
    return contents


class RunDir:
    """A run folder. ``RunDir.create("runs/cats")`` claims it (refused when another run holds it or it
    already has files); ``RunDir.create(None, hint="cats")`` claims the next free ``runs/cats``, ``-2``, …

    Layout: ``config.yaml``, ``split.json``, ``metrics.jsonl``, ``model/``, ``report.html``,
    ``plots/``, ``log.txt`` and the hidden ``.lock``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = None

    @staticmethod
    def claim_name(base: str | os.PathLike) -> Path:
        """Create and return the first free folder of ``base``, ``base-2``, ``base-3``, … (``mkdir`` without
        ``exist_ok``, so two processes never get the same one); for default run folders only."""
        base = Path(base)
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(base.parent, exc) from None
        path, n = base, 2
        while True:
            try:
                path.mkdir()
                return path
            except FileExistsError:
                path = base.with_name(f"{base.name}-{n}")
                n += 1
            except OSError as exc:
                raise write_error(path, exc) from None

    @classmethod
    def create(cls, out: str | os.PathLike | None, hint: str = "run", *, overwrite: bool = False,
               remedy: str = OVERWRITE_REMEDY) -> RunDir:
        """Claim ``out`` for a new run (``None``: the next free ``runs/<hint>``). A folder with files in it
        is refused (``remedy`` says what to do instead) unless ``overwrite``, which empties a run folder."""
        if out is None:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", hint).strip("-") or "run"
            out = cls.claim_name(Path("runs") / slug)
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise OutputError(f"--out {path}: exists and is not a folder; choose another --out")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(path, exc) from None
        run = cls(path)
        _check_contents(path, overwrite, remedy)  # before the lock: no .lock is left in a folder we refuse
        run._acquire()
        try:
            for e in _check_contents(path, overwrite, remedy):  # again: a run may have finished meanwhile
                if e.is_dir() and not e.is_symlink():
                    shutil.rmtree(e)
                else:
                    e.unlink()
        except OSError as exc:
            run.release()
            raise write_error(path, exc) from None
        except BaseException:
            run.release()
            raise
        return run

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunDir:
        """Claim an existing run folder to continue it (``--resume``); refused while another run holds it."""
        path = Path(path)
        if not path.is_dir():
            raise OutputError(f"--resume {path}: no such run folder")
        run = cls(path)
        run._acquire(what="--resume")
        return run

    def _acquire(self, what: str = "--out") -> None:
        """Take the run's lock (held until ``release`` or the end of the process) and record our pid in it."""
        lock = self.path / LOCK_NAME
        try:
            if fcntl is None:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            else:
                fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except FileExistsError:
            raise OutputError(f"{what} {self.path}: in use by another imgclass run ({lock} exists; delete it if "
                              "no run is using the folder)") from None
        except OSError as exc:
            raise write_error(lock, exc) from None
        f = os.fdopen(fd, "r+", encoding="ascii")
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                pid = f.read(32).strip()
                f.close()
                raise OutputError(f"{what} {self.path}: in use by another imgclass run"
                                  f"{f' (pid {pid})' if pid.isdigit() else ''}; wait for it to finish or choose "
                                  "another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._lock = f

    def release(self) -> None:
        """Give the folder up (the lock also ends with the process)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None
            if fcntl is None:
                (self.path / LOCK_NAME).unlink(missing_ok=True)

    # files
    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def plots_dir(self) -> Path:
        p = self.path / "plots"
        try:
            p.mkdir(exist_ok=True)
        except OSError as exc:
            raise write_error(p, exc) from None
        return p

    @property
    def split_file(self) -> Path:
        return self.path / "split.json"

    def write_config(self, config: dict[str, Any]) -> None:
        import yaml

        atomic_write_text(self.path / "config.yaml", yaml.safe_dump(to_jsonable(config), sort_keys=False))

    def log_metrics(self, record: dict[str, Any]) -> None:
        """Append one JSON line to ``metrics.jsonl`` (flushed and fsynced)."""
        rec = {"time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), **record}
        self._append("metrics.jsonl", json.dumps(to_jsonable(rec), ensure_ascii=False) + "\n", sync=True)

    def log(self, message: str) -> None:
        stamp = _dt.datetime.now().strftime("%H:%M:%S")
        self._append("log.txt", f"[{stamp}] {message}\n")

    def _append(self, name: str, text: str, sync: bool = False) -> None:
        """Append ``text`` in one write; a refused write (read-only, disk full) is an ``OutputError`` and a
        partly written line is cut off again, so the lines before it stay valid."""
        path = self.path / name
        data = text.encode("utf-8")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        except OSError as exc:
            raise write_error(path, exc) from None
        try:
            start = os.fstat(fd).st_size
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if sync:
                    os.fsync(fd)
            except OSError:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
                raise
        except OSError as exc:
            raise write_error(path, exc) from None
        finally:
            os.close(fd)

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"
