"""Database-side augmentation (αDBA): each indexed vector replaced by the similarity-weighted sum of its k nearest
indexed neighbours (itself included), label-free, once at index time (Gordo et al. 2017; the α weighting of
Radenović et al. 2018). Queries stay as they are.

Scored on a data set's exact protocol. Under leave-one-patient-out the query is itself an indexed image, so a
neighbour's augmented vector could carry the query's own vector (or its other breast's) into the index: for each
query patient the augmentation is recomputed with that patient's images out of every neighbour list, as if they
had never been indexed.
"""

from __future__ import annotations

import numpy as np

from cbmir.bench.quality.precision import ExactProtocol
from cbmir.bench.quality.protocols import Ranking

DBA_ALPHA = 3.0  # weight = cosine^α: close neighbours count, far ones fade (α-DBA)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def augmented(index_vectors: np.ndarray, k: int, alpha: float = DBA_ALPHA,
              excluded: np.ndarray | None = None) -> np.ndarray:
    """Unit vectors of the index after αDBA over its k nearest neighbours (self first). `excluded` rows
    (a boolean mask) are never anyone's neighbour; their own rows are left as they were."""
    x = _unit(np.asarray(index_vectors, dtype=np.float64))
    return _augmented_unit(x, x @ x.T, k, alpha, excluded)


def _augmented_unit(x: np.ndarray, sims: np.ndarray, k: int, alpha: float,
                    excluded: np.ndarray | None) -> np.ndarray:
    """`augmented` on unit rows `x` with their cosine matrix `sims` (not modified), computed once by the caller."""
    sims = sims.copy()
    if excluded is not None:
        sims[:, excluded] = -np.inf
    np.fill_diagonal(sims, np.inf)  # each vector is its own first neighbour, whatever the mask
    top = np.argpartition(-sims, kth=min(k, len(x)) - 1, axis=1)[:, :k]
    weights = np.take_along_axis(sims, top, axis=1)
    weights = np.where(np.isinf(weights) & (weights > 0), 1.0, np.clip(weights, 0.0, None)) ** alpha
    out = _unit(np.einsum("nk,nkd->nd", weights, x[top]))
    if excluded is not None:
        out[excluded] = x[excluded]
    return out


def dba_rankings(protocol: ExactProtocol, vectors: np.ndarray, k: int, alpha: float = DBA_ALPHA) -> list[Ranking]:
    """The protocol's rankings with the index augmented (queries as embedded); per query patient under LOPO."""
    index_vectors = vectors[: protocol.n_index]
    if not protocol.lopo:
        return protocol.rank_subset(augmented(index_vectors, k, alpha), vectors, range(len(protocol.queries)))
    index_groups = np.array([protocol.index.by_id[i].group for i in protocol.ids])
    x = _unit(np.asarray(index_vectors, dtype=np.float64))
    sims = x @ x.T  # once: each query patient only masks its own columns
    rankings: list[Ranking | None] = [None] * len(protocol.queries)
    for group in sorted({q.group for q in protocol.queries}):
        rows = [n for n, q in enumerate(protocol.queries) if q.group == group]
        index_aug = _augmented_unit(x, sims, k, alpha, excluded=index_groups == group)
        for n, ranking in zip(rows, protocol.rank_subset(index_aug, vectors, rows), strict=True):
            rankings[n] = ranking
    return [r for r in rankings if r is not None]
