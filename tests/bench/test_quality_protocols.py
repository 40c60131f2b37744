"""Protocols: leave-one-patient-out never counts or returns the query's own patient."""

from __future__ import annotations

import numpy as np

from cbmir.bench.quality.hog import rank_with_hog
from cbmir.bench.quality.protocols import Entry, IndexView, leave_one_patient_out_queries, split_queries
from cbmir.bench.quality.scoring import score
from cbmir.ingestion.sources import SourceItem


def _index() -> IndexView:
    return IndexView([
        Entry("a1", "a1.png", "dense", "patient:1"),
        Entry("a2", "a2.png", "dense", "patient:1"),
        Entry("b1", "b1.png", "dense", "patient:2"),
        Entry("c1", "c1.png", "fatty", "patient:3"),
        Entry("c2", "c2.png", "dense", "patient:3"),
    ])


def test_leave_one_patient_out_relevant_count_excludes_the_whole_patient() -> None:
    index = _index()
    queries = {q.key: q for q in leave_one_patient_out_queries(index, {})}
    assert index.n_relevant(queries["a1.png"]) == 2  # b1, c2 — not a1 itself, not a2 (same woman)
    assert index.n_excluded(queries["a1.png"]) == 2
    assert index.n_relevant(queries["c1.png"]) == 0


def test_leave_one_patient_out_drops_same_patient_hits_and_keeps_depth() -> None:
    index = _index()
    query = next(q for q in leave_one_patient_out_queries(index, {}) if q.key == "a1.png")
    assert index.keep(query, ["a2", "b1", "a1", "c1", "c2"], 2) == ["b1", "c1"]


def test_split_queries_share_a_group_with_index_images_only_through_the_manifest() -> None:
    items = [SourceItem(uri="/x/q.png", label="dense", name="q.png"),
             SourceItem(uri="/x/r.png", label="dense", name="r.png")]
    queries = split_queries(items, {"r.png": "1"})
    index = _index()
    assert index.n_relevant(queries[0]) == 4  # no patient: every dense index image counts
    assert index.n_relevant(queries[1]) == 2  # r.png belongs to patient 1: a1, a2 excluded


def test_hog_ranking_leave_one_patient_out_never_returns_the_patient() -> None:
    index = _index()
    queries = leave_one_patient_out_queries(index, {})
    descriptors = np.zeros((5, 3), dtype=np.float32)  # all equidistant: only the exclusion decides
    position = {e.source: n for n, e in enumerate(index.entries)}
    rankings = rank_with_hog(index, descriptors, queries, descriptors[[position[q.key] for q in queries]], [5])
    for ranking in rankings:
        groups = {index.by_id[i].group for i in ranking.hits[5]}
        assert ranking.query.group not in groups
        assert len(ranking.hits[5]) == 5 - index.n_excluded(ranking.query)
    scored = score(rankings, [5], ks=[1, 5], resamples=100, by_group=True)
    assert set(scored["per_class"]) == {"dense", "fatty"}


def test_chance_precision_is_the_class_share_of_the_other_images() -> None:
    from cbmir.bench.quality.report import chance_precision

    split = {"protocol": "split", "class_counts": {"index": {"a": 2, "b": 2}, "queries": {"a": 1}}}
    assert chance_precision(split) == 0.5
    lopo = {"protocol": "leave-one-patient-out", "class_counts": {"index": {"a": 2, "b": 2},
                                                                  "queries": {"a": 2, "b": 2}}}
    assert chance_precision(lopo) == 1 / 3
