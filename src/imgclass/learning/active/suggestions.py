"""``Suggestions``: the ranked images to label next, as a table, a CSV and a thumbnail montage."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..._util import atomic_write_bytes, atomic_write_text


class Suggestions(list):
    """The images to label next, most useful first: a list of dict rows with ``rank``, ``path``,
    ``score`` (higher = more useful; empty for ``random``), ``predicted`` (the current model's label) and
    ``probability`` (of that label). ``pandas.DataFrame(suggestions)`` gives a table.

    Attributes: ``strategy``, ``method``, ``classes``, ``budget``, ``pool_size`` (readable pool images
    ranked), ``n_labelled``, ``skipped`` (``(path, reason)`` of unreadable images) and ``notes``.
    """

    def __init__(self, rows: list[dict], *, strategy: str, method: str, classes: list[str], budget: int,
                 pool_size: int, n_labelled: int, skipped: list[tuple[str, str]] | None = None,
                 notes: list[str] | None = None):
        super().__init__(rows)
        self.strategy, self.method, self.classes = strategy, method, list(classes)
        self.budget, self.pool_size, self.n_labelled = budget, pool_size, n_labelled
        self.skipped = list(skipped or [])
        self.notes = list(notes or [])
        self.paths: dict[str, Path] = {}
        self._sources: list = []

    COLUMNS = ("rank", "path", "score", "predicted", "probability")

    def to_dict(self) -> dict[str, Any]:
        return {"strategy": self.strategy, "method": self.method, "classes": self.classes, "budget": self.budget,
                "pool_size": self.pool_size, "n_labelled": self.n_labelled, "rows": list(self),
                "skipped": [{"path": p, "reason": r} for p, r in self.skipped], "notes": self.notes,
                "files": {k: str(v) for k, v in self.paths.items()}}

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(self.COLUMNS)
        for r in self:
            score = "" if r["score"] is None or not np.isfinite(r["score"]) else f"{r['score']:.6g}"
            w.writerow([r["rank"], r["path"], score, r["predicted"], f"{r['probability']:.4f}"])
        return buf.getvalue()

    def montage(self, max_images: int = 64, side: int = 96, columns: int = 8) -> bytes:
        """PNG bytes: a grid of the first ``max_images`` suggestions with rank, predicted label and
        probability under each thumbnail."""
        from PIL import Image, ImageDraw, ImageFont

        from ...data.decode import load_image
        from ...errors import ImageLoadError

        rows = list(self)[:max_images]
        cols = max(1, min(columns, len(rows)))
        nrows = max(1, -(-len(rows) // cols))
        cap, pad = 30, 4
        cw, ch = side + 2 * pad, side + cap + 2 * pad
        sheet = Image.new("RGB", (cols * cw, nrows * ch), "white")
        draw = ImageDraw.Draw(sheet)
        try:
            font = ImageFont.load_default(size=11)
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        srcs = self._sources or [r["path"] for r in rows]
        for i, r in enumerate(rows):
            x, y = (i % cols) * cw + pad, (i // cols) * ch + pad
            try:
                im = load_image(srcs[i], draft_size=side)
                im.thumbnail((side, side))
                if im.width < side // 2:  # tiny images (CIFAR 32 px): enlarge so they can be seen
                    f = side / max(im.size)
                    im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.Resampling.NEAREST)
                sheet.paste(im, (x + (side - im.width) // 2, y + (side - im.height) // 2))
            except (ImageLoadError, OSError):
                draw.rectangle([x, y, x + side, y + side], fill=(220, 220, 220))
            label = str(r["predicted"])
            label = label if len(label) <= 12 else label[:11] + "…"
            draw.text((x, y + side + 2), f"#{r['rank']} {label}", fill="black", font=font)
            base = Path(str(r["path"])).name
            base = base if len(base) <= 16 else "…" + base[-15:]
            draw.text((x, y + side + 15), f"{r['probability'] * 100:.0f}% {base}", fill=(90, 90, 90), font=font)
        buf = io.BytesIO()
        sheet.save(buf, format="PNG")
        return buf.getvalue()

    def write(self, out: str | os.PathLike, max_images: int = 64) -> dict[str, Path]:
        """Write ``suggestions.csv`` and the thumbnail ``montage.png`` into the folder ``out`` (atomically)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.paths = {"csv": out / "suggestions.csv", "montage": out / "montage.png"}
        atomic_write_text(self.paths["csv"], self.to_csv())
        atomic_write_bytes(self.paths["montage"], self.montage(max_images))
        return self.paths
