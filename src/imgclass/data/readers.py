"""Readers that turn a folder, CSV or JSONL file (or tar shards, see ``shards``) into an ``ImageDataset``."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError, DataWarning
from .dataset import TASKS, UNLABELLED, ImageDataset
from .decode import is_image_file, open_regular

PATH_COLUMNS = ("path", "file", "filename", "filenames", "filepath", "image", "img", "image_path")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val",
                 "validation": "val", "dev": "val", "test": "test", "testing": "test"}
HIDDEN_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini"}
#: A CSV/JSONL file larger than this is refused (read in one piece; 1 GiB is some ten million rows).
MAX_TABLE_BYTES = 1 << 30
_SHOW_LINES = 5


def _hidden(name: str) -> bool:
    return name.startswith(".") or name in HIDDEN_NAMES


def find_images(root: str | os.PathLike) -> list[str]:
    """Image files under ``root``, recursively, sorted; hidden files and folders are skipped.
    Symlinked folders are followed (each real folder once, so link cycles end)."""
    root = os.fspath(root)
    found = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        found.extend(os.path.join(dirpath, f) for f in filenames if not _hidden(f) and is_image_file(f))
    return sorted(found)


# --------------------------------------------------------------------------- taxonomy
def read_taxonomy(path: str | os.PathLike) -> dict[str, str | None]:
    """Read a JSON/YAML taxonomy into ``{node: parent}``.

    Accepted shapes: a child→parent map (``{"cat": "animal", "animal": null}``) or a nested tree
    (``{"animal": {"mammal": ["cat", "dog"]}, "vehicle": ["car"]}``).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
        doc = json.loads(text) if p.suffix.lower() == ".json" else _yaml_load(text)
    except (OSError, ValueError) as exc:
        raise DataError(f"{p}: cannot read taxonomy ({exc}); give a JSON or YAML tree") from None
    if not isinstance(doc, dict) or not doc:
        raise DataError(f"{p}: taxonomy must be a non-empty mapping")
    parents: dict[str, str | None] = {}
    if all(isinstance(v, str) or v is None for v in doc.values()):
        for child, parent in doc.items():
            parents[str(child)] = None if parent is None else str(parent)
        for parent in list(parents.values()):
            if parent is not None and parent not in parents:
                parents[parent] = None
    else:
        def walk(node, parent):
            if isinstance(node, dict):
                for k, v in node.items():
                    parents[str(k)] = parent
                    walk(v, str(k))
            elif isinstance(node, list):
                for v in node:
                    walk(v, parent)
            elif node is not None:
                parents[str(node)] = parent
        walk(doc, None)
    _check_acyclic(parents, str(p))
    return parents


