"""Rank every query through RetrievalEngine.search — the code the gRPC service runs — at each search depth."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from dataclasses import fields

import numpy as np
from tqdm import tqdm

from cbmir.bench.quality.config import HOG, EvalConfig
from cbmir.bench.quality.datasets import image_bytes
from cbmir.bench.quality.protocols import IndexView, Query, Ranking
from cbmir.services.query.engine import Prefilter, RetrievalEngine, SearchQuery

log = logging.getLogger(__name__)

BY_VECTOR = "vector"  # split protocol, plain search: the query embedded once (same decode + model code), cached
BY_ID = "id"  # leave-one-patient-out: the stored vector of the query image
BY_IMAGE = "image"  # re-ranking or a predicted-class prefilter need the image itself (or a stored id)

_QUERY_FIELDS = {f.name for f in fields(SearchQuery)}


def query_mode(config: EvalConfig, stored_queries: bool) -> str:
    if config.prefilter == "soft":
        return BY_IMAGE  # class probabilities come from the image: a stored row keeps only its predicted class
    if stored_queries:
        return BY_ID  # the engine predicts / re-ranks a stored id from what ingestion stored
    # HOG re-ranking describes the query image; k-reciprocal works from vectors alone.
    return BY_IMAGE if (config.rerank == HOG or config.prefilter != "off") else BY_VECTOR


def engine_supports(config: EvalConfig, engine: RetrievalEngine) -> str:
    """Empty when the engine can run `config`, else why not (the configuration is then skipped and reported)."""
    if config.rerank and not {"rerank", "k_prep"} <= _QUERY_FIELDS:
        return "this checkout's SearchQuery has no rerank/k_prep (the engine's re-ranking has not landed)"
    if config.prefilter in (Prefilter.PREDICTED.value, Prefilter.SOFT.value) and not getattr(engine, "classes", None):
        return (f"prefilter {config.prefilter!r} needs a model with a classifier head: pass --weights with a "
                "`cbmir train` checkpoint")
    return ""


def _search_query(config: EvalConfig, query: Query, mode: str, top_k: int, vector: np.ndarray | None,
                  rerank: bool, k_prep: int, exclude_ids: tuple[str, ...] = ()) -> SearchQuery:
    kwargs: dict[str, object] = {"top_k": top_k}
    if mode == BY_VECTOR:
        kwargs["vector"] = vector
    elif mode == BY_ID:
        kwargs.update(id=query.stored_id, exclude_query_id=True)
    else:
        if query.item is None:
            raise ValueError(f"query {query.key} has no image to send")
        kwargs["image"] = image_bytes(query.item)
    # An indexed image as a query (leave-one-patient-out): its patient is left out by the store, so the engine sees
    # the candidates a new image would (the soft prefilter scales similarity by them, αQE averages them in).
    kwargs["exclude_ids"] = exclude_ids
    kwargs["query_expansion"] = config.query_expansion
    kwargs["soft_weight"] = config.soft_weight
    kwargs["prefilter"] = Prefilter(config.prefilter)  # eval's names are the engine's ("off", "predicted", "soft")
    if rerank:
        kwargs.update(rerank=config.rerank, k_prep=k_prep)
    return SearchQuery(**kwargs)  # type: ignore[arg-type]


def rank_with_engine(engine: RetrievalEngine, config: EvalConfig, index: IndexView, queries: Sequence[Query],
                     depths: Sequence[int], mode: str, vectors: dict[str, np.ndarray] | None = None,
                     progress: bool = True) -> list[Ranking]:
    """Each query's hits at each depth, its own patient dropped (the search asks for that many more).

    With re-ranking, depths up to k_prep are the engine's re-ranked lists; a deeper list is the re-ranked
    k_prep followed by the plain CNN ranking (seed 003 re-orders only the k_prep it retrieved).
    """
    rankings = []
    limit = min(len(index), engine.max_top_k)
    # FLAT is exhaustive, so its top-10 is the first 10 of its top-1000 (up to ties): one search per query then,
    # not one per depth (an image query re-embeds the image on every search). ANN indexes keep a search per depth.
    exact = config.index == "FLAT"
    for query in tqdm(queries, desc="queries", unit="q", file=sys.stderr, disable=not progress):
        ranking = Ranking(query=query, n_relevant=index.n_relevant(query))
        excluded = index.n_excluded(query)
        vector = vectors[query.key] if vectors is not None else None
        search_ms: list[float] = []
        cache: dict[tuple[int, bool], list[str]] = {}

        def run(depth: int, rerank: bool, ranking: Ranking = ranking, query: Query = query, excluded: int = excluded,
                vector: np.ndarray | None = vector, search_ms: list[float] = search_ms,
                cache: dict[tuple[int, bool], list[str]] = cache) -> list[str]:
            if (depth, rerank) in cache:
                return cache[(depth, rerank)]
            top_k = min(depth + excluded, limit)
            k_prep = min(config.k_prep + excluded, limit) if rerank else 0
            result = engine.search(_search_query(config, query, mode, top_k, vector, rerank, max(k_prep, top_k),
                                                 index.ids_of_patient(query) if query.stored_id else ()))
            search_ms.append(result.timings_ms.get("search", 0.0) + result.timings_ms.get("rerank", 0.0))
            if config.prefilter != "off" and "predicted_class" not in ranking.extra:
                ranking.extra.update(predicted_class=result.predicted_class,
                                     predicted_probability=result.predicted_probability,
                                     prefilter_applied=result.prefilter_applied,
                                     prefilter_note=result.prefilter_note)
            cache[(depth, rerank)] = index.keep(query, [h.id for h in result.hits], depth)
            return cache[(depth, rerank)]

        for depth in depths:
            if not config.rerank and exact:
                hits = run(max(depths), False)[:depth]  # exact search: a shallower list is a prefix of the deeper
            elif not config.rerank:
                hits = run(depth, False)
            elif depth <= config.k_prep:
                hits = run(depth, True)
            else:
                head = run(config.k_prep, True)
                plain = run(max(depths), False)[:depth] if exact else run(depth, False)
                tail = [i for i in plain if i not in set(head)]
                hits = (head + tail)[:depth]
            ranking.hits[depth] = hits
            ranking.labels[depth] = [index.by_id[i].label for i in hits]
        ranking.extra["search_ms"] = search_ms
        rankings.append(ranking)
    return rankings


def exact_top_ids(index_vectors: np.ndarray, index_ids: Sequence[str], index: IndexView, queries: Sequence[Query],
                  query_vectors: np.ndarray, metric: str, k: int) -> list[list[str]]:
    """Brute-force top-k in numpy with the collection's metric (the ground truth an ANN index is graded against)."""
    x = np.asarray(index_vectors, dtype=np.float64)
    q = np.asarray(query_vectors, dtype=np.float64)
    if metric == "COSINE":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    if metric == "L2":
        scores = -(np.sum(q**2, axis=1)[:, None] - 2 * q @ x.T + np.sum(x**2, axis=1)[None, :])
    else:
        scores = q @ x.T
    groups = np.array([index.by_id[i].group for i in index_ids])
    out = []
    for row, query in zip(scores, queries, strict=True):
        row = np.where(groups == query.group, -np.inf, row)
        order = np.argsort(-row, kind="stable")[:k]
        out.append([index_ids[j] for j in order if np.isfinite(row[j])])
    return out
