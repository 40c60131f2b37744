"""Turn rankings into the reported figures: means with bootstrap CIs at each k, seed-003 mAP@10, full mAP, per class."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cbmir.bench.quality.protocols import Ranking
from cbmir.bench.quality.stats import DEFAULT_RESAMPLES, DEFAULT_SEED, bootstrap_mean
from cbmir.services import ranking_metrics as metrics

DEFAULT_KS = (1, 5, 10, 20, 50, 100)


def relevance(rankings: Sequence[Ranking], depth: int) -> np.ndarray:
    """(queries, depth) 0/1: hit j of query i has the query's label."""
    rel = np.zeros((len(rankings), depth), dtype=np.float64)
    for i, ranking in enumerate(rankings):
        labels = ranking.labels[depth]
        rel[i, : len(labels)] = [label == ranking.query.label for label in labels]
    return rel


def depth_for(k: int, depths: Sequence[int]) -> int:
    """The shallowest search that returned at least k hits (the list a user asking for ~k would get)."""
    deeper = [d for d in sorted(depths) if d >= k]
    return deeper[0] if deeper else max(depths)


def score(rankings: Sequence[Ranking], depths: Sequence[int], ks: Sequence[int] = DEFAULT_KS,
          resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED, by_group: bool = False) -> dict:
    """Every figure of the record. `by_group`: bootstrap resamples patients, not single queries."""
    if not rankings:
        raise ValueError("no queries to score")
    rels = {d: relevance(rankings, d) for d in depths}
    n_rel = np.array([r.n_relevant for r in rankings], dtype=np.float64)
    labels = np.array([r.query.label for r in rankings])
    groups = np.array([r.query.group for r in rankings]) if by_group else None
    deepest = max(depths)

    def estimate(values: np.ndarray, mask: np.ndarray | None = None) -> dict:
        g = groups if mask is None or groups is None else groups[mask]
        v = values if mask is None else values[mask]
        return bootstrap_mean(v, g, resamples=resamples, seed=seed).to_dict()

    per_query: dict[str, np.ndarray] = {}
    curve_ks = sorted(set(range(1, metrics.SEED003_K_MAX + 1)) | {k for k in ks if k <= deepest})
    for k in curve_ks:
        rel = rels[depth_for(k, depths)]
        per_query[f"P@{k}"] = metrics.precision_at_k(rel, k)
        per_query[f"R@{k}"] = metrics.recall_at_k(rel, k, n_rel)
        per_query[f"NDCG@{k}"] = metrics.ndcg_at_k(rel, k, n_rel)
    per_query["mAP@10"] = metrics.seed003_average_precision(rels[depth_for(metrics.SEED003_K_MAX, depths)])
    per_query["mAP"] = metrics.average_precision(rels[deepest], n_rel)

    figures = {name: estimate(per_query[name])
               for name in [*(f"{m}@{k}" for k in ks if k <= deepest for m in ("P", "R", "NDCG")), "mAP@10", "mAP"]}
    curves = {
        "k": curve_ks,
        "precision": [estimate(per_query[f"P@{k}"]) for k in curve_ks],
        "recall": [estimate(per_query[f"R@{k}"]) for k in curve_ks],
        "ndcg": [estimate(per_query[f"NDCG@{k}"]) for k in curve_ks],
        "mP@k_seed003": {str(k): float(np.mean(per_query[f"P@{k}"])) for k in range(1, metrics.SEED003_K_MAX + 1)},
    }
    pr = metrics.interpolated_pr_curve(rels[deepest], n_rel)
    with np.errstate(invalid="ignore"):
        pr_mean = np.nanmean(pr, axis=0) if np.isfinite(pr).any() else np.zeros(pr.shape[1])
    per_class = {}
    for label in sorted(set(labels.tolist())):
        mask = labels == label
        per_class[label] = {
            "queries": int(mask.sum()),
            "relevant_in_index_mean": float(n_rel[mask].mean()),
            **{name: estimate(per_query[name], mask) for name in ("P@1", "P@10", "R@10", "NDCG@10", "mAP@10", "mAP")
               if name in per_query},
        }
    return {
        "figures": figures,
        "curves": curves,
        "pr_curve": {"recall": metrics.RECALL_LEVELS.round(4).tolist(), "precision": pr_mean.round(6).tolist()},
        "per_class": per_class,
        "per_query": {name: values.round(6).tolist() for name, values in per_query.items()
                      if name in ("P@1", "P@10", "mAP@10", "mAP")},
    }
