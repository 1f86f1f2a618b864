"""``imgclass prune`` and ``imgclass distill``: smaller deep models, with size, speed and accuracy before and after."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import JobsOpt, TaskOpt
from ._output import console, err, print_json
from .app import app

SPLIT_HELP = ("Validation split: the model's own run split when DATA is its training data, else this fraction "
              "(seeded, as imgclass train makes it).")


def _table(summary: dict, title: str):
    from rich.table import Table

    t = Table(title=title, title_justify="left")
    metric = "val acc" if (summary["after"].get("metric") or "accuracy") == "accuracy" else "val F1"
    cols = ["model", "MB", "gzip MB", "non-zero", "sparsity", "img/s", metric]
    if summary["kind"] == "distill":
        cols.append("agree")
    for c in cols:
        t.add_column(c, justify="left" if c == "model" else "right")

    def f(v, fmt):
        return "—" if v is None else format(v, fmt)

    short = {"pruned, no fine-tuning": "pruned only"}
    for i, r in enumerate(summary["rows"]):
        last = i == len(summary["rows"]) - 1
        name = ("pruned + fine-tuned" if summary["kind"] == "prune" and last
                else f"student {r['method']}" if summary["kind"] == "distill" and last
                else f"{r['name']} {r['method']}" if i == 0 else short.get(r["name"], r["name"]))
        mb, gz = r.get("bytes"), r.get("gzip_bytes")
        nz = r.get("nonzero_params")
        cells = [name, f(mb / 1e6 if mb is not None else None, ".2f"), f(gz / 1e6 if gz is not None else None, ".2f"),
                 f(nz / 1e6 if nz is not None else None, ".2f") + ("M" if nz is not None else ""),
                 f(r.get("sparsity"), ".1%"), f(r.get("img_per_s"), ",.0f"), f(r.get("accuracy"), ".4f")]
        if summary["kind"] == "distill":
            cells.append(f(r.get("agreement"), ".1%") if last else "")
        t.add_row(*cells)
    return t


def _report(res, json_out: bool, title: str) -> None:
    s = res.summary
    if json_out:
        print_json(s)
        return
    con = console()
    con.print(_table(s, title))
    if res.bundle is not None:
        con.print(f"run directory: {res.run_dir}   bundle: {res.bundle}")
        con.print(f"use it like any bundle: imgclass predict {res.bundle} IMAGES...  |  imgclass export {res.bundle}")


@app.command(epilog="Example: imgclass prune runs/cats/model photos/ --amount 0.5 --epochs 2 --out runs/cats-pruned")
def prune(
    model: Annotated[Path, typer.Argument(metavar="MODEL", help="Deep model bundle folder (runs/NAME/model).")],
    data: Annotated[str, typer.Argument(metavar="DATA", help="Labelled data to fine-tune and validate on (the training data: folder, CSV or JSONL).")],
    amount: Annotated[float, typer.Option(help="Fraction of the conv/linear weights to zero, in (0, 1).")] = 0.5,
    structured: Annotated[bool, typer.Option("--structured", help="Zero whole conv output channels (L2 norm, per layer) instead of single weights (global L1). The masks zero the channels; the tensors keep their shape, so the file is not smaller.")] = False,
    epochs: Annotated[int, typer.Option(help="Fine-tuning epochs after pruning (0 = none).")] = 2,
    lr: Annotated[float | None, typer.Option(help="Fine-tuning learning rate (default: a quarter of the model's).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Fine-tuning batch size (default: the model's).")] = None,
    val_split: Annotated[float, typer.Option(help=SPLIT_HELP)] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for the split and the fine-tuning.")] = 0,
    split: Annotated[Path | None, typer.Option(help="Use this split.json.")] = None,
    task: TaskOpt = None,
    jobs: JobsOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory for the pruned bundle and compress.json (default runs/NAME-pruned).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Prune a deep model by weight magnitude, fine-tune it briefly and save it as a new bundle; reports size, speed and accuracy before and after."""
    from .. import api
    from ..errors import DataError

    if not (model / "model.json").exists():
        raise DataError(f"MODEL {model}: not a model bundle (no model.json); pass runs/NAME/model")
    res = api.prune(model, data, amount=amount, structured=structured, epochs=epochs, lr=lr, batch_size=batch_size,
                    val_split=val_split, seed=seed, split_file=str(split) if split else None, task=task, n_jobs=jobs,
                    out=out if out is not None else api.run_dir_next_to(model, "pruned"), log=err)
    kind = "structured" if structured else "unstructured"
    _report(res, json_out, f"prune {amount:.0%} {kind}, {epochs} epoch{'s' if epochs != 1 else ''} of "
                           f"fine-tuning; {res.summary['val_images']} validation images")


@app.command(epilog="Example: imgclass distill runs/cats/model photos/ --student smallcnn --temperature 4 --alpha 0.5")
def distill(
    teacher: Annotated[Path, typer.Argument(metavar="TEACHER", help="Teacher bundle folder (deep or classical).")],
    data: Annotated[str, typer.Argument(metavar="DATA", help="Labelled training data (folder, CSV or JSONL).")],
    student: Annotated[str, typer.Option(help="Student method: smallcnn, mobilenetv3_small_100@scratch (no offline ImageNet weights: train it from scratch), resnet18@scratch, lite0, ...")] = "smallcnn",
    temperature: Annotated[float, typer.Option(help="Softmax temperature T for teacher and student (> 0).")] = 4.0,
    alpha: Annotated[float, typer.Option(help="Weight of the distillation term (T^2 KL to the teacher) against cross-entropy with the labels; 0 = plain training.")] = 0.5,
    epochs: Annotated[int | None, typer.Option(help="Student epochs (default: the method's, as in imgclass train).")] = None,
    lr: Annotated[float | None, typer.Option(help="Student peak learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Student batch size.")] = None,
    img_size: Annotated[int | None, typer.Option(help="Student input size (default: the backbone's; the teacher keeps its own).")] = None,
    val_split: Annotated[float, typer.Option(help=SPLIT_HELP)] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed for the split and the training.")] = 0,
    split: Annotated[Path | None, typer.Option(help="Use this split.json.")] = None,
    task: TaskOpt = None,
    jobs: JobsOpt = None,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Run directory for the student bundle and compress.json (default runs/NAME-distill-STUDENT).")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
):
    """Train a small student model on a teacher's soft predictions (knowledge distillation); reports teacher vs student."""
    import re

    from .. import api
    from ..errors import DataError

    if not (teacher / "model.json").exists():
        raise DataError(f"TEACHER {teacher}: not a model bundle (no model.json); pass runs/NAME/model")
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", student).strip("-")
    res = api.distill(teacher, data, student=student, temperature=temperature, alpha=alpha, epochs=epochs, lr=lr,
                      batch_size=batch_size, img_size=img_size, val_split=val_split, seed=seed,
                      split_file=str(split) if split else None, task=task, n_jobs=jobs,
                      out=out if out is not None else api.run_dir_next_to(teacher, f"distill-{slug}"), log=err)
    _report(res, json_out, f"distill into {student} (T={temperature:g}, alpha={alpha:g}; "
                           f"{res.summary['val_images']} val images)")
