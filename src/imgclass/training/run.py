"""The run directory: ``runs/<name>/`` with config, split, metrics log, bundle, report and log."""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from pathlib import Path
from typing import Any

from .._util import atomic_write_text, to_jsonable


def default_run_dir(data: str | os.PathLike, method: str) -> Path:
    """``runs/<data>-<method>`` with the spec's punctuation made filename-safe (``RunDir.create`` adds
    ``-2``, ``-3`` … when it is taken)."""
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{Path(data).stem or 'data'}-{method}").strip("-")
    return Path("runs") / slug


class RunDir:
    """A run folder. ``RunDir.create("runs/cats")`` makes it (``runs/cats-2`` if it exists).

    Layout: ``config.yaml``, ``split.json``, ``metrics.jsonl``, ``model/``, ``report.html``,
    ``plots/``, ``log.txt``.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    @classmethod
    def create(cls, out: str | os.PathLike | None, hint: str = "run", exist_ok: bool = False) -> RunDir:
        if out is None:
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", hint).strip("-") or "run"
            base = Path("runs") / slug
        else:
            base = Path(out)
        path = base
        if not exist_ok:
            n = 2
            while path.exists() and any(path.iterdir()):
                path = base.with_name(f"{base.name}-{n}")
                n += 1
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    # files
    @property
    def model_dir(self) -> Path:
        return self.path / "model"

    @property
    def plots_dir(self) -> Path:
        p = self.path / "plots"
        p.mkdir(exist_ok=True)
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
        with open(self.path / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(to_jsonable(rec), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def log(self, message: str) -> None:
        stamp = _dt.datetime.now().strftime("%H:%M:%S")
        with open(self.path / "log.txt", "a", encoding="utf-8") as f:
            f.write(f"[{stamp}] {message}\n")

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"
