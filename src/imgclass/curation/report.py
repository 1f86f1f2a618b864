"""The curation report: score histograms (``figure``) and a self-contained HTML page of the worst cases
per issue type (``to_html``), both for a ``CurationResult``."""

from __future__ import annotations

import base64
import html
import io

import numpy as np

from .._util import figure_png


def figure(res):
    """Blur-score and outlier-score histograms with their limits, and images per class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 + int(res.dataset.is_labelled)
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.2))
    ok = res.stats.ok
    blur = res.stats.column("blur_score")[ok]
    axes[0].hist(blur, bins=60, color="#4477aa")
    flagged = [res.stats.column("blur_score")[i] for i, _, _ in res.quality.get("blurry", [])]
    if flagged:
        axes[0].axvline(max(flagged), color="#cc3311", ls="--", label=f"blurry ({len(flagged)})")
        axes[0].legend(fontsize=8)
    axes[0].set(title="blur score (log Laplacian/gradient energy)", xlabel="lower = blurrier", ylabel="images")
    if res.outlier_score is not None:
        s = res.outlier_score[np.isfinite(res.outlier_score)]
        axes[1].hist(s, bins=60, color="#228833")
        axes[1].axvline(res.outlier_z, color="#cc3311", ls="--", label=f"limit {res.outlier_z}")
        axes[1].legend(fontsize=8)
    axes[1].set(title="outlier z-score", xlabel="higher = more unusual")
    if res.dataset.is_labelled:
        imb = res.imbalance()
        axes[2].barh([r["class"] for r in imb], [r["images"] for r in imb], color="#aa3377")
        axes[2].set(title="images per class")
        axes[2].tick_params(axis="y", labelsize=7)
    for ax in axes:
        ax.title.set_fontsize(9)
    fig.tight_layout()
    return fig


def to_html(res, per_type: int = 24, side: int = 96) -> str:
    """A self-contained HTML report: counts, plots, and thumbnails of the worst cases per issue type."""
    e = html.escape
    ds = res.dataset
    issues = res.issues()
    thumbs: dict[int, str] = {}

    def thumb(i: int) -> str:
        if i not in thumbs:
            thumbs[i] = _thumb_b64(ds.sources[i], side, res.stats.thumbs[i])
        return f"<img class='thumb' alt='{e(ds.relpath(i))}' src='data:image/jpeg;base64,{thumbs[i]}'>"

    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Curation: {e(ds.name)}</title>",
             "<style>body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
             "th{background:#f3f3f3}figure{display:inline-block;margin:4px;vertical-align:top;font-size:11px;"
             f"width:{side + 12}px;word-break:break-all}}figure.pair{{width:{2 * side + 16}px}}img{{max-width:100%}}"
             "</style></head><body>",
             f"<h1>Curation report: {e(ds.name)}</h1>",
             f"<p>{len(ds)} images · features <b>{e(res.features)}</b> · {len(res.skipped)} unreadable · "
             "no file was modified</p>", "<h2>Summary</h2><table><tr><th>issue</th><th>items</th></tr>"]
    parts += [f"<tr><td><a href='#{k}'>{k.replace('_', ' ')}</a></td><td>{len(v)}</td></tr>" for k, v in issues.items()]
    parts.append("</table>")
    parts += [f"<p>{e(n)}</p>" for n in res.notes]
    png = base64.b64encode(figure_png(res.figure(), dpi=90)).decode()
    parts.append(f"<img alt='distributions' src='data:image/png;base64,{png}'>")
    for k, rows in issues.items():
        parts.append(f"<h2 id='{k}'>{k.replace('_', ' ').capitalize()} ({len(rows)})</h2>")
        if not rows:
            parts.append("<p>none found</p>")
            continue
        cells = []
        for r in rows[:per_type]:
            i = res._row(r["path"])
            cap = f"{e(r['path'])}<br>{e(r.get('label', ''))}"
            if k == "near_duplicates":
                j = res._row(r["duplicate"])
                cells.append(f"<figure class='pair'>{thumb(i)}{thumb(j)}<figcaption>{cap} ≈ {e(r['duplicate'])}"
                             f"<br>{e(r['detail'])}</figcaption></figure>")
                continue
            if k == "label_issues":
                cap += f" → <b>{e(r['suggested'])}</b>?<br>res-confidence {r['self_confidence']:.3f}"
            elif "detail" in r:
                cap += f"<br>{e(str(r['detail']))}"
            cells.append(f"<figure>{thumb(i)}<figcaption>{cap}</figcaption></figure>")
        parts.append("<div>" + "".join(cells) + "</div>")
        if len(rows) > per_type:
            parts.append(f"<p>… {len(rows) - per_type} more in {k}.csv</p>")
    imb = res.imbalance()
    if imb:
        parts.append("<h2>Class balance</h2><table><tr><th>class</th><th>images</th><th>share</th>"
                     "<th>largest / this</th></tr>")
        parts += [f"<tr><td>{e(r['class'])}</td><td>{r['images']}</td><td>{r['share']:.3f}</td>"
                  f"<td>{r['ratio_to_largest']:.1f}</td></tr>" for r in imb]
        parts.append("</table>")
    parts.append(f"<h2>Unreadable files ({len(res.skipped)})</h2>")
    parts += ["<table>"] + [f"<tr><td>{e(p)}</td><td>{e(r)}</td></tr>" for p, r in res.skipped] + ["</table>"]
    parts.append("</body></html>")
    return "\n".join(parts)


def _thumb_b64(src, side: int, fallback: np.ndarray) -> str:
    from PIL import Image

    from ..data.decode import load_image
    from ..errors import ImageLoadError

    try:
        im = load_image(src, draft_size=side)
        im.thumbnail((side, side))
        if max(im.size) < side:  # small images: enlarge so they can be seen
            f = side / max(im.size)
            im = im.resize((max(1, round(im.width * f)), max(1, round(im.height * f))), Image.NEAREST)
    except ImageLoadError:
        im = Image.fromarray(fallback)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode()


__all__ = ["figure", "to_html"]