def _yaml_load(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValueError(str(exc)) from None


def _check_acyclic(parents: dict[str, str | None], where: str) -> None:
    for node in parents:
        seen = set()
        while node is not None:
            if node in seen:
                raise DataError(f"{where}: taxonomy has a cycle through {node!r}")
            seen.add(node)
            node = parents.get(node)


def _attach_taxonomy(ds: ImageDataset, taxonomy: dict[str, str | None], where: str) -> ImageDataset:
    # leaves may be named by their last component ("cat") while classes carry full paths
    missing = [c for c in ds.classes if c not in taxonomy]
    if missing:
        raise DataError(f"{where}: classes {missing[:5]} are not in the taxonomy; add them as leaves")
    ds.taxonomy = {n: p for n, p in taxonomy.items()}
    ds.task = "hierarchical"
    if ds.targets is not None and ds.targets.ndim == 2:
        raise DataError(f"{where}: a taxonomy needs one label per image, not label lists")
    return ds


# --------------------------------------------------------------------------- folders
def _label_dir(root: str, path: str) -> tuple[str, ...]:
    rel = Path(path).relative_to(root)
    return rel.parts[:-1]


def read_folder(root: str | os.PathLike, name: str | None = None) -> ImageDataset:
    """Folder per class (``root/<class>/*``), nested class folders (hierarchical), pre-split folders
    (``root/{train,val,test}/<class>/*``) or a flat folder of unlabelled images."""
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise DataError(f"{root}: folder not found; pass a folder of images, a CSV or a JSONL file")
    name = name or Path(root).name
    subdirs = {d.lower(): d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not _hidden(d)}
    split_dirs = {SPLIT_ALIASES[k]: v for k, v in subdirs.items() if k in SPLIT_ALIASES}
    if "train" in split_dirs and len(split_dirs) >= 2:
        items: list[tuple[str, tuple[str, ...], str]] = []
        for split, d in split_dirs.items():
            sroot = os.path.join(root, d)
            items.extend((p, _label_dir(sroot, p), split) for p in find_images(sroot))
    else:
        items = [(p, _label_dir(root, p), "") for p in find_images(root)]
    if not items:
        raise DataError(f"{root}: no images found (looked for {', '.join(sorted(_exts()))}, recursively)")
    return _from_label_paths(items, root, name)


def _exts() -> set[str]:
    from .decode import IMAGE_EXTENSIONS

    return set(IMAGE_EXTENSIONS)


def _from_label_paths(items, root: str, name: str) -> ImageDataset:
    depths = {len(parts) for _, parts, _ in items}
    labelled = [parts for _, parts, _ in items if parts]
    if not labelled:  # every image directly in the folder: nothing is labelled
        return ImageDataset(sources=[p for p, _, _ in items], targets=None, classes=[], task=None,
                            root=root, name=name)
    if 0 in depths:
        n0 = sum(1 for _, parts, _ in items if not parts)
        warnings.warn(f"{root}: {n0} images lie outside class folders and are treated as unlabelled",
                      DataWarning, stacklevel=3)
    hierarchical = max(depths) > 1
    labels = ["/".join(parts) if parts else None for _, parts, _ in items]
    classes = sorted({lab for lab in labels if lab is not None})
    index = {c: i for i, c in enumerate(classes)}
    targets = np.array([index[lab] if lab is not None else UNLABELLED for lab in labels], dtype=np.int64)
    taxonomy = None
    if hierarchical:
        taxonomy = {}
        for c in classes:
            parts = c.split("/")
            for k in range(1, len(parts) + 1):
                node = "/".join(parts[:k])
                taxonomy[node] = "/".join(parts[:k - 1]) or None
    task = "hierarchical" if hierarchical else ("binary" if len(classes) == 2 else "multiclass")
    splits = _splits_from([s for _, _, s in items])
    return ImageDataset(sources=[p for p, _, _ in items], targets=targets, classes=classes, task=task,
                        taxonomy=taxonomy, splits=splits, root=root, name=name)


def _splits_from(split_names: Sequence[str]) -> dict[str, np.ndarray] | None:
    if not any(split_names):
        return None
    arr = np.asarray(split_names)
    return {s: np.flatnonzero(arr == s) for s in ("train", "val", "test") if (arr == s).any()}


# --------------------------------------------------------------------------- tables (CSV / JSONL)
def _resolve(paths: list[str], base: str, image_root: str | None, where: str) -> list[str]:
    """Resolve relative paths against ``image_root`` or the table's folder.

    When the first paths do not exist there, a sibling ``images/`` (or ``imgs/``, ``img/``) folder is
    tried, since many public datasets ship ``labels.csv`` next to ``images/``.
    """
    if image_root is not None:
        bases = [os.path.abspath(image_root)]
    else:
        bases = [base] + [os.path.join(base, d) for d in ("images", "imgs", "img", "data")]
    probe = [p for p in paths[:20] if not os.path.isabs(p)]
    chosen = bases[0]
    if probe:
        for b in bases:
            if all(os.path.exists(os.path.join(b, p)) for p in probe):
                chosen = b
                break
    return [os.path.normpath(p if os.path.isabs(p) else os.path.join(chosen, p)) for p in paths]


def _split_label_list(cell: str) -> list[str]:
    sep = "|" if "|" in cell else ("," if "," in cell else (";" if ";" in cell else None))
    parts = cell.split(sep) if sep else [cell]
    return [p.strip() for p in parts if p.strip()]


def _scalar(v) -> bool:
    """A usable label value: a non-empty string, a number or a bool (not null, NaN, an object or a list)."""
    if isinstance(v, str):
        return bool(v.strip())
    if isinstance(v, float):
        return math.isfinite(v)
    return isinstance(v, (int, bool))


def _parse_labels(values: list, multi: bool) -> tuple[list[list[str]], list[int], list[int]]:
    """Labels per row, and the rows whose label is empty and whose label is not a single value (an object,
    a list where one label is expected, null, or a list holding such values)."""
    per_item, empty, shaped = [], [], []
    for i, v in enumerate(values):
        if multi and isinstance(v, list) and all(isinstance(x, str) or _scalar(x) for x in v):
            per_item.append([str(x).strip() for x in v if str(x).strip()])
        elif multi and isinstance(v, str):
            per_item.append(_split_label_list(v))  # an empty CSV cell: no labels, a valid multi-label row
        elif _scalar(v):
            per_item.append(_split_label_list(str(v)) if multi else [str(v).strip()])
        else:
            per_item.append([])
            blank = v is None and not multi or isinstance(v, str)
            (empty if blank else shaped).append(i)
    return per_item, empty, shaped


def _lines(rows: list[int], lines: list[int]) -> str:
    shown = ", ".join(str(lines[i]) for i in rows[:_SHOW_LINES])
    return f"line{'s' if len(rows) != 1 else ''} {shown}{', ...' if len(rows) > _SHOW_LINES else ''}"


def _records_to_dataset(records: list[dict], where: str, base: str, name: str,
                        image_root: str | None, group_by: str | None,
                        lines: list[int] | None = None) -> ImageDataset:
    if not records:
        raise DataError(f"{where}: no rows; the table needs a header and one row per image")
    lines = lines or list(range(1, len(records) + 1))
    path_col, split_col, group_col, label_col, labels_col, rest = _columns(records, where, group_by)
    if label_col or labels_col:
        records, lines, per_item, multi = _read_labels(records, lines, label_col, labels_col, where)

    sources = _resolve(_paths(records, path_col, lines, where), base, image_root, where)
    groups = [str(r.get(group_col, "")) for r in records] if group_col else None
    splits = _split_column(records, split_col, lines, where) if split_col else None

    if label_col or labels_col:
        classes, targets, task = _label_targets(per_item, multi)
    elif rest:
        classes, targets, task = _one_hot_targets(records, rest, lines, where)
    else:
        return ImageDataset(sources=sources, targets=None, classes=[], task=None, groups=groups,
                            splits=splits, root=base, name=name)
    if not classes:
        raise DataError(f"{where}: no labels found in the label column")
    return ImageDataset(sources=sources, targets=targets, classes=classes, task=task, groups=groups,
                        splits=splits, root=base, name=name)


def _columns(records: list[dict], where: str, group_by: str | None):
    """``(path, split, group, label, labels, other columns)`` of a table; absent ones are None."""
    cols = list(records[0].keys())
    lower = {c.lower().strip(): c for c in cols}
    path_col = next((lower[c] for c in PATH_COLUMNS if c in lower), cols[0])
    split_col = lower.get("split")
    group_col = None
    if group_by is not None:
        group_col = lower.get(group_by.lower())
        if group_col is None:
            raise ConfigError(f"--group-by {group_by}: no such column in {where} (columns: {', '.join(cols)})")
    label_col = lower.get("label") or lower.get("class") or lower.get("target")
    labels_col = lower.get("labels") or lower.get("tags")
    reserved = {path_col, split_col, group_col, label_col, labels_col} - {None}
    rest = [c for c in cols if c not in reserved]
    return path_col, split_col, group_col, label_col, labels_col, rest


def _read_labels(records: list[dict], lines: list[int], label_col: str | None, labels_col: str | None, where: str):
    """``(records, lines, labels per row, multi-label?)``, warning about empty and malformed label cells."""
    col = labels_col or label_col
    values = [r.get(col) for r in records]
    # a "labels" column, or list values in JSONL, mean several labels per image
    multi = labels_col is not None or (any(isinstance(v, list) for v in values)
                                       and not any(_scalar(v) for v in values))
    per_item, empty, shaped = _parse_labels(values, multi)
    # stacklevel 4: the warning points at the caller of read_csv / read_jsonl
    if empty:
        warnings.warn(f"{where}: {len(empty)} row{'s' if len(empty) != 1 else ''} with an empty {col!r} cell "
                      f"({_lines(empty, lines)}) {'are' if len(empty) != 1 else 'is'} kept as unlabelled: "
                      "skipped for training and evaluation", DataWarning, stacklevel=4)
    if shaped:
        what = "a list of labels" if multi else "a single label"
        warnings.warn(f"{where}: {len(shaped)} row{'s' if len(shaped) != 1 else ''} whose {col!r} is not "
                      f"{what} (an object, a list or null; {_lines(shaped, lines)}) "
                      f"{'are' if len(shaped) != 1 else 'is'} skipped", DataWarning, stacklevel=4)
        if multi:  # a multi-label row cannot be unlabelled: leave it out
            gone = set(shaped)
            records = [r for i, r in enumerate(records) if i not in gone]
            per_item = [p for i, p in enumerate(per_item) if i not in gone]
            lines = [ln for i, ln in enumerate(lines) if i not in gone]
            if not records:
                raise DataError(f"{where}: no row has a usable label in the {col!r} column")
    return records, lines, per_item, multi


def _paths(records: list[dict], path_col: str, lines: list[int], where: str) -> list[str]:
    """The path cell of every row, stripped; an empty or non-text cell is an error naming its line."""
    raw_paths = []
    for i, r in enumerate(records):
        p = r.get(path_col)
        if not isinstance(p, (str, int)) or str(p).strip() == "":
            raise DataError(f"{where}: line {lines[i]} has {'an empty' if p in (None, '') else 'a non-text'} "
                            f"{path_col!r} cell; give every row a path")
        raw_paths.append(str(p).strip())
    return raw_paths


def _split_column(records: list[dict], split_col: str, lines: list[int], where: str) -> dict[str, np.ndarray] | None:
    """The splits named by the split column (train/val/test or their aliases; empty = none)."""
    names = []
    for i, r in enumerate(records):
        v = str(r.get(split_col) or "").strip().lower()
        if v and v not in SPLIT_ALIASES:
            raise DataError(f"{where}: line {lines[i]} has split {v[:40]!r}; use train, val or test")
        names.append(SPLIT_ALIASES.get(v, ""))
    return _splits_from(names)


def _label_targets(per_item: list[list[str]], multi: bool) -> tuple[list[str], np.ndarray, str]:
    """``(classes, targets, task)`` from each row's label names: indices, or 0/1 rows when multi-label."""
    classes = sorted({c for labs in per_item for c in labs})
    index = {c: i for i, c in enumerate(classes)}
    if multi:
        targets = np.zeros((len(per_item), len(classes)), dtype=np.uint8)
        for i, labs in enumerate(per_item):
            targets[i, [index[c] for c in labs]] = 1
        return classes, targets, "multilabel"
    targets = np.array([index[labs[0]] if labs else UNLABELLED for labs in per_item], dtype=np.int64)
    return classes, targets, "binary" if len(classes) == 2 else "multiclass"


def _one_hot_targets(records: list[dict], classes: list[str], lines: list[int],
                     where: str) -> tuple[list[str], np.ndarray, str]:
    """``(classes, targets, "multilabel")`` from one-hot columns: every remaining column must hold 0/1."""
    targets = np.zeros((len(records), len(classes)), dtype=np.uint8)
    for i, r in enumerate(records):
        for j, c in enumerate(classes):
            v = str(r.get(c, "")).strip().lower()
            if v in ("1", "1.0", "true", "yes"):
                targets[i, j] = 1
            elif v not in ("0", "0.0", "false", "no", ""):
                raise DataError(f"{where}: line {lines[i]}, column {c!r} holds {v[:40]!r}; one-hot columns "
                                "take 0/1 (or name the label column 'label' / 'labels')")
    return classes, targets, "multilabel"


def read_csv(path: str | os.PathLike, image_root: str | None = None, group_by: str | None = None) -> ImageDataset:
    """CSV/TSV with ``path,label`` or ``path,labels`` (``|``/``,``-separated list) or one-hot columns.

    An optional ``split`` column (train/val/test) gives a predefined split.
    """
    p = Path(path)
    try:
        with _open_table(p) as f:
            text = f.read().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{p}: cannot read ({getattr(exc, 'strerror', None) or exc}); pass a UTF-8 CSV file") from None
    try:
        dialect = csv.Sniffer().sniff(text[:4096], delimiters=",;\t")
    except csv.Error:
        dialect = csv.excel_tab if p.suffix.lower() == ".tsv" else csv.excel
    reader = csv.DictReader(io.StringIO(text, newline=""), dialect=dialect)
    rows, lines = [], []
    try:
        for row in reader:
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise DataError(f"{p}:{reader.line_num}: not valid CSV ({exc})") from None
    return _records_to_dataset(rows, str(p), str(p.parent.resolve()), p.stem, image_root, group_by, lines)


def _open_table(p: Path):
    """A CSV/JSONL file opened for reading: a regular file of at most ``MAX_TABLE_BYTES`` (not a device or FIFO)."""
    return open_regular(p, MAX_TABLE_BYTES)


def read_jsonl(path: str | os.PathLike, image_root: str | None = None, group_by: str | None = None) -> ImageDataset:
    """JSON Lines: one object per line with ``path`` and ``label`` (string) or ``labels`` (list)."""
    p = Path(path)
    records, lines = [], []
    try:
        with _open_table(p) as raw, io.TextIOWrapper(raw, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except (ValueError, RecursionError) as exc:
                    raise DataError(f"{p}:{lineno}: invalid JSON ({str(exc)[:100]}); one object per line") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{p}:{lineno}: expected a JSON object per line")
                records.append(obj)
                lines.append(lineno)
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text ({exc.reason}); pass a UTF-8 JSONL file") from None
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc.strerror or exc})") from None
    return _records_to_dataset(records, str(p), str(p.parent.resolve()), p.stem, image_root, group_by, lines)


