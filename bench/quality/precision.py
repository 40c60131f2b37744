"""What precision costs: mAP@10 with the archive embedded at one precision and the queries at another, with CIs.

Every image is decoded once and embedded at each precision on this CPU (fp16 and bf16 by autocast, as a GPU
ingestion and a CPU service run them); exact cosine search in numpy ranks each (archive, query) pair, so the only
thing that differs between the cells is the precision. Each cell carries its bootstrap CI and the paired
difference to the archive's own precision (same queries, resampled together), which is what a tolerance rests on.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from cbmir.bench.quality.datasets import DatasetSpec, decode_item
from cbmir.bench.quality.protocols import (
    Entry,
    IndexView,
    Query,
    Ranking,
    group_of,
    leave_one_patient_out_queries,
    split_queries,
)
from cbmir.bench.quality.scoring import relevance, score
from cbmir.bench.quality.search import exact_top_ids
from cbmir.bench.quality.stats import bootstrap_mean
from cbmir.ingestion.sources import SourceItem
from cbmir.services import ranking_metrics as metrics

PRECISIONS = ("fp32", "bf16", "fp16")
DEPTH = metrics.SEED003_K_MAX


def embed_at_precisions(items: Sequence[SourceItem], precisions: Sequence[str] = PRECISIONS, batch: int = 32,
                        backbone: str = "efficientnet_lite0", progress: bool = True) -> dict[str, np.ndarray]:
    """precision -> (len(items), dim) vectors; each image decoded once (as the read tasks do) for all of them."""
    from cbmir.services.embedding import EmbeddingModel

    models = {p: EmbeddingModel.load(backbone, device="cpu", precision=p) for p in precisions}
    size = next(iter(models.values())).preprocessing.input_size
    parts: dict[str, list[np.ndarray]] = {p: [] for p in precisions}
    for start in tqdm(range(0, len(items), batch), desc="embed", unit="batch", file=sys.stderr, disable=not progress):
        pixels = [decode_item(item, size) for item in items[start:start + batch]]
        for p, model in models.items():
            parts[p].append(model.embed(pixels))
    return {p: np.concatenate(v) for p, v in parts.items()}


def _rank(index: IndexView, ids: list[str], index_vectors: np.ndarray, queries: Sequence[Query],
          query_vectors: np.ndarray) -> list[Ranking]:
    top = exact_top_ids(index_vectors, ids, index, queries, query_vectors, "COSINE", DEPTH)
    rankings = []
    for query, hits in zip(queries, top, strict=True):
        ranking = Ranking(query=query, n_relevant=index.n_relevant(query))
        ranking.hits[DEPTH] = hits
        ranking.labels[DEPTH] = [index.by_id[i].label for i in hits]
        rankings.append(ranking)
    return rankings


def _cosines(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    cos = np.sum(a * b, axis=1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return {"min": float(cos.min()), "p01": float(np.quantile(cos, 0.01)), "mean": float(cos.mean())}


@dataclass
class ExactProtocol:
    """A data set's index and queries as `cbmir eval` poses them, for scoring vectors by exact search in numpy:
    `items` are embedded in one list, the first `n_index` of them indexed, `query_rows` pick each query's vector."""

    items: list[SourceItem]
    n_index: int
    ids: list[str]
    index: IndexView
    queries: list[Query]
    query_rows: list[int]
    lopo: bool

    @property
    def by_group(self) -> np.ndarray | None:
        """Bootstrap resampling unit: the patient under leave-one-patient-out, else each query."""
        return np.array([q.group for q in self.queries]) if self.lopo else None

    def rank(self, vectors: np.ndarray, query_vectors: np.ndarray | None = None) -> list[Ranking]:
        """Exact cosine top-DEPTH of each query over the indexed rows of `vectors` (queries from `query_vectors`,
        same rows, when the two differ)."""
        asked = vectors if query_vectors is None else query_vectors
        return _rank(self.index, self.ids, vectors[: self.n_index], self.queries, asked[self.query_rows])

    def rank_subset(self, index_vectors: np.ndarray, vectors: np.ndarray, rows: Sequence[int]) -> list[Ranking]:
        """Exact cosine top-DEPTH of the queries at `rows` (their vectors from `vectors`, all items' rows) over
        `index_vectors` in place of the indexed rows, e.g. an index transformed after embedding."""
        return _rank(self.index, self.ids, index_vectors, [self.queries[n] for n in rows],
                     vectors[[self.query_rows[n] for n in rows]])


