"""run_eval: ingest the index through the real pipeline, query it through the engine, score, plot, record."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from cbmir.bench.quality import plots
from cbmir.bench.quality.config import DEFAULT_DB, DEFAULT_OUT, EvalConfig, collection_name
from cbmir.bench.quality.crossfit import load_folds, patient_of
from cbmir.bench.quality.datasets import LEAVE_ONE_PATIENT_OUT, DatasetSpec, decode_item
from cbmir.bench.quality.protocols import (
    Entry,
    IndexView,
    Query,
    Ranking,
    group_of,
    leave_one_patient_out_queries,
    split_queries,
)
from cbmir.bench.quality.record import write_record
from cbmir.bench.quality.scoring import DEFAULT_KS, score
from cbmir.bench.quality.stats import DEFAULT_RESAMPLES, DEFAULT_SEED
from cbmir.bench.run_record import machine, now, versions
from cbmir.ingestion.sources import SourceItem

log = logging.getLogger(__name__)

MILVUS_MAX_TOP_K = 16384  # Milvus refuses larger limits
ROW_CHUNK = 1000


class EvalUnsupported(RuntimeError):
    """This checkout cannot run the configuration (e.g. no classifier head for a predicted-class prefilter)."""


def run_eval(spec: DatasetSpec, config: EvalConfig, out_root: Path = DEFAULT_OUT, milvus_uri: str = DEFAULT_DB,
             ks: Sequence[int] = DEFAULT_KS, resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_SEED,
             actors: int = 2, batch_size: int = 32, progress: bool = True, tsne: bool = True) -> dict:
    """Score `config` on `spec`; writes results/quality/<dataset>/<config>/record.json + PNGs, returns the record."""
    cache_dir = out_root / spec.name / "_cache"
    groups = spec.groups()
    notes: list[str] = []
    if config.is_hog_alone:
        index, index_vectors, queries, rankings, depths, extra = _hog_rankings(spec, groups, ks, cache_dir, progress)
        config_name = config.name()
        normalise = False
    elif config.cross_fit:
        index, index_vectors, queries, rankings, depths, extra = _cross_fit_rankings(
            spec, config, groups, ks, cache_dir, milvus_uri, actors, batch_size, progress, notes)
        config = replace(config, loss=extra.pop("loss", ""))
        config_name = config.name(extra["weights_tag"])
        normalise = config.metric == "COSINE"
    else:
        index, index_vectors, queries, rankings, depths, extra = _engine_rankings(
            spec, config, groups, ks, cache_dir, milvus_uri, actors, batch_size, progress, notes)
        config = replace(config, loss=extra.pop("loss", ""))
        config_name = config.name(extra["weights_tag"])
        normalise = config.metric == "COSINE"
    min_confidence = extra.pop("min_confidence", None)
    extra["prefilter"] = (prefilter_summary(rankings, min_confidence, extra.get("mode", ""))
                          if config.prefilter != "off" else None)
    notes[:] = list(dict.fromkeys(notes))
    out_dir = out_root / spec.name / config_name
    out_dir.mkdir(parents=True, exist_ok=True)

    scored = score(rankings, depths, ks, resamples=resamples, seed=seed,
                   by_group=spec.protocol == LEAVE_ONE_PATIENT_OUT)
    title = f"{spec.name} · {config.method_label()} · {config_name}"
    if config.cross_fit:
        title += "\n(embedding views: fold 0's model)"
    pngs = [plots.plot_precision_recall_vs_k(scored["curves"], title, out_dir / "precision_recall_vs_k.png"),
            plots.plot_pr_curve(scored["pr_curve"], title, out_dir / "pr_curve.png")]
    labels = [e.label for e in index.entries]
    views = plots.embedding_views(index_vectors, normalise, cache_dir, tsne=tsne, seed=0)
    explained = np.asarray(views["pca_explained"])
    pngs.append(plots.plot_embedding(np.asarray(views["pca"]), labels,
                                     f"{title}\nPCA of the index ({explained.sum():.0%} of variance)",
                                     out_dir / "embedding_pca.png"))
    if "tsne" in views:
        pngs.append(plots.plot_embedding(np.asarray(views["tsne"]), labels, f"{title}\nt-SNE of the index",
                                         out_dir / "embedding_tsne.png"))

    # Which images came back, per query: lets anyone audit a figure (and a test check the patient exclusion).
    scored["per_query"]["query"] = [r.query.key for r in rankings]
    scored["per_query"]["top10_sources"] = [[index.by_id[i].source for i in r.hits[depths[0]][:10]]
                                            for r in rankings]
    if config.prefilter != "off":
        scored["per_query"]["predicted_class"] = [str(r.extra.get("predicted_class") or "") for r in rankings]
        scored["per_query"]["label"] = [r.query.label for r in rankings]  # right or wrong prediction, per query
        scored["per_query"]["prefilter_applied"] = [bool(r.extra.get("prefilter_applied")) for r in rankings]
    search_ms = [t for r in rankings for t in r.extra.get("search_ms", [])]
    record = {
        "schema": "cbmir.quality/1",
        "created": now(),
        "dataset": spec.to_dict(),
        "protocol": spec.protocol,
        "method": config.method_label(),
        "config_name": config_name,
        "config": config.to_dict(),
        "index_size": len(index),
        "queries": len(queries),
        "unlabelled": _unlabelled_counts(spec, index),
        "class_counts": {"index": dict(sorted(Counter(labels).items())),
                         "queries": dict(sorted(Counter(q.label for q in queries).items()))},
        "search": {"depths": list(depths), "mode": extra.get("mode", "numpy brute force"),
                   "median_ms_per_search": float(np.median(search_ms)) if search_ms else None},
        **{k: v for k, v in extra.items() if k not in ("mode", "weights_tag")},
        "versions": versions(),
        "machine": machine(),
        "bootstrap": {"resamples": resamples, "seed": seed, "confidence": 0.95,
                      "unit": "patient" if spec.protocol == LEAVE_ONE_PATIENT_OUT else "query"},
        "definitions": {
            "relevant": "same label as the query",
            "P@k": "relevant among the first k / k",
            "R@k": "relevant among the first k / relevant items in the index (query's own patient excluded)",
            "NDCG@k": "binary-relevance DCG@k / ideal DCG@k (seed 000 eq. 3)",
            "mAP@10": "seed 003 eq. 9: mean over queries of (1/10) sum_{k=1..10} P@k",
            "mAP": "textbook AP over the full ranking (every indexed image), mean over queries",
            "ANN recall@10": "overlap of the engine's top 10 with a numpy brute-force top 10 (same metric)",
        },
        **scored,
        "notes": notes,
        "pngs": [str(p) for p in pngs],
    }
    write_record(record, out_dir)
    return record


# -- through the engine ---------------------------------------------------------------------------------------


def _unlabelled_counts(spec: DatasetSpec, index: IndexView) -> dict[str, object]:
    """How many images carry no class (indexed, never a query, never relevant), and which values say so."""
    in_index = sum(1 for e in index.entries if not e.label)
    skipped = (in_index if spec.protocol == LEAVE_ONE_PATIENT_OUT
               else sum(1 for item in spec.listing(spec.query_split).items if spec.is_unlabelled(item.label)))
    return {"values": list(spec.unlabelled_values), "index_images": in_index, "queries_skipped": skipped}


def _engine_rankings(spec: DatasetSpec, config: EvalConfig, groups: dict[str, str], ks: Sequence[int],
                     cache_dir: Path, milvus_uri: str, actors: int, batch_size: int, progress: bool,
                     notes: list[str], query_filter: Callable[[Query], bool] | None = None,
                     ) -> tuple[IndexView, np.ndarray, list[Query], list[Ranking], list[int], dict]:
    """Ingest (or re-use) the collection of config's model and rank the protocol's queries through the engine;
    query_filter keeps only some of the queries (cross-fitting: the fold's held-out patients)."""
    from cbmir.bench.quality.search import (
        BY_ID,
        BY_VECTOR,
        engine_supports,
        exact_top_ids,
        query_mode,
        rank_with_engine,
    )
    from cbmir.ingestion import IngestConfig, run_ingestion
    from cbmir.services.embedding import EmbeddingModel
    from cbmir.services.query.engine import DEFAULT_MAX_TOP_K, RetrievalEngine
    from cbmir.services.store import MilvusStore
    from cbmir.services.store.schema import descriptor_collection_name

    model = EmbeddingModel.load(config.backbone, weights=config.weights, tta=config.tta)
    identity = json.loads(model.identity.to_json())
    lopo = spec.protocol == LEAVE_ONE_PATIENT_OUT
    split = spec.index_split
    collection = collection_name(spec.name, spec.label_column, split, model.model_id, config.metric, config.index)

    ingest = {"source": spec.source, "milvus_uri": milvus_uri, "collection": collection, "backbone": config.backbone,
              "weights": config.weights, "split": split, "label_column": spec.label_column, "actors": actors,
              "batch_size": batch_size, "index_type": config.index, "metric": config.metric, "report_path": None,
              "progress": progress, "tta": config.tta,
              # The evaluation matches stored rows to listed items by their relative path (a scratch collection).
              "source_field": "relative"}
    descriptors = "rerank_descriptor" in {f.name for f in fields(IngestConfig)}
    if descriptors:
        ingest["rerank_descriptor"] = "hog"  # always: the same collection then serves re-ranked configurations
    store = MilvusStore(milvus_uri)
    listed = len(spec.listing(split).items)
    if store.has_collection(collection):
        store.load(collection)  # a new process finds a Milvus Lite collection released
    if (store.has_collection(collection) and store.count(collection) >= listed
            and (not descriptors or store.has_descriptors(collection, "hog"))):
        # Filled by an earlier run's ingestion; re-running it would only skip every image (Ray start-up for nothing).
        ingest_summary: dict = {"cached": True, "rows": store.count(collection)}
    else:
        report = run_ingestion(IngestConfig(**ingest))
        ingest_summary = {k: v for k, v in report.to_dict().items()
                          if k in ("read", "ingested", "skipped_present", "failed", "duplicates_in_run", "seconds",
                                   "images_per_second", "failures", "duplicates")}
    # A new process finds a Milvus Lite collection released: load it (and its HOG companion) before searching.
    store.load(collection)
    if descriptors and store.has_descriptors(collection, "hog"):
        store.load(descriptor_collection_name(collection, "hog"))
    ids = sorted(store.iter_ids(collection))
    rows: dict[str, dict] = {}
    for start in range(0, len(ids), ROW_CHUNK):
        rows.update(store.get_rows(collection, ids[start:start + ROW_CHUNK], with_vectors=True))
    entries = [Entry(id=i, source=rows[i]["source"], label=rows[i]["label"],
                     group=group_of(rows[i]["source"], groups, "index")) for i in ids]
    index = IndexView(entries, spec.is_unlabelled)
    index_vectors = np.asarray([rows[i]["embedding"] for i in ids], dtype=np.float32)

    max_top_k = min(MILVUS_MAX_TOP_K, max(DEFAULT_MAX_TOP_K, len(index) + index.max_excluded()))
    engine = RetrievalEngine(store, model, collection, max_top_k=max_top_k)
    reason = engine_supports(config, engine)
    if reason:
        raise EvalUnsupported(reason)
    if len(index) + index.max_excluded() > MILVUS_MAX_TOP_K:
        notes.append(f"full ranking capped at {MILVUS_MAX_TOP_K} hits (Milvus's largest limit)")

    if lopo:
        items = {item.name: item for item in spec.listing(split).items}
        queries = leave_one_patient_out_queries(index, items)
    else:
        queries = split_queries(spec.listing(spec.query_split).items, groups, spec.is_unlabelled)
    if query_filter is not None:
        queries = [q for q in queries if query_filter(q)]
    mode = query_mode(config, stored_queries=lopo)
    vectors: dict[str, np.ndarray] | None = None
    if mode == BY_VECTOR:
        vectors, failed = _query_vectors(model, queries, cache_dir, spec.query_split or "all", progress)
        if failed:
            notes.append(f"{len(failed)} query images could not be decoded and were left out: {failed[:5]}")
            queries = [q for q in queries if q.key in vectors]

    depths = sorted({min(d, len(index)) for d in (10, max(ks), len(index))})
    rankings = rank_with_engine(engine, config, index, queries, depths, mode, vectors, progress)

    ann_recall = None
    if mode in (BY_VECTOR, BY_ID) and not config.rerank and config.prefilter == "off" and \
            not config.query_expansion:
        position = {i: n for n, i in enumerate(ids)}
        q_vectors = (np.stack([vectors[q.key] for q in queries]) if vectors is not None
                     else index_vectors[[position[q.stored_id] for q in queries]])
        k = min(10, len(index))
        exact = exact_top_ids(index_vectors, ids, index, queries, q_vectors, config.metric, k)
        overlaps = [len(set(r.hits[depths[0]][:k]) & set(e)) / max(len(e), 1)
                    for r, e in zip(rankings, exact, strict=True)]
        ann_recall = float(np.mean(overlaps))
    if config.index == "HNSW":
        notes.append("HNSW searches with ef = max(64, top_k): the full-ranking search (top_k = index size) is "
                     "near-exhaustive, so index loss shows in P@k/mAP@10 and ANN recall@10, not in full mAP")

    info = store.describe(collection)
    weights_tag = "imagenet" if not config.weights else f"{weights_label(config.weights)}-" \
                                                        f"{identity['weights_sha256'][:8]}"
    extra = {
        "mode": mode,
        "weights_tag": weights_tag,
        "collection": collection,
        "milvus_uri": milvus_uri,
        "model": {**identity, "model_id": model.model_id, "classes": getattr(model, "classes", None)},
        "store_index": {"metric": info.metric, "index_type": info.index_type, "params": info.index_params,
                        "rows": info.row_count},
        "ingest": ingest_summary,
        "index_recall_at_10_vs_exact": ann_recall,
        "loss": _loss_of(identity["architecture"]) if config.weights else "",
        "training": training_summary(config.weights) if config.weights else None,
        "min_confidence": engine.min_confidence,
    }
    return index, index_vectors, queries, rankings, depths, extra


_FLAGS = {"split": "--split", "val_split": "--val-split", "val_fraction": "--val-fraction",
          "label_column": "--label-column", "group_column": "--group-column", "folds": "--folds", "fold": "--fold",
          "limit": "--limit", "backbone": "--backbone", "weights": "--weights", "input_size": "--input-size",
          "loss": "--loss", "embedding_dim": "--embedding-dim", "epochs": "--epochs", "batch_size": "--batch-size",
          "lr_backbone": "--lr-backbone", "lr_head": "--lr-head", "weight_decay": "--weight-decay",
          "label_smoothing": "--label-smoothing", "margin": "--margin", "patience": "--patience",
          "select": "--select", "freeze_blocks": "--freeze-blocks", "views": "--views", "seed": "--seed"}


def training_summary(weights: str) -> dict | None:
    """What a `cbmir train` checkpoint says about its run: the command, epochs, validation figures, CPU time."""
    from cbmir.services.embedding.checkpoint import is_checkpoint_object, read_raw
    from cbmir.training.trainer import TrainConfig

    try:
        raw = read_raw(weights)
    except Exception:  # a plain state dict file of another format: nothing to summarise
        return None
    if not is_checkpoint_object(raw):
        return None
    training = raw.get("training") or {}
    config = training.get("config") or {}
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    flags = []
    for name, flag in _FLAGS.items():
        if name in config and (config[name] != defaults.get(name) or name == "loss"
                               or (name == "fold" and config.get("folds"))):
            value = config[name]
            flags.append(f"{flag} ''" if value in ("", None) else f"{flag} {value}")
    # best.pt keeps the record of its own epoch; the run's log (beside it) has every epoch of the run
    log_path = Path(weights).parent / "train-log.json"
    if log_path.is_file():
        try:
            logged = json.loads(log_path.read_text())
            if (logged.get("data") or {}).get("digest") == (training.get("data") or {}).get("digest"):
                training = {**training, "history": logged.get("history") or [], "timing": logged.get("timing") or {}}
        except (OSError, ValueError):
            pass
    history = training.get("history") or []
    timing = training.get("timing") or {}
    epoch_seconds = sum(float(h.get("epoch_seconds", 0.0)) for h in history)
    return {
        "command": " ".join(["cbmir train", str(config.get("source", "?")), "--out", str(config.get("out_dir", "?")),
                             *flags]),
        "loss": config.get("loss"), "freeze_blocks": config.get("freeze_blocks"),
        "input_size": config.get("input_size"), "epochs_run": len(history), "best_epoch": training.get("best_epoch"),
        "selected_by": training.get("selected_by"), "metrics": training.get("metrics"),
        "train_images": (training.get("data") or {}).get("train_images"),
        "val_images": (training.get("data") or {}).get("val_images"),
        "heldout_groups": len((training.get("data") or {}).get("heldout_groups") or []),
        "seconds": {"decode": timing.get("decode_seconds"), "trunk_cache": timing.get("trunk_cache_seconds"),
                    "epochs": round(epoch_seconds, 1),
                    "total": round(float(timing.get("decode_seconds") or 0) + float(timing.get("trunk_cache_seconds")
                                                                                     or 0) + epoch_seconds, 1)},
        "note": "seconds: decode and trunk cache of the last (resumed) process plus every epoch; 2 shared cores",
    }


def weights_label(weights: str) -> str:
    """The run directory naming a checkpoint (runs/brain-ce/best.pt -> brain-ce); an ensemble joins its members'."""
    from cbmir.services.embedding.ensemble import ensemble_members

    paths = ensemble_members(weights) or [weights]
    return "+".join(Path(p).parent.name or "weights" for p in paths)


def _loss_of(architecture: str) -> str:
    """'efficientnet_lite0+ce1280' -> 'ce', '…+metric512' -> 'metric', 'ensemble[…]' -> 'ensemble', a plain
    backbone -> ''."""
    from cbmir.services.embedding.ensemble import ENSEMBLE_PREFIX

    if architecture.startswith(ENSEMBLE_PREFIX + "["):
        return "ensemble"
    found = re.search(r"\+(ce|metric)\d+", architecture)
    return found.group(1) if found else ""


def prefilter_summary(rankings: Sequence[Ranking], min_confidence: float | None, mode: str) -> dict:
    """How the predicted-class prefilter behaved: applied or fell back (below min_confidence / no stored class),
    and how often the predicted class was the query's label."""
    applied = np.array([bool(r.extra.get("prefilter_applied")) for r in rankings])
    predicted = [str(r.extra.get("predicted_class") or "") for r in rankings]
    correct = np.array([p == r.query.label for p, r in zip(predicted, rankings, strict=True)])
    probability = np.array([float(r.extra.get("predicted_probability") or 0.0) for r in rankings])
    return {
        "queries": len(rankings),
        "applied_fraction": float(applied.mean()) if len(applied) else 0.0,
        "fell_back": int((~applied).sum()),
        "no_prediction": int(sum(not p for p in predicted)),
        "predicted_class_accuracy": float(correct.mean()) if len(correct) else 0.0,
        "accuracy_when_applied": float(correct[applied].mean()) if applied.any() else None,
        "median_probability": float(np.median(probability)) if len(probability) else None,
        "min_confidence": min_confidence,
        "source": ("the class predicted at ingestion for the stored query image (probability not stored: reported "
                   "as 1.0, so no fallback)" if mode == "id" else "the engine's classifier on the query image"),
    }


def _cross_fit_rankings(spec: DatasetSpec, config: EvalConfig, groups: dict[str, str], ks: Sequence[int],
                        cache_dir: Path, milvus_uri: str, actors: int, batch_size: int, progress: bool,
                        notes: list[str]) -> tuple[IndexView, np.ndarray, list[Query], list[Ranking], list[int], dict]:
    """One collection per fold model; fold i's model answers only fold i's held-out patients; queries pooled."""
    sources = [item.name for item in spec.listing(spec.index_split).items]
    folds = load_folds(config.cross_fit, spec, groups, sources)
    queries: list[Query] = []
    rankings: list[Ranking] = []
    first: tuple | None = None
    per_fold: list[dict] = []
    recall_sum, recall_n = 0.0, 0
    for fold in folds:
        def held_out(query: Query, heldout: frozenset[str] = fold.heldout) -> bool:
            return patient_of(query.key, groups) in heldout

        fold_config = replace(config, weights=fold.path, cross_fit="")
        index, vectors, fold_queries, fold_rankings, depths, extra = _engine_rankings(
            spec, fold_config, groups, ks, cache_dir, milvus_uri, actors, batch_size, progress, notes,
            query_filter=held_out)
        if first is None:
            first = (index, vectors, depths, extra)
        elif len(index) != len(first[0]) or depths != first[2]:
            raise RuntimeError(f"fold {fold.fold}'s collection holds {len(index)} images, fold 0's {len(first[0])}")
        queries += fold_queries
        rankings += fold_rankings
        if extra["index_recall_at_10_vs_exact"] is not None:
            recall_sum += extra["index_recall_at_10_vs_exact"] * len(fold_queries)
            recall_n += len(fold_queries)
        per_fold.append({"fold": fold.fold, "checkpoint": fold.path, "model_id": extra["model"]["model_id"],
                         "weights_sha256": extra["model"]["weights_sha256"], "collection": extra["collection"],
                         "heldout_patients": len(fold.heldout), "queries": len(fold_queries),
                         "ingest": extra["ingest"], "training": extra.get("training"),
                         "index_recall_at_10_vs_exact": extra["index_recall_at_10_vs_exact"]})
    assert first is not None
    index, vectors, depths, extra = first
    keys = [q.key for q in queries]
    if len(set(keys)) != len(keys) or len(keys) != len(index):
        raise RuntimeError(f"cross-fit queried {len(set(keys))} distinct images ({len(keys)} queries) of "
                           f"{len(index)}: every image must query exactly once")
    digest = hashlib.sha256("".join(f["weights_sha256"] for f in per_fold).encode()).hexdigest()[:8]
    common = re.sub(r"[-_]?(f|fold)?$", "", _common_prefix([Path(f.path).parent.name for f in folds]))
    notes.append(f"cross-fitted over {len(folds)} folds: fold i's model embeds every image into its own collection "
                 "and answers only the queries of fold i's held-out patients (never trained or validated on); "
                 "queries pooled across folds")
    extra = {**extra, "weights_tag": f"xfit{len(folds)}-{common or 'folds'}-{digest}",
             "collection": [f["collection"] for f in per_fold], "cross_fit": {"pattern": config.cross_fit,
                                                                               "folds": per_fold},
             "index_recall_at_10_vs_exact": recall_sum / recall_n if recall_n else None,
             "loss": folds[0].loss, "training": None}  # each fold's run is in cross_fit.folds
    return index, vectors, queries, rankings, depths, extra


def _common_prefix(names: list[str]) -> str:
    prefix = names[0] if names else ""
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix


def _query_vectors(model: object, queries: Sequence[Query], cache_dir: Path, split: str,
                   progress: bool) -> tuple[dict[str, np.ndarray], list[str]]:
    """Query images embedded once by the engine's own decode + model code, cached per model and query set."""
    import hashlib

    from cbmir.services.embedding import ImageDecodeError

    model_id = model.model_id  # type: ignore[attr-defined]
    digest = hashlib.sha256("\n".join(q.key for q in queries).encode()).hexdigest()[:12]
    size = model.preprocessing.input_size  # type: ignore[attr-defined]
    path = cache_dir / f"queries_{split}_{model_id}_{digest}_r{size}.npz"
    if path.is_file():
        with np.load(path) as data:
            return dict(zip(data["keys"].tolist(), data["vectors"], strict=True)), data["failed"].tolist()
    keys, pixels, failed = [], [], []
    vectors: list[np.ndarray] = []
    for query in tqdm(queries, desc="embed queries", unit="img", file=sys.stderr, disable=not progress):
        try:
            pixels.append(decode_item(query.item, size))  # type: ignore[arg-type]
            keys.append(query.key)
        except (ImageDecodeError, OSError) as error:
            log.warning("query %s: %s", query.key, error)
            failed.append(query.key)
        if len(pixels) == 32:
            vectors.append(model.embed(pixels))  # type: ignore[attr-defined]
            pixels = []
    if pixels:
        vectors.append(model.embed(pixels))  # type: ignore[attr-defined]
    matrix = np.concatenate(vectors) if vectors else np.zeros((0, model.dim), np.float32)  # type: ignore
    cache_dir.mkdir(parents=True, exist_ok=True)
    np.savez(path, keys=np.array(keys), vectors=matrix, failed=np.array(failed, dtype=str))
    return dict(zip(keys, matrix, strict=True)), failed


# -- HOG alone (seed 003), no engine -----------------------------------------------------------------------------


def _hog_rankings(spec: DatasetSpec, groups: dict[str, str], ks: Sequence[int], cache_dir: Path,
                  progress: bool) -> tuple[IndexView, np.ndarray, list[Query], list[Ranking], list[int], dict]:
    from cbmir.bench.quality.hog import HOG_TAG, hog_matrix, rank_with_hog
    from cbmir.services.embedding.descriptors import (
        HOG_CELLS_PER_BLOCK,
        HOG_ORIENTATIONS,
        HOG_PIXELS_PER_CELL,
        HOG_SIZE,
    )

    lopo = spec.protocol == LEAVE_ONE_PATIENT_OUT
    index_items: list[SourceItem] = spec.listing(spec.index_split).items
    entries = [Entry(id=i.name, source=i.name, label=i.label, group=group_of(i.name, groups, "index"))
               for i in index_items]
    index = IndexView(entries, spec.is_unlabelled)
    index_descriptors = hog_matrix(index_items, cache_dir, f"index-{spec.index_split or 'all'}", progress)
    if lopo:
        queries = leave_one_patient_out_queries(index, {i.name: i for i in index_items})
        position = {i.name: n for n, i in enumerate(index_items)}
        query_descriptors = index_descriptors[[position[q.key] for q in queries]]
    else:
        query_items = spec.listing(spec.query_split).items
        queries = split_queries(query_items, groups, spec.is_unlabelled)
        query_descriptors = hog_matrix(query_items, cache_dir, f"query-{spec.query_split}", progress)
    depths = sorted({min(d, len(index)) for d in (10, max(ks), len(index))})
    rankings = rank_with_hog(index, index_descriptors, queries, query_descriptors, depths)
    extra = {
        "mode": "numpy brute force (scipy cdist cityblock = L1)",
        "model": {"architecture": "hog", "descriptor": HOG_TAG, "size": HOG_SIZE, "orientations": HOG_ORIENTATIONS,
                  "pixels_per_cell": HOG_PIXELS_PER_CELL, "cells_per_block": HOG_CELLS_PER_BLOCK,
                  "block_norm": "L2-Hys", "distance": "L1",
                  "source": "cbmir.services.embedding.descriptors.hog_descriptor (the engine's re-ranking descriptor)"},
        "collection": None,
        "index_recall_at_10_vs_exact": None,
    }
    return index, index_descriptors, queries, rankings, depths, extra
