"""Batch prediction of a folder of any size into a CSV, resumable.

Images are predicted chunk by chunk and each chunk's rows are appended and flushed to disk (``fsync``)
before the next chunk starts. A run that is killed and started again reads the file, drops a last line
that was cut off mid-write, and skips every image already there, so each image ends up in the file
exactly once, in input order. Unreadable images get a row with an ``error`` instead of stopping the run.

Under torchrun (``imgclass predict MODEL DIR --out preds.csv --nproc N``, or ``torchrun ... -m imgclass
predict ...``) each rank predicts one contiguous block of the images still to do into its own part file
(``preds.csv.part<rank>-of<world>``, resumable the same way), then rank 0 appends the parts to the CSV in
input order and removes them.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._util import progress_bar, write_error
from ..errors import DataError, OutputError

COLUMNS = ("path", "label", "probability", "top_k", "error")


def _resolved(src: str) -> str:
    """The key resume matches on: the real absolute path, so ``imgs/a.png`` and ``/data/imgs/a.png`` are one image
    (a tar-shard member keeps its name)."""
    return src if type(src) is not str else os.path.realpath(src)


def _existing(path: Path) -> tuple[set[str], list[str] | None]:
    """Paths already predicted in ``path`` and its header; a last line without its newline (a write cut
    off by a kill) is truncated away first."""
    if not path.exists() or path.stat().st_size == 0:
        return set(), None
    with open(path, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            f.truncate(cut)
            data = data[:cut]
    text = data.decode("utf-8")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return set(), None
    header = rows[0]
    if "path" not in header:
        raise DataError(f"{path}: exists but is not a prediction CSV (no path column); choose another --out")
    k = header.index("path")
    return {_resolved(r[k]) for r in rows[1:] if len(r) > k}, header


def _row(src: str, pred, error: str | None) -> dict[str, Any]:
    if pred is None:
        return {"path": src, "label": "", "probability": "", "top_k": "", "error": error or "unreadable"}
    # multi-label: every label above its threshold, joined with "|"; hierarchical: the decided node
    label = "|".join(lab for lab, _ in pred.labels) if len(pred.labels) > 1 else pred.label
    top = ";".join(f"{lab}:{p:.4f}" for lab, p in pred.top)
    prob = pred.probability
    return {"path": src, "label": label or "", "probability": "" if prob is None else f"{prob:.6f}", "top_k": top,
            "error": ""}


def predict_to_csv(model, sources: Sequence[str], out: str | os.PathLike, *, top_k: int = 3, chunk: int = 256,
                   tta: str | None = None, log: Callable[[str], Any] = lambda m: None) -> dict[str, int]:
    """Predict ``sources`` (paths) with ``model`` into ``out`` (CSV: path, label, probability, top_k,
    error), skipping the ones already in ``out``. Returns counts: total, skipped (done earlier),
    predicted, errors."""
    from ..training import distributed

    if distributed.init("cpu").enabled:
        return _predict_sharded(model, sources, Path(out), top_k=top_k, chunk=chunk, tta=tta, log=log)
    return _predict_part(model, sources, out, top_k=top_k, chunk=chunk, tta=tta, log=log)


def _predict_part(model, sources: Sequence[str], out: str | os.PathLike, *, top_k: int, chunk: int,
                  tta: str | None, log: Callable[[str], Any]) -> dict[str, int]:
    from ..models import predictions
    from ..models.tta import predict_proba_tta

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        f = open(out, "ab", buffering=0)  # raw: each chunk is one write that can be undone
    except OSError as exc:
        raise write_error(out, exc) from None
    with f, progress_bar(len(sources), "predict") as bar:
        _lock(f, out)  # a second 'predict --out' to the same file would interleave rows
        done, header = _existing(out)
        if header is not None and list(header) != list(COLUMNS):
            raise DataError(f"{out}: has other columns ({', '.join(header)}); choose another --out")
        todo = [s for s in sources if _resolved(s) not in done]
        if done:
            log(f"{out}: {len(done)} images already predicted, {len(todo)} to go")
        counts = {"total": len(sources), "skipped": len(sources) - len(todo), "predicted": 0, "errors": 0}
        bar.advance(counts["skipped"])
        if header is None:
            _append(f, out, ",".join(COLUMNS) + "\r\n")
        for s in range(0, len(todo), chunk):
            batch = list(todo[s:s + chunk])
            P = predict_proba_tta(model, batch, tta)
            errors = {p: r for p, r in getattr(model, "errors_", [])}
            preds = predictions(model, P, top_k)
            buf = io.StringIO()
            bw = csv.DictWriter(buf, COLUMNS)
            for src, pred in zip(batch, preds):
                row = _row(src, pred, errors.get(src))
                counts["errors"] += bool(row["error"])
                bw.writerow(row)
            _append(f, out, buf.getvalue())
            counts["predicted"] += len(batch)
            bar.advance(len(batch))
    return counts


def _lock(f, out: Path) -> None:
    """An exclusive lock on the CSV for this run (none where ``fcntl`` is missing)."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        raise OutputError(f"--out {out}: another 'imgclass predict' is writing it; wait for it or choose another "
                          "--out") from None


