"""α-weighted query expansion (αQE, Radenović et al. 2018): search again with the query averaged into its top hits.

The new query is the unit query plus its `n` nearest stored vectors, each weighted by its cosine similarity to the
query raised to the power α, and normalised: close neighbours pull the query towards their common class, far ones
barely count. No labels are used, so it works on any archive; its cost is a second search and a fetch of n vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# α = 3 is the paper's choice for CNN descriptors; n is per request (SearchQuery.query_expansion).
QE_ALPHA = 3.0
MAX_QUERY_EXPANSION = 50  # neighbours averaged at most: past a few dozen the query drifts into the whole class


def _unit(vectors: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def expanded_query(query: np.ndarray, neighbours: Sequence[np.ndarray] | np.ndarray,
                   alpha: float = QE_ALPHA) -> np.ndarray:
    """The αQE query (float32) from the query and its nearest stored vectors, closest first, at the query's own
    length: a COSINE collection ignores it, an L2 or IP one compares lengths too."""
    raw = np.asarray(query, dtype=np.float64).reshape(-1)
    if len(neighbours) == 0:
        return raw.astype(np.float32)
    q = _unit(raw)
    x = _unit(np.asarray(neighbours, dtype=np.float64))
    weights = np.clip(x @ q, 0.0, None) ** alpha
    return (_unit(q + weights @ x) * np.linalg.norm(raw)).astype(np.float32)
