"""``imgclass cluster``: group images into clusters, score them against labels, name them into a classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._options import (
    DEFAULT_MAX_PIXELS,
    DenoiseOpt,
    EqualizeOpt,
    GrayOpt,
    JobsOpt,
    MaxPixelsOpt,
    ResizeOpt,
    SizeOpt,
    preprocess,
)
from ._output import console, notes, print_json, warn_skipped
from .app import app

_ALGOS = "kmeans, minibatch-kmeans, gmm, dbscan, hdbscan, agglomerative, birch, meanshift or spectral"
_PANEL = "Clustering"


def _parse_k(k: str | None):
    if k is None or k.strip().lower() == "auto":
        return None if k is None else "auto"
    from ..errors import ConfigError

    try:
        return int(k)
    except ValueError:
        raise ConfigError(f"--k {k}: give a number of clusters (e.g. 10) or 'auto'") from None


def _parse_params(items: list[str] | None) -> dict | None:
    """``--param eps=0.3 --param metric=cosine`` -> ``{"eps": 0.3, "metric": "cosine"}`` (values are
    read as JSON when they parse, else kept as text)."""
    if not items:
        return None
    import json

    from ..errors import ConfigError

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--param {item}: write it as NAME=VALUE, e.g. --param eps=0.3")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


@app.command(epilog="Example: imgclass cluster photos/ --features lite0 --algo kmeans --k auto --out runs/photos-clusters")
def cluster(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Folder (flat and unlabelled, or one sub-folder per class), CSV or JSONL.")],
    features: Annotated[str, typer.Option("--features", "-f", help="Features: lite0 (frozen deep embeddings, cached), hog, color_hist, pixels, lbp, ... or a comma list (see 'imgclass methods').")] = "lite0",
    algo: Annotated[str, typer.Option("--algo", "-a", help=f"Algorithm: {_ALGOS}.")] = "kmeans",
    k: Annotated[str | None, typer.Option("--k", "-k", help="Number of clusters, or 'auto' (best silhouette; lowest BIC for gmm). Default: the number of classes for labelled data, else auto. Not for dbscan, hdbscan, meanshift.")] = None,
    reduce: Annotated[str, typer.Option(help="Reduce the features first: pca, umap (needs umap-learn) or none.", rich_help_panel=_PANEL)] = "pca",
    dims: Annotated[int, typer.Option(help="Dimensions kept by --reduce.", rich_help_panel=_PANEL)] = 50,
    whiten: Annotated[bool, typer.Option("--whiten/--no-whiten", help="PCA whitening (unit variance per component), then L2 again.", rich_help_panel=_PANEL)] = False,
    normalize: Annotated[bool, typer.Option("--l2/--no-l2", help="L2-normalise every feature vector first (cosine geometry).", rich_help_panel=_PANEL)] = True,
    k_min: Annotated[int, typer.Option(help="--k auto: smallest k tried.", rich_help_panel=_PANEL)] = 2,
    k_max: Annotated[int, typer.Option(help="--k auto: largest k tried.", rich_help_panel=_PANEL)] = 20,
    param: Annotated[list[str] | None, typer.Option("--param", help="Extra scikit-learn parameter of the algorithm, NAME=VALUE; repeatable (e.g. --param eps=0.3, --param min_cluster_size=20).", rich_help_panel=_PANEL)] = None,
    name_clusters: Annotated[Path | None, typer.Option("--name-clusters", help="CSV/JSONL/folder of a few labelled images: name each cluster by majority vote (nearest named cluster when none of its images is labelled).", rich_help_panel="Naming")] = None,
    save_model: Annotated[Path | None, typer.Option("--save-model", help="With --name-clusters: save the named clusters as a model bundle (use with imgclass predict).", rich_help_panel="Naming")] = None,
    seed: Annotated[int, typer.Option(help="Seed for PCA and the algorithm.")] = 0,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Write clusters.csv, cluster.json, montages/, map.png (and k_curve.png) here (default runs/<DATA>-cluster-<features>-<algo>).")] = None,
    jobs: JobsOpt = None,
    max_pixels: MaxPixelsOpt = DEFAULT_MAX_PIXELS,
    json_out: Annotated[bool, typer.Option("--json", help="Print k, the metrics (ACC, NMI, ARI when labels exist), the clusters and the output files as JSON.")] = False,
    size: SizeOpt = None, resize: ResizeOpt = "squash", grayscale: GrayOpt = False, denoise: DenoiseOpt = "none",
    equalize: EqualizeOpt = "none",
):
    """Group images into clusters; with labels, score them (ACC, NMI, ARI); name them into a classifier."""
    from .. import api

    with api.new_run_dir(data, f"cluster-{features}-{algo}", out) as out:
        res = api.cluster(data, features=features, algo=algo, k=_parse_k(k), reduce=reduce, dims=dims, whiten=whiten,
                          normalize=normalize, seed=seed, k_range=(k_min, k_max), params=_parse_params(param),
                          preprocess=preprocess(size, resize, grayscale, denoise, equalize), n_jobs=jobs,
                          max_pixels=max_pixels, name_with=name_clusters, save_model=save_model, out=out)
    warn_skipped(res.skipped)
    if json_out:
        doc = res.to_dict()
        if save_model is not None:
            doc["model"] = str(save_model)
        print_json(doc)
        return
    _print_summary(res, out, save_model)


def _print_summary(res, out: Path, save_model: Path | None) -> None:
    from rich.table import Table

    con = console()
    notes(res.notes)
    m = res.metrics
    red = f"{res.reduce} {res.dims} dims" if res.dims else res.reduce
    con.print(f"clustered {m['n']} images ({res.features}, {red}) with {res.algo}: k = {res.k}"
              + (f", {m['noise']} noise" if m["noise"] else ""))
    if res.k_curve:
        cur = res.k_curve
        pts = "  ".join(f"{kk}{'*' if kk == cur['chosen'] else ''} {s:.3g}" for kk, s in zip(cur["k"], cur["score"])
                        if s is not None)
        con.print(f"k by {cur['criterion']}: {pts}")
    scores = [f"{key.upper()} {m[key]:.4f}" for key in ("acc", "nmi", "ari") if m.get(key) is not None]
    if m.get("silhouette") is not None:
        scores.append(f"silhouette {m['silhouette']:.4f}")
    if scores:
        con.print("  ".join(scores) + (f"   ({m['n_labelled']} labelled images, {m['classes']} classes)"
                                       if "n_labelled" in m else ""))
    t = Table(title="clusters", title_justify="left")
    t.add_column("cluster", justify="right")
    t.add_column("images", justify="right")
    rows = res.cluster_rows()
    if res.names_ is not None:
        t.add_column("name")
    if res.truth is not None:
        t.add_column("most common labels")
    for r in rows[:50]:
        cells = ["noise" if r["cluster"] == -1 else str(r["cluster"]), str(r["size"])]
        if res.names_ is not None:
            cells.append(f"{r['name']} ({r['named_by']})" if "name" in r else "")
        if res.truth is not None:
            cells.append(", ".join(f"{lab} {share:.0%}" for lab, share in r["top_labels"]))
        t.add_row(*cells)
    con.print(t)
    if len(rows) > 50:
        con.print(f"... and {len(rows) - 50} more clusters (see cluster.json)")
    con.print(f"outputs: {out}/ (clusters.csv, cluster.json, montages/, map.png"
              + (", k_curve.png" if res.k_curve else "") + ")")
    if save_model is not None:
        con.print(f"model: {save_model}   (imgclass predict {save_model} IMAGE...)")