def _append(f, out: Path, text: str) -> None:
    """One chunk's rows in one write, flushed to disk; on a refused write (disk full) the partial chunk is cut
    off again so the rows before it stay valid, and the error names ``out``."""
    start = os.fstat(f.fileno()).st_size
    try:
        view = memoryview(text.encode("utf-8"))
        while view:
            view = view[f.write(view):]
        os.fsync(f.fileno())
    except OSError as exc:
        try:
            os.ftruncate(f.fileno(), start)
        except OSError:
            pass
        raise write_error(out, exc) from None


def _predict_sharded(model, sources: Sequence[str], out: Path, *, top_k: int, chunk: int, tta: str | None,
                     log: Callable[[str], Any]) -> dict[str, int]:
    """One rank's share of a distributed batch prediction, then rank 0 merges the parts in input order."""
    from ..training import distributed

    d = distributed.info()
    if d.is_main:  # rank 0 alone may truncate a cut-off last line
        out.parent.mkdir(parents=True, exist_ok=True)
        _existing(out)
    distributed.barrier()
    done, header = _existing(out)
    if header is not None and list(header) != list(COLUMNS):
        raise DataError(f"{out}: has other columns ({', '.join(header)}); choose another --out")
    todo = [s for s in sources if _resolved(s) not in done]
    lo, hi = distributed.shard_range(len(todo), d.rank, d.world)
    part = out.with_name(f"{out.name}.part{d.rank}-of{d.world}")
    c = _predict_part(model, todo[lo:hi], part, top_k=top_k, chunk=chunk, tta=tta,
                      log=log if d.is_main else (lambda m: None))
    predicted, errors = distributed.all_reduce_sum([c["predicted"] + c["skipped"], c["errors"]])
    distributed.barrier()
    if d.is_main:
        parts = [out.with_name(f"{out.name}.part{r}-of{d.world}") for r in range(d.world)]
        rows: dict[str, list[str]] = {}
        for p in parts:
            with open(p, encoding="utf-8", newline="") as f:
                for r in list(csv.reader(f))[1:]:
                    rows[r[0]] = r
        with open(out, "a", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            if header is None:
                w.writerow(COLUMNS)
            # the blocks are contiguous, so writing in todo order is input order
            w.writerows(rows[s] for s in todo if s in rows)
            f.flush()
            os.fsync(f.fileno())
        for p in parts:
            p.unlink(missing_ok=True)
    distributed.barrier()
    return {"total": len(sources), "skipped": len(done), "predicted": int(predicted), "errors": int(errors)}


__all__ = ["COLUMNS", "predict_to_csv"]
