"""Exact top-k by FAISS brute force (never by the index under test), and recall@k against it."""

from __future__ import annotations

import faiss
import numpy as np


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(nq, k) row indices of `base` with the highest inner product (cosine on unit vectors), best first."""
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(np.ascontiguousarray(base, dtype=np.float32))
    # Below this many queries FAISS loops itself instead of calling BLAS; BLAS is ~14x faster for a batch. Set only
    # here: for the engines' one-query searches BLAS would add its thread pool to the latency being measured.
    saved = faiss.cvar.distance_compute_blas_threshold
    faiss.cvar.distance_compute_blas_threshold = 1
    try:
        _, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), min(k, len(base)))
    finally:
        faiss.cvar.distance_compute_blas_threshold = saved
    return ids


def exact_top_k_filtered(base: np.ndarray, labels: np.ndarray, queries: np.ndarray, query_labels: np.ndarray,
                         k: int) -> np.ndarray:
    """Exact top-k of each query among the base rows of its own label (what a partition-key prefilter returns)."""
    out = np.full((len(queries), k), -1, dtype=np.int64)
    for label in np.unique(query_labels):
        rows = np.flatnonzero(labels == label)
        which = np.flatnonzero(query_labels == label)
        if len(rows) == 0:
            continue
        local = exact_top_k(base[rows], queries[which], k)
        out[which, :local.shape[1]] = np.where(local >= 0, rows[np.maximum(local, 0)], -1)
    return out


def recall_at_k(found: np.ndarray | list[list[int]], truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] ∩ truth[:k]| / |truth[:k]| (truth rows padded with -1 are shorter)."""
    scores = []
    for got, want in zip(found, truth, strict=True):
        wanted = {int(i) for i in list(want)[:k] if i >= 0}
        if not wanted:
            continue
        scores.append(len(wanted & {int(i) for i in list(got)[:k]}) / len(wanted))
    return float(np.mean(scores)) if scores else float("nan")
