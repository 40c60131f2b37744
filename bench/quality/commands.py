"""`cbmir eval`: score retrieval on a labelled dataset for a grid of configurations; `--report` rewrites the docs."""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from cbmir.bench.quality.config import DEFAULT_DB, DEFAULT_OUT, HOG, K_RECIPROCAL, PREFILTERS, EvalConfig
from cbmir.bench.quality.crossfit import CrossFitError
from cbmir.bench.quality.datasets import PRESETS, PROTOCOLS, SPLIT, UNLABELLED_VALUES, DatasetSpec
from cbmir.bench.quality.report import DEFAULT_DOCS, write_report
from cbmir.bench.quality.scoring import DEFAULT_KS
from cbmir.bench.quality.stats import DEFAULT_RESAMPLES, DEFAULT_SEED


def add_eval_parser(sub: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "eval", help="retrieval quality (P@k, R@k, NDCG@k, mAP@10, mAP with 95%% CIs) on a labelled dataset",
        description="Ingest DATASET's index split through the real pipeline, query it through the engine, and "
                    "score: P@k, R@k, NDCG@k at k = 1,5,10,20,50,100, seed 003's mAP@10, full mAP, per class, "
                    "95%% bootstrap CIs; JSON + PNGs in results/quality/<dataset>/<config>/. Every combination of "
                    "--metric x --index x --prefilter is run. --report rewrites docs/quality.md from the records.")
    parser.add_argument("dataset", nargs="?",
                        help=f"a preset ({', '.join(PRESETS)}) or a path: a directory with labels.csv, a CSV "
                             f"manifest, or a MedMNIST .npz")
    parser.add_argument("--name", default="", help="dataset name for a path (default: its file/dir name)")
    parser.add_argument("--label-column", default=None, help="manifest label column (MIAS: tissue or severity)")
    parser.add_argument("--unlabelled-values", default=",".join(UNLABELLED_VALUES[1:]), metavar="A,B,...",
                        help="label values that mean 'no label' (case-insensitive; an empty cell always does): such "
                             "images are indexed but never a query and never relevant; the record counts them "
                             "(default %(default)s)")
    parser.add_argument("--protocol", default=None, choices=PROTOCOLS, help="default: the preset's, else split")
    parser.add_argument("--index-split", default=None, help="split to index (split protocol; default train)")
    parser.add_argument("--query-split", default=None, help="split to query with (default test)")
    parser.add_argument("--group-column", default=None,
                        help="manifest column naming the patient, for leave-one-patient-out (MIAS: patient_id)")
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help=f"CNN backbone, or '{HOG}' for seed 003's HOG-alone baseline (default %(default)s)")
    parser.add_argument("--weights", default=None, metavar="PATH",
                        help="state_dict or `cbmir train` checkpoint (S2/S3; densenet121/resnet50/vgg16 for S1); "
                             "A.pt+B.pt: seed 001's concatenated ensemble of trained checkpoints")
    parser.add_argument("--cross-fit", default="", metavar="PATTERN",
                        help="leave-one-patient-out with trained models: one `cbmir train --folds K --fold i` "
                             "checkpoint per fold, as a glob or a path with {fold} (e.g. "
                             "'runs/mias-tissue-f{fold}/best.pt'); fold i's model answers only its held-out "
                             "patients, queries pooled over folds")
    parser.add_argument("--metric", nargs="+", default=["COSINE"], choices=["COSINE", "L2", "IP"])
    parser.add_argument("--index", nargs="+", default=["HNSW", "FLAT"], choices=["HNSW", "IVF_FLAT", "IVF_SQ8", "FLAT"],
                        help="index types; FLAT is exact search, kept beside an ANN index (default HNSW FLAT)")
    parser.add_argument("--prefilter", nargs="+", default=None, choices=PREFILTERS,
                        help="'predicted' restricts each search to the class the model's head predicts; 'soft' "
                             "searches every plausible class and ranks hits by p(label) + similarity (default: "
                             "'off soft' for a trained model, the recipe of docs/quality.md beside the plain "
                             "search; 'off' for ImageNet features, which have no head)")
    parser.add_argument("--rerank", default="", choices=["", HOG, K_RECIPROCAL],
                        help="re-rank the CNN's k_prep hits by HOG L1, or by k-reciprocal neighbourhoods of their "
                             "stored vectors (label-free; use --k-prep 50 or more)")
    parser.add_argument("--k-prep", type=int, default=10, help="candidates to re-rank (default %(default)s)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation (seed 001): index and queries embedded as the mean over the image "
                             "and its mirror, as `cbmir ingest --tta` stores them")
    parser.add_argument("--query-expansion", type=int, nargs="+", default=[0], metavar="N",
                        help="αQE: search again with the query averaged into its first N hits; several values are "
                             "several configurations (default 0: off)")
    parser.add_argument("--soft-weight", type=float, nargs="+", default=[None], metavar="W",
                        help="--prefilter soft: the similarity's weight beside p(label), several values are several "
                             "configurations (default: the engine's SOFT_SIMILARITY_WEIGHT, 0.25)")
    parser.add_argument("--method", default="", help="label for the table (default: derived, e.g. S1, S4 HOG)")
    parser.add_argument("--ks", type=int, nargs="+", default=list(DEFAULT_KS),
                        help="k values (default 1 5 10 20 50 100)")
    parser.add_argument("--resamples", type=int, default=DEFAULT_RESAMPLES, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="bootstrap seed")
    parser.add_argument("--milvus-uri", default=os.environ.get("CBMIR_QUALITY_MILVUS_URI", DEFAULT_DB),
                        help="store for the eval collections (default %(default)s; one collection per dataset, "
                             "model, metric and index, re-used by later runs)")
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="results root (default %(default)s)")
    parser.add_argument("--actors", type=int, default=2, help="Ray embedding actors for ingestion")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-tsne", action="store_true", help="skip t-SNE (PCA only)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--report", action="store_true",
                        help="rewrite the results table (--docs) from every record under --out, then exit")
    parser.add_argument("--docs", default=str(DEFAULT_DOCS), help="page --report writes (default %(default)s)")
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--log-json", action="store_true")
    parser.set_defaults(func=cmd_eval)
    return parser


