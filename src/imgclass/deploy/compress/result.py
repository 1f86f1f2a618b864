"""``CompressResult`` and the summary that becomes ``compress.json``: before/after rows, options,
timings, and the saved bundle."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..._util import atomic_write_json
from .inputs import data_name, method_name
from .measure import table_row

COMPRESS_JSON = "compress.json"


@dataclass
class CompressResult:
    """What ``prune`` and ``distill`` return: the compressed ``model``, the ``summary`` written to
    ``compress.json`` (``before``/``after`` rows and options) and the ``run_dir`` when ``out`` was given."""

    kind: str
    model: Any
    summary: dict[str, Any] = field(default_factory=dict)
    run_dir: Path | None = None

    @property
    def bundle(self) -> Path | None:
        """The saved bundle folder (``run_dir/model``), or ``None`` without ``out``."""
        return self.run_dir / "model" if self.run_dir is not None else None

    @property
    def before(self) -> dict[str, Any]:
        return self.summary["before"]

    @property
    def after(self) -> dict[str, Any]:
        return self.summary["after"]

    def rows(self) -> list[dict[str, Any]]:
        """The table rows in order (before, intermediate rows, after)."""
        return list(self.summary["rows"])

    def to_dict(self) -> dict[str, Any]:
        return dict(self.summary)


def summarise(kind: str, model, source_bundle: Path | None, data, ds, val_ds, split_source: str,
              options: dict[str, Any], run, rows: list[dict], after: dict[str, Any], history: list[dict],
              timings: dict[str, float], label: str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Save the bundle (with ``out``), measure it and write ``compress.json``; returns the summary."""
    bundle = None
    if run is not None:
        bundle = run.model_dir
        model.save(bundle, metrics=model.meta_.get("metrics", {}), data_fingerprint=ds.fingerprint(),
                   extra={"compressed": {"kind": kind, "from": str(source_bundle) if source_bundle else method_name(model),
                                         **{k: v for k, v in options.items() if v is not None}}})
        model.meta_["bundle"] = str(bundle)
        run.log(f"saved bundle to {bundle}")
    rows.append(table_row(label, model, bundle, after))
    summary: dict[str, Any] = {
        "kind": kind, "model": str(source_bundle) if source_bundle else method_name(model), "data": data_name(data),
        "val_images": len(val_ds), "split": split_source, "options": options,
        "before": rows[0], "after": rows[-1], "rows": rows, "history": history, "timings": timings,
        "bundle": str(bundle) if bundle is not None else None, **(extra or {})}
    if kind == "distill":
        summary["teacher"], summary["student"] = rows[0], rows[-1]
    b, a = rows[0], rows[-1]
    summary["change"] = {
        "bytes": a["bytes"] / max(b["bytes"], 1), "gzip_bytes": a["gzip_bytes"] / max(b["gzip_bytes"], 1),
        "img_per_s": a["img_per_s"] / max(b["img_per_s"], 1e-9),
        "accuracy_points": (a["accuracy"] - b["accuracy"]) * 100 if None not in (a["accuracy"], b["accuracy"]) else None}
    if run is not None:
        atomic_write_json(run.path / COMPRESS_JSON, summary)
        run.log_metrics({"split": "val", "final": True, **(after.get("val") or {})})
    return summary
