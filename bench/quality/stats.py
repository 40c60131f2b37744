"""95% bootstrap confidence intervals of a mean over queries, optionally resampling whole groups (patients)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000
DEFAULT_SEED = 20240603


@dataclass(frozen=True)
class Estimate:
    """A mean over queries with its percentile bootstrap interval."""

    mean: float
    low: float
    high: float
    n: int  # queries that entered the mean (NaNs, e.g. recall of a query without relevant items, are left out)

    def to_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "ci_low": self.low, "ci_high": self.high, "n": self.n}


def bootstrap_mean(values: np.ndarray, groups: np.ndarray | None = None, resamples: int = DEFAULT_RESAMPLES,
                   seed: int = DEFAULT_SEED, confidence: float = 0.95) -> Estimate:
    """Mean of `values` with a percentile bootstrap CI.

    With `groups` (e.g. patient ids), whole groups are resampled: leave-one-patient-out queries of one woman's
    two breasts are not independent, and resampling them as if they were would make the interval too narrow.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    keep = np.isfinite(values)
    values = values[keep]
    if values.size == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    if groups is None:
        sums, counts = values, np.ones_like(values)
    else:
        _, codes = np.unique(np.asarray(groups).reshape(-1)[keep], return_inverse=True)
        sums = np.bincount(codes, weights=values)
        counts = np.bincount(codes).astype(np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, sums.shape[0], size=(resamples, sums.shape[0]))
    means = sums[picks].sum(axis=1) / counts[picks].sum(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return Estimate(float(values.mean()), float(low), float(high), int(values.size))