def dataset_spec(args: argparse.Namespace) -> DatasetSpec:
    preset = PRESETS.get(args.dataset)
    if preset is None and not Path(args.dataset).exists():
        raise SystemExit(f"unknown dataset {args.dataset!r}: a preset ({', '.join(PRESETS)}) or an existing path")
    base = preset or DatasetSpec(name=args.name or Path(args.dataset).stem, source=args.dataset)
    protocol = args.protocol or base.protocol
    return DatasetSpec(
        name=args.name or base.name,
        source=base.source,
        label_column=args.label_column or base.label_column,
        protocol=protocol,
        index_split=args.index_split or (base.index_split if protocol == SPLIT else None),
        query_split=args.query_split or (base.query_split if protocol == SPLIT else None),
        group_column=args.group_column if args.group_column is not None else base.group_column,
        unlabelled_values=("", *(v.strip() for v in args.unlabelled_values.split(",") if v.strip())),
    )


def configs(args: argparse.Namespace) -> list[EvalConfig]:
    if args.backbone == HOG:
        return [EvalConfig(backbone=HOG, method=args.method)]
    if args.cross_fit and args.weights:
        raise SystemExit("cbmir eval: pass --weights (one model) or --cross-fit (one model per fold), not both")
    trained = bool(args.weights or args.cross_fit)
    prefilters = args.prefilter or (["off", "soft"] if trained else ["off"])
    return [EvalConfig(backbone=args.backbone, weights=args.weights, metric=metric, index=index, prefilter=prefilter,
                       rerank=args.rerank, k_prep=args.k_prep, method=args.method, cross_fit=args.cross_fit,
                       tta=args.tta, query_expansion=qe, soft_weight=weight if prefilter == "soft" else None)
            for metric, index, prefilter, qe in itertools.product(args.metric, args.index, prefilters,
                                                                  args.query_expansion)
            for weight in (args.soft_weight if prefilter == "soft" else [None])]


def cmd_eval(args: argparse.Namespace) -> int:
    from cbmir.bench.quality.record import format_table
    from cbmir.bench.quality.runner import EvalUnsupported, run_eval
    from cbmir.ingestion.pipeline import ray_session

    out = Path(args.out)
    if args.report:
        path = write_report(out, Path(args.docs))
        print(f"wrote {path}")
        return 0
    if not args.dataset:
        raise SystemExit("cbmir eval: give a DATASET (or --report)")
    spec = dataset_spec(args)
    records, skipped = [], []
    # One local Ray for every configuration of the run (each ingestion would otherwise start its own).
    ray = ray_session(num_cpus=max(args.actors, os.cpu_count() or 1)) if args.backbone != HOG else nullcontext()
    with ray:
        for config in configs(args):
            print(f"== {spec.name}: {config.method_label()} {config.name()}", file=sys.stderr)
            try:
                records.append(run_eval(spec, config, out_root=out, milvus_uri=args.milvus_uri, ks=args.ks,
                                        resamples=args.resamples, seed=args.seed, actors=args.actors,
                                        batch_size=args.batch_size, progress=not args.no_progress,
                                        tsne=not args.no_tsne))
            except (EvalUnsupported, CrossFitError) as error:
                skipped.append(f"{config.name()}: {error}")
    if records:
        print(format_table(records))
        print(f"records: {', '.join(str(Path(r['pngs'][0]).parent / 'record.json') for r in records)}")
    for line in skipped:
        print(f"skipped {line}", file=sys.stderr)
    return 0 if records or not skipped else 2