def from_paths(paths: Iterable[str | os.PathLike], name: str = "images") -> ImageDataset:
    """An unlabelled dataset from image paths or folders (folders are searched recursively) and tar
    shards (their images, labels ignored)."""
    from .shards.read import is_shard_source, read_shards

    sources: list[str] = []
    for p in paths:
        p = os.fspath(p)
        if is_shard_source(p):
            sources.extend(read_shards(p).sources)
        elif os.path.isdir(p):
            sources.extend(find_images(p))
        elif os.path.exists(p):
            sources.append(os.path.abspath(p))
        else:
            raise DataError(f"{p}: no such file or folder")
    if not sources:
        raise DataError("no images given; pass image files or folders")
    return ImageDataset(sources=sources, targets=None, classes=[], task=None, name=name)


def load_dataset(source: str | os.PathLike, task: str | None = None, taxonomy: str | os.PathLike | None = None,
                 group_by: str | None = None, image_root: str | None = None) -> ImageDataset:
    """Open a dataset from a folder, CSV/TSV or JSONL file, or tar shards (a folder written by
    ``imgclass data pack``, ``DIR/shard-*.tar``, one ``.tar``, or an fsspec URL such as
    ``s3://bucket/shards``); infer its task (override with ``task``).

    >>> ds = load_dataset("photos/")            # doctest: +SKIP
    >>> ds.task, ds.classes                       # doctest: +SKIP
    ('multiclass', ['cat', 'dog', 'fox'])
    """
    src = os.fspath(source)
    if task is not None and task not in TASKS:
        raise ConfigError(f"--task {task!r}: choose one of {', '.join(TASKS)}")
    from .shards.read import is_shard_source, read_shards

    if is_shard_source(src):  # tar shards: a folder with index.json, DIR/shard-*.tar, one .tar, a URL
        if group_by:
            raise ConfigError("--group-by needs a CSV or JSONL dataset; shards keep the groups they were packed with")
        ds = read_shards(src)
    elif os.path.isdir(src):
        if group_by:
            raise ConfigError("--group-by needs a CSV or JSONL dataset with that column")
        ds = read_folder(src)
    elif os.path.isfile(src):
        ext = Path(src).suffix.lower()
        if ext in (".csv", ".tsv", ".txt"):
            ds = read_csv(src, image_root=image_root, group_by=group_by)
        elif ext in (".jsonl", ".ndjson", ".json"):
            ds = read_jsonl(src, image_root=image_root, group_by=group_by)
        else:
            raise DataError(f"{src}: not a dataset; pass a folder of images, a .csv or a .jsonl file")
    else:
        raise DataError(f"{src}: no such file or folder")
    if taxonomy is not None:
        ds = _attach_taxonomy(ds, read_taxonomy(taxonomy), str(taxonomy))
    if task is not None:
        ds = ds.with_task(task)
    return ds