def exact_protocol(spec: DatasetSpec, limit: int | None = None) -> ExactProtocol:
    groups = spec.groups()
    index_items = spec.listing(spec.ingest_split()).items
    lopo = spec.protocol != "split"
    query_items = [] if lopo else spec.listing(spec.query_split).items
    if limit:
        index_items, query_items = index_items[:limit], query_items[: max(1, limit // 3)]
    n_index = len(index_items)
    ids = [item.name for item in index_items]
    index = IndexView([Entry(id=item.name, source=item.name, label=item.label,
                             group=group_of(item.name, groups, "index")) for item in index_items], spec.is_unlabelled)
    if lopo:
        queries = leave_one_patient_out_queries(index, {item.name: item for item in index_items})
        row_of = {name: i for i, name in enumerate(ids)}
    else:
        queries = split_queries(query_items, groups, spec.is_unlabelled)
        row_of = {item.name: n_index + i for i, item in enumerate(query_items)}
    return ExactProtocol(items=[*index_items, *query_items], n_index=n_index, ids=ids, index=index,
                         queries=list(queries), query_rows=[row_of[q.key] for q in queries], lopo=lopo)


def precision_grid(spec: DatasetSpec, precisions: Sequence[str] = PRECISIONS, limit: int | None = None,
                   resamples: int = 2000, progress: bool = True) -> dict[str, Any]:
    """Every (archive precision, query precision) cell of one data set: mAP@10 and P@10 with CIs, the paired
    mAP@10 difference to the archive's own precision, and the cosine between each precision's vectors and fp32."""
    started = time.perf_counter()
    protocol = exact_protocol(spec, limit)
    vectors = embed_at_precisions(protocol.items, precisions, progress=progress)
    lopo, by_group = protocol.lopo, protocol.by_group
    per_query: dict[tuple[str, str], np.ndarray] = {}
    cells = []
    for archive in precisions:
        for asked in precisions:
            rankings = protocol.rank(vectors[archive], vectors[asked])
            per_query[(archive, asked)] = metrics.seed003_average_precision(relevance(rankings, DEPTH))
            figures = score(rankings, [DEPTH], ks=(1, DEPTH), resamples=resamples, by_group=lopo)["figures"]
            cells.append({"archive": archive, "queries": asked, "mAP@10": figures["mAP@10"],
                          "P@10": figures[f"P@{DEPTH}"]})
    for cell in cells:
        delta = per_query[(cell["archive"], cell["queries"])] - per_query[(cell["archive"], cell["archive"])]
        cell["delta_mAP@10_vs_same"] = bootstrap_mean(delta, by_group, resamples=resamples).to_dict()
        cell["queries_changed"] = int(np.count_nonzero(delta))
    return {"dataset": spec.name, "protocol": spec.protocol, "index_images": protocol.n_index,
            "queries": len(protocol.queries),
            "limit": limit, "precisions": list(precisions), "cells": cells,
            "cosine_to_fp32": {p: _cosines(vectors[p], vectors["fp32"]) for p in precisions if p != "fp32"}
            if "fp32" in precisions else {},
            "seconds": time.perf_counter() - started}


def precision_table(record: dict[str, Any]) -> str:
    """One line per cell: archive, queries, mAP@10 [CI], paired difference [CI], queries whose AP moved."""
    lines = [f"{record['dataset']} ({record['protocol']}, {record['index_images']} indexed, {record['queries']} "
             "queries)", f"{'archive':>7s} {'queries':>7s} {'mAP@10 [95% CI]':>24s} {'diff vs same [95% CI]':>30s} "
             f"{'moved':>5s}"]
    for c in record["cells"]:
        m, d = c["mAP@10"], c["delta_mAP@10_vs_same"]
        lines.append(f"{c['archive']:>7s} {c['queries']:>7s} {m['mean']:8.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}] "
                     f"{d['mean']:+9.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] {c['queries_changed']:5d}")
    for p, cos in record.get("cosine_to_fp32", {}).items():
        lines.append(f"cosine {p} to fp32: min {cos['min']:.5f}, 1st percentile {cos['p01']:.5f}, "
                     f"mean {cos['mean']:.6f}")
    return "\n".join(lines)


def precision_plot(record: dict[str, Any], directory: Any) -> Any:
    """mAP@10 of every (archive, queries) cell with its CI, one panel per data set."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = record["datasets"]
    fig, axes = plt.subplots(1, len(datasets), figsize=(5 * len(datasets), 4), squeeze=False)
    for ax, data in zip(axes[0], datasets, strict=True):
        cells = data["cells"]
        means = [c["mAP@10"]["mean"] for c in cells]
        errors = [[m - c["mAP@10"]["ci_low"] for m, c in zip(means, cells, strict=True)],
                  [c["mAP@10"]["ci_high"] - m for m, c in zip(means, cells, strict=True)]]
        ax.bar(range(len(cells)), means, yerr=errors, capsize=3)
        ax.set_xticks(range(len(cells)), [f"{c['archive']}\n{c['queries']}" for c in cells], fontsize=7)
        ax.set_title(f"{data['dataset']}: archive / queries")
        ax.set_ylabel("mAP@10 (95% CI)")
        ax.set_ylim(min(means) - 0.1, min(1.0, max(means) + 0.05))
    fig.tight_layout()
    path = directory / "precision.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def precision_markdown(record: dict[str, Any]) -> str:
    """The docs' table: one row per data set and (archive, queries) pair, then the cosines to fp32."""
    rows = ["| data set | archive | queries | mAP@10 [95% CI] | paired diff vs same [95% CI] | queries moved |",
            "|---|---|---|---|---|---|"]
    for data in record["datasets"]:
        for c in data["cells"]:
            m, d = c["mAP@10"], c["delta_mAP@10_vs_same"]
            rows.append(f"| {data['dataset']} ({data['queries']} q) | {c['archive']} | {c['queries']} | "
                        f"{m['mean']:.4f} [{m['ci_low']:.4f}, {m['ci_high']:.4f}] | "
                        f"{d['mean']:+.4f} [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}] | {c['queries_changed']} |")
    cosines = [f"{data['dataset']} {p}: min {cos['min']:.5f}, mean {cos['mean']:.6f}"
               for data in record["datasets"] for p, cos in data.get("cosine_to_fp32", {}).items()]
    return "\n".join(rows) + "\n\nCosine of each image's vector to its fp32 vector: " + "; ".join(cosines) + "."
