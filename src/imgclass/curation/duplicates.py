"""Exact and near-duplicate images, without comparing all pairs.

* **Exact** duplicates share a SHA-256 of their file bytes (a dictionary lookup).
* **Near** duplicates (resized, re-compressed, slightly cropped copies) are found in two steps:
  1. *Candidates*: each image's nearest neighbours by cosine similarity of its embedding, from an
     approximate nearest-neighbour index (FAISS HNSW; exact FAISS search below 5,000 images). That
     is ``n x k`` comparisons instead of ``n^2 / 2``.
  2. *Verification* of each candidate pair on small thumbnails with OpenCV template matching: the
     centre of one image is searched in the other over a few scales, which absorbs crops of a few
     pixels and rescaling. Two scores must pass: the colour correlation, and the correlation of the
     high-pass images (image minus its Gaussian blur). Embeddings alone cannot tell a copy from a
     second photo of the same kind of scene (two ships on a grey sea are as close as a ship and its
     re-compressed copy), and colour correlation alone is fooled by smooth backgrounds; the high-pass
     score asks whether the fine detail lines up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._util import progress_bar
from ..features import default_jobs
from ..features.neighbours import cosine_neighbours


@dataclass
class DuplicateLimits:
    neighbours: int = 10  # candidates per image from the nearest-neighbour index
    min_cosine: float = 0.75  # embedding cosine similarity a candidate pair needs
    min_colour: float = 0.90  # colour template-matching correlation (-1..1)
    min_detail: float = 0.60  # high-pass (fine detail) template-matching correlation (-1..1)


def exact_groups(sha256: Sequence[str | None]) -> list[list[int]]:
    """Groups (lists of row indices, in input order) of files with identical bytes."""
    by: dict[str, list[int]] = {}
    for i, h in enumerate(sha256):
        if h:
            by.setdefault(h, []).append(i)
    return [g for g in by.values() if len(g) > 1]


def candidate_pairs(E: np.ndarray, k: int = 10, min_cosine: float = 0.75, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(pairs (m, 2) with i < j, cosine (m,))``: each row's ``k`` nearest neighbours by cosine
    similarity with similarity >= ``min_cosine``, from a FAISS index (HNSW for large sets)."""
    n = len(E)
    if n < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0)
    D, nb = cosine_neighbours(E, k + 1)
    k = nb.shape[1]
    rows = np.repeat(np.arange(n), k)
    cols, sims = nb.ravel(), D.ravel()
    keep = (cols >= 0) & (cols != rows) & (sims >= min_cosine)
    a, b = np.minimum(rows[keep], cols[keep]), np.maximum(rows[keep], cols[keep])
    if not len(a):
        return np.zeros((0, 2), np.int64), np.zeros(0)
    key = a.astype(np.int64) * n + b
    order = np.lexsort((-sims[keep], key))
    key, sims_k = key[order], sims[keep][order]
    first = np.r_[True, key[1:] != key[:-1]]
    key, sims_k = key[first], sims_k[first]
    return np.stack([key // n, key % n], axis=1), sims_k.astype(np.float64)


def _highpass(thumbs: np.ndarray) -> np.ndarray:
    import cv2

    out = np.empty(thumbs.shape, np.float32)
    for i, t in enumerate(thumbs):
        a = t.astype(np.float32)
        out[i] = a - cv2.GaussianBlur(a, (0, 0), 1.0)
    return out


SCALES = (0.88, 0.94, 1.0, 1.06, 1.12)


def match_score(a: np.ndarray, b: np.ndarray, method: int) -> float:
    """Best template-matching score of the centre of either image inside the other, over ``SCALES``."""
    import cv2

    s = a.shape[0]
    m = s // 8
    best = -1.0
    for x, y in ((a, b), (b, a)):
        tpl = y[m:s - m, m:s - m]
        for sc in SCALES:
            w = int(round((s - 2 * m) * sc))
            t = tpl if w == s - 2 * m else cv2.resize(tpl, (w, w), interpolation=cv2.INTER_AREA if sc < 1 else cv2.INTER_LINEAR)
            best = max(best, float(cv2.matchTemplate(x, t, method).max()))
    return best


def verify_pairs(thumbs: np.ndarray, pairs: np.ndarray, limits: DuplicateLimits | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(colour score, detail score)`` per pair (detail is NaN where the colour score already failed)."""
    import cv2

    lim = limits or DuplicateLimits()
    col = np.full(len(pairs), np.nan)
    det = np.full(len(pairs), np.nan)
    if not len(pairs):
        return col, det
    used = np.unique(pairs)
    pos = {int(r): j for j, r in enumerate(used)}
    T = thumbs[used].astype(np.float32)
    H = _highpass(thumbs[used])

    def work(lo: int, hi: int) -> None:
        for q in range(lo, hi):
            i, j = pos[int(pairs[q, 0])], pos[int(pairs[q, 1])]
            col[q] = match_score(T[i], T[j], cv2.TM_CCOEFF_NORMED)
            if col[q] >= lim.min_colour:
                det[q] = match_score(H[i], H[j], cv2.TM_CCORR_NORMED)

    step = 512
    spans = [(s, min(s + step, len(pairs))) for s in range(0, len(pairs), step)]
    with progress_bar(len(pairs), "near-duplicate check", unit="pair") as bar:
        from concurrent.futures import ThreadPoolExecutor  # OpenCV releases the GIL

        with ThreadPoolExecutor(max_workers=max(1, default_jobs())) as ex:
            for (lo, hi), _ in zip(spans, ex.map(lambda sp: work(*sp), spans)):
                bar.advance(hi - lo)
    return col, det


@dataclass
class NearDuplicates:
    pairs: np.ndarray  # (m, 2) row indices, i < j
    cosine: np.ndarray
    colour: np.ndarray
    detail: np.ndarray
    candidates: int  # candidate pairs checked


def near_duplicates(E: np.ndarray, thumbs: np.ndarray, limits: DuplicateLimits | None = None,
                    exclude: set[tuple[int, int]] | None = None) -> NearDuplicates:
    """Verified near-duplicate pairs among the rows of ``E`` (embeddings) / ``thumbs``, most similar first.
    Pairs in ``exclude`` (e.g. exact duplicates) are left out."""
    lim = limits or DuplicateLimits()
    pairs, cos = candidate_pairs(E, lim.neighbours, lim.min_cosine)
    if exclude:
        keep = np.array([(int(a), int(b)) not in exclude for a, b in pairs], dtype=bool)
        pairs, cos = pairs[keep], cos[keep]
    col, det = verify_pairs(thumbs, pairs, lim)
    ok = (col >= lim.min_colour) & (det >= lim.min_detail)
    order = np.argsort(-(det[ok] + col[ok]), kind="stable")
    return NearDuplicates(pairs=pairs[ok][order], cosine=cos[ok][order], colour=col[ok][order],
                          detail=det[ok][order], candidates=len(pairs))


def groups_from_pairs(n: int, pairs: np.ndarray) -> list[list[int]]:
    """Connected components (size >= 2) of the pair graph, as sorted row lists (scipy)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(pairs):
        return []
    g = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, lab = connected_components(g, directed=False)
    counts = np.bincount(lab)
    groups: dict[int, list[int]] = {}
    for i in np.flatnonzero(counts[lab] > 1):
        groups.setdefault(int(lab[i]), []).append(int(i))
    return [sorted(g) for g in groups.values()]


__all__ = ["DuplicateLimits", "NearDuplicates", "candidate_pairs", "exact_groups", "groups_from_pairs",
           "match_score", "near_duplicates", "verify_pairs"]
