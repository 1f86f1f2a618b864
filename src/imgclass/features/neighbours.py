"""Nearest neighbours of embedding rows by cosine similarity (FAISS): the one search behind near-duplicate
candidates (``curation.duplicates``) and SCAN's mined neighbours (``learning.selfsup``)."""

from __future__ import annotations

import numpy as np

EXACT_SEARCH_BELOW = 5000


def cosine_neighbours(E: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(similarities, indices)``, both ``(n, min(k, n))``: each row's nearest rows by cosine similarity,
    the row itself included (normally first). Exact FAISS search below ``EXACT_SEARCH_BELOW`` rows, an
    HNSW index above (``n x k`` comparisons instead of ``n^2``); a hit the index could not fill is -1."""
    import faiss

    X = np.ascontiguousarray(E, dtype=np.float32).copy()
    X /= np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    n = len(X)
    k = int(min(k, n))
    if n < EXACT_SEARCH_BELOW:
        index = faiss.IndexFlatIP(X.shape[1])
    else:
        index = faiss.IndexHNSWFlat(X.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = max(64, 2 * k)
    from . import default_jobs

    faiss.omp_set_num_threads(max(1, default_jobs()))
    index.add(X)
    return index.search(X, k)


__all__ = ["EXACT_SEARCH_BELOW", "cosine_neighbours"]
