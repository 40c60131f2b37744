"""Ranking metrics over binary relevance (relevant = same label): P@k, R@k, NDCG@k, seed-003 AP@k, full AP, PR.

The one definition of each: `cbmir eval` reports them and `cbmir train` selects checkpoints by the same mAP@10,
so it lives low in the tree where both reach it.

Every function takes `rel`, a (queries, depth) 0/1 matrix (row i: relevance of the hits of query i, best first;
a row shorter than k counts the missing hits as not relevant) and `n_relevant`, the number of relevant items the
index holds for each query (the query itself and, leave-one-patient-out, its patient's images excluded). Each
returns one value per query, so means and bootstrap intervals come from the same numbers. Pure numpy.
"""

from __future__ import annotations

import numpy as np

SEED003_K_MAX = 10
RECALL_LEVELS = np.linspace(0.0, 1.0, 101)


def _rel(rel: np.ndarray, k: int) -> np.ndarray:
    """The first k columns as float, padded with zeros when fewer than k hits came back."""
    rel = np.asarray(rel, dtype=np.float64)
    if rel.ndim != 2:
        raise ValueError(f"rel must be (queries, depth), got shape {rel.shape}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if rel.shape[1] >= k:
        return rel[:, :k]
    return np.pad(rel, ((0, 0), (0, k - rel.shape[1])))


def _n_relevant(n_relevant: np.ndarray | list[int], rows: int) -> np.ndarray:
    n = np.asarray(n_relevant, dtype=np.float64).reshape(-1)
    if n.shape[0] != rows:
        raise ValueError(f"n_relevant has {n.shape[0]} entries for {rows} queries")
    return n


def precision_at_k(rel: np.ndarray, k: int) -> np.ndarray:
    """P@k = (relevant hits among the first k) / k."""
    return _rel(rel, k).sum(axis=1) / k


def recall_at_k(rel: np.ndarray, k: int, n_relevant: np.ndarray | list[int]) -> np.ndarray:
    """R@k = (relevant hits among the first k) / (relevant items in the index); NaN for a query with none."""
    top = _rel(rel, k).sum(axis=1)
    n = _n_relevant(n_relevant, top.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, top / np.where(n > 0, n, 1.0), np.nan)


def ndcg_at_k(rel: np.ndarray, k: int, n_relevant: np.ndarray | list[int]) -> np.ndarray:
    """NDCG@k = DCG@k / IDCG@k, DCG@k = sum_i (2^rel_i - 1) / log2(i + 1) (seed 000, eq. 3; binary rel → rel_i).

    IDCG@k is the DCG of the ideal list: min(k, n_relevant) relevant hits first. NaN for a query with none.
    """
    top = _rel(rel, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = top @ discounts
    n = _n_relevant(n_relevant, top.shape[0])
    ideal_counts = np.minimum(n, k).astype(np.int64)
    cumulative = np.concatenate([[0.0], np.cumsum(discounts)])
    idcg = cumulative[ideal_counts]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(idcg > 0, dcg / np.where(idcg > 0, idcg, 1.0), np.nan)


def seed003_average_precision(rel: np.ndarray, k_max: int = SEED003_K_MAX) -> np.ndarray:
    """Seed 003's per-query AP: the mean of P@k over k = 1 … k_max (Barać, eq. 9).

        mAP = 1/n_imgs · Σ_i 1/k_max · Σ_{k=1..k_max} ( Σ_{j=1..k} rel(i, j) ) / k

    Its mean over queries is "mAP@10" in our tables (k_max = 10); the mean of P@k alone is its mP@k (eq. 8).
    Not the textbook AP: it rewards a relevant hit at rank 1 in every one of the k_max precisions.
    """
    top = _rel(rel, k_max)
    precisions = np.cumsum(top, axis=1) / np.arange(1, k_max + 1)
    return precisions.mean(axis=1)


def average_precision(rel: np.ndarray, n_relevant: np.ndarray | list[int]) -> np.ndarray:
    """Textbook AP over the whole ranking: Σ_k P@k · rel_k / n_relevant (relevant items never returned add 0)."""
    rel = np.asarray(rel, dtype=np.float64)
    if rel.ndim != 2:
        raise ValueError(f"rel must be (queries, depth), got shape {rel.shape}")
    depth = rel.shape[1]
    precisions = np.cumsum(rel, axis=1) / np.arange(1, depth + 1) if depth else rel
    n = _n_relevant(n_relevant, rel.shape[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(n > 0, (precisions * rel).sum(axis=1) / np.where(n > 0, n, 1.0), np.nan)


def interpolated_pr_curve(rel: np.ndarray, n_relevant: np.ndarray | list[int],
                          recall_levels: np.ndarray = RECALL_LEVELS) -> np.ndarray:
    """Per query, the interpolated precision max_{r' >= r} P(r') at each recall level (0 where never reached).

    Returns (queries, levels); its column means are the averaged PR curve. Queries with no relevant item: NaN.
    """
    rel = np.asarray(rel, dtype=np.float64)
    n = _n_relevant(n_relevant, rel.shape[0])
    levels = np.asarray(recall_levels, dtype=np.float64)
    out = np.full((rel.shape[0], levels.shape[0]), np.nan)
    if rel.shape[1] == 0:
        out[n > 0] = 0.0
        return out
    hits = np.cumsum(rel, axis=1)
    precision = hits / np.arange(1, rel.shape[1] + 1)
    # Interpolation: the best precision at this rank or any deeper one.
    best_after = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    for i in np.flatnonzero(n > 0):
        recall = hits[i] / n[i]
        # First rank whose recall reaches each level; levels beyond the deepest recall get precision 0.
        first = np.searchsorted(recall, levels - 1e-12, side="left")
        reached = first < rel.shape[1]
        out[i] = np.where(reached, best_after[i][np.minimum(first, rel.shape[1] - 1)], 0.0)
    return out
